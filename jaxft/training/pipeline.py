"""From config to batches: read and check every split, fix the label set, tokenise, and plan batches.

Reading (`read_splits`) writes nothing, so a bad file fails before the workdir is touched; tokenisation
(`tokenize_splits`) may write its cache. What a file holds and how its labels become targets is the task's
business (`jaxft.tasks`; classification by default). Batches are host NumPy arrays of fixed shapes (one per
length bucket); each process takes its own rows of every global batch.

Several processes (`jax.distributed`) split the train split into `data.num_shards` shards (default: one per
process): example i is in shard i mod num_shards, and each process tokenises and keeps only the examples of
its own shards. Each global batch is one equal part per shard (`batching.train_batch_plan`), so a process
builds its rows from what it holds; the processes exchange only row lengths, which the plan needs. Every
process still parses the whole file, so that every line is checked and all agree on the label set; the
evaluation splits are tokenised whole on every process, because the report needs all of them. The order
depends on num_shards only: two runs with the same num_shards see the same global batches whatever their
process counts.
"""

import dataclasses
import hashlib
import json
import logging
import os

import jax
import ml_collections
import numpy as np

from jaxft.config import expand_path
from jaxft.data import batching
from jaxft.errors import UserError
from jaxft.strategies import augment, fewshot
from jaxft.tasks import IGNORE, Task
from jaxft.tasks.classification import Classification


@dataclasses.dataclass
class Split:
    """One labelled split: its examples, targets and (after tokenisation) features.

    Attributes:
      name: "train", "eval" or "test".
      path: the file it was read from.
      examples: what the task's reader returned, in file order.
      labels: the task's targets, one row per example (class ids, floats, multi-hot rows). Targets that
        depend on tokenisation are features instead: per-token `features["labels"]` (NER; `labels` then
        holds the word tags) or per-row `features["targets"]` (QA, whose rows are context windows). Rows
        that are windows of a long text (`features["example_index"]`) take their text's row of `labels`.
      features: tokenised arrays (`jaxft.data.tokenize`), filled by `tokenize_splits`.
      shards: with several shards (train only), which rows this process holds: `examples`, `labels` and
        `features` are then this process's share only.
    """

    name: str
    path: str
    examples: list
    labels: np.ndarray
    features: dict | None = None
    shards: "Shards | None" = None


@dataclasses.dataclass
class Shards:
    """A split divided into shards, of which this process holds some (`tokenize_splits`).

    Rows are the features' rows (examples, or windows of a long text or a QA context), numbered over the
    whole split: the rows of example 0, then those of example 1, and so on.

    Attributes:
      count: shards in the split (`data.num_shards`).
      of_row: the shard of every row [R] (that of its example).
      lengths: the token count of every row [R] (what batch plans need).
      local_rows: the rows held here, increasing; `features` row j is row `local_rows[j]`.
    """

    count: int
    of_row: np.ndarray
    lengths: np.ndarray
    local_rows: np.ndarray


def subset(examples: list, limit: int, seed: int) -> list:
    """A fixed random subset of `limit` examples in file order (all of them when `limit` is 0 or more).

    Random, not the first rows: files such as IMDB's are grouped by class.
    """
    if limit <= 0 or limit >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(seed).choice(len(examples), limit, replace=False))
    return [examples[i] for i in keep]


def read_splits(
    data: ml_collections.ConfigDict,
    saved_labels: list[str] | None,
    seed: int = 0,
    task: Task | None = None,
    augment_config: ml_collections.ConfigDict | None = None,
) -> tuple[list[str], dict]:
    """Reads train / eval / test, and encodes their labels.

    Args:
      data: the `data` section of the config.
      saved_labels: the label set of the run being resumed (WORKDIR/labels.json), which wins over the config.
      seed: picks the subsets of `data.max_train_examples` / `data.max_eval_examples` and `data.k_shot`.
      task: reads the files and encodes their labels (default: single-label classification).
      augment_config: the `augment` section of the config: new train examples (`jaxft.strategies.augment`).

    Returns:
      (label names, {split name: Split}) with "train" always present.
    """
    task = task or Classification()
    raw = {}
    for name in ("train", "eval", "test"):
        path = expand_path(data[f"{name}_path"])
        if path:
            examples = task.read(path, data)
            limit = data.max_train_examples if name == "train" else data.max_eval_examples
            raw[name] = (path, subset(examples, limit, seed))
    if saved_labels is not None:
        names = saved_labels
        if data.labels is not None and [str(x) for x in data.labels] != names:
            raise UserError(
                f"data.labels={list(data.labels)} differs from the label set {names} of the run "
                "being resumed in this workdir"
            )
        task.check_label_names(names, data)
    else:
        names = task.label_names(raw["train"][1], data)
    splits = {
        name: Split(name, path, examples, task.encode(examples, names))
        for name, (path, examples) in raw.items()
    }
    if data.get("k_shot", 0):  # few-shot: k train examples per class, drawn once the label set is fixed
        train = splits["train"]
        examples, labels = fewshot.k_shot_subset(
            train.examples, train.labels, data.k_shot, seed, task.name, names
        )
        splits["train"] = dataclasses.replace(train, examples=examples, labels=labels)
    # Data augmentation: copies of the (sampled) train examples only, labels encoded with them.
    splits["train"] = augment.augment_split(splits["train"], augment_config, seed, task, names)
    return names, splits


def fingerprint(examples: list) -> dict:
    """What a resumed run checks its train data against: {"examples": count, "sha256": 16 hex digits}.

    Hashes every example's content as read (texts, labels, spans: every field but its file:line `source`,
    so moving or renaming the file changes nothing), in order.
    """
    digest = hashlib.sha256()
    for example in examples:
        fields = vars(example) if hasattr(example, "__dict__") else {"value": example}
        content = {key: value for key, value in fields.items() if key != "source"}
        data = json.dumps(content, sort_keys=True, default=repr, ensure_ascii=False).encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)  # length-prefixed: no two splits alike
    return {"examples": len(examples), "sha256": digest.hexdigest()[:16]}


def tokenize_splits(
    splits: dict,
    tokenizer,
    data: ml_collections.ConfigDict,
    cache_dir: str | None,
    task: Task | None = None,
    label_names: list[str] | None = None,
) -> None:
    """Fills each split's features, from the cache where the same inputs were tokenised before.

    With several shards (`num_shards`) the train split keeps this process's share only (module docstring).
    Token tasks also need `label_names`, to turn word tags into per-token labels.
    """
    task = task or Classification()
    count = num_shards(data)
    for split in splits.values():
        path = os.path.abspath(split.path)
        if split.name != "train" or count == 1:
            split.features = task.tokenize(split.examples, tokenizer, data, cache_dir, path, label_names)
            logging.info("%s: %d examples from %s", split.name, len(split.examples), split.path)
            continue
        total, index, processes = len(split.examples), jax.process_index(), jax.process_count()
        mine = owned_examples(total, count, index, processes)
        split.examples = [split.examples[i] for i in mine]
        split.labels = np.asarray(split.labels)[mine]
        split.features = task.tokenize(split.examples, tokenizer, data, cache_dir, path, label_names)
        rows = rows_per_example(split.features, len(mine))
        sizes = [len(owned_examples(total, count, q, processes)) for q in range(processes)]
        all_rows = _allgather(rows, sizes)
        all_lengths = _allgather(split.features["length"], [int(r.sum()) for r in all_rows])
        split.shards = assemble_shards(total, count, index, all_rows, all_lengths)
        per_process = count // processes
        logging.info(
            "%s: %d of %d examples (shards %d-%d of %d) from %s",
            split.name,
            len(mine),
            total,
            index * per_process,
            (index + 1) * per_process - 1,
            count,
            split.path,
        )


def num_shards(data: ml_collections.ConfigDict) -> int:
    """`data.num_shards`, or one shard per process when it is 0; a multiple of the process count."""
    count = data.num_shards or jax.process_count()
    if count < 1 or count % jax.process_count():
        raise UserError(
            f"config data.num_shards={count} must be a positive multiple of the {jax.process_count()} "
            "processes (0: one shard per process)"
        )
    return count


def owned_examples(total: int, count: int, index: int, processes: int) -> np.ndarray:
    """The examples (file order) that process `index` of `processes` holds when `total` are in `count`
    shards: example i is in shard i mod count, and process p holds the count/processes shards from
    p*count/processes on (contiguous, so that its parts of every batch are contiguous too)."""
    return np.flatnonzero(np.arange(total) % count // (count // processes) == index)


def rows_per_example(features: dict, num_examples: int) -> np.ndarray:
    """Feature rows of each example: 1, or its windows (QA; data.long_inputs="windows"), counted from
    `features["example_index"]`."""
    if "example_index" in features:
        return np.bincount(features["example_index"], minlength=num_examples)
    return np.ones(num_examples, np.int64)


def assemble_shards(
    total: int, count: int, index: int, rows: list[np.ndarray], lengths: list[np.ndarray]
) -> Shards:
    """Process `index`'s `Shards`, from every process's rows per held example and row lengths.

    Args:
      total: examples in the split.
      count: shards.
      index: this process.
      rows: per process q, the rows of each example it holds (`owned_examples` order).
      lengths: per process q, the token count of each of its rows.
    """
    processes = len(rows)
    owned = [owned_examples(total, count, q, processes) for q in range(processes)]
    example_rows = np.zeros(total, np.int64)
    for q in range(processes):
        example_rows[owned[q]] = rows[q]
    first_row = np.concatenate([[0], np.cumsum(example_rows)])
    row_lengths = np.zeros(first_row[-1], np.int64)
    local_rows = None
    for q in range(processes):
        ids = _row_ids(first_row[owned[q]], np.asarray(rows[q], np.int64))
        row_lengths[ids] = lengths[q]
        if q == index:
            local_rows = ids
    of_row = np.repeat(np.arange(total) % count, example_rows)
    return Shards(count, of_row, row_lengths, local_rows)


def _row_ids(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[starts[0], ..., starts[0] + counts[0] - 1, starts[1], ...]."""
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + within


def _allgather(local: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Every process's `local` (of length sizes[q] on process q), on every process."""
    if jax.process_count() == 1:
        return [np.asarray(local)]
    from jax.experimental import multihost_utils

    padded = np.zeros(max(sizes), np.int64)
    padded[: len(local)] = local
    gathered = np.asarray(multihost_utils.process_allgather(padded))  # [processes, max(sizes)]
    return [gathered[q, : sizes[q]] for q in range(len(sizes))]


def buckets(data: ml_collections.ConfigDict) -> list[int]:
    return batching.bucket_lengths(data.max_seq_length, data.num_buckets)


def _plan(split: Split, bucket_list: list[int], batch_size: int, seed: int, epoch: int):
    if split.shards is None:
        return batching.train_batch_plan(
            split.features["length"], bucket_list, batch_size, seed=seed, epoch=epoch
        )
    shards = split.shards
    return batching.train_batch_plan(
        shards.lengths,
        bucket_list,
        batch_size,
        seed=seed,
        epoch=epoch,
        shard_of=shards.of_row,
        num_shards=shards.count,
    )


def steps_per_epoch(split: Split, bucket_list: list[int], batch_size: int) -> int:
    """Batches in one epoch; the same for every epoch, since only the order within buckets changes."""
    return len(_plan(split, bucket_list, batch_size, seed=0, epoch=0))


def _process_share(split: Split, seq_len: int, indices: np.ndarray, batch_size: int) -> dict:
    # Every process plans the same global batch (-1: a padding row) and takes its contiguous part; its real
    # rows go first and `make_batch` pads the rest. Sharded plans put each process's shards in its part.
    per_process = batch_size // jax.process_count()
    share = np.full(batch_size, -1, np.int64)
    share[: len(indices)] = indices
    share = share[jax.process_index() * per_process : (jax.process_index() + 1) * per_process]
    ids = share[share >= 0]
    rows = ids if split.shards is None else _local_rows(split.shards, ids)
    batch = batching.make_batch(split.features, None, rows, seq_len, per_process)
    batch["index"][: len(ids)] = ids
    batch["labels"] = _batch_labels(split, rows, seq_len, per_process)
    return batch


def _local_rows(shards: Shards, ids: np.ndarray) -> np.ndarray:
    """Where rows `ids` are in this process's features."""
    rows = np.minimum(np.searchsorted(shards.local_rows, ids), len(shards.local_rows) - 1)
    if not np.array_equal(shards.local_rows[rows], ids):
        raise RuntimeError(f"process {jax.process_index()} was planned rows it does not hold")
    return rows


def _batch_labels(split: Split, indices: np.ndarray, seq_len: int, rows: int) -> np.ndarray:
    """The targets of `indices`, padded to `rows` (0, or IGNORE for per-token labels, on padding rows)."""
    if "labels" in split.features:  # per-token labels, cut to the bucket like the token ids
        out = np.full((rows, seq_len), IGNORE, np.int32)
        out[: len(indices)] = split.features["labels"][indices, :seq_len]
        return out
    # Targets made by tokenisation, one per row (QA: a window's answer span), else the split's own: those of
    # the rows' examples, which for windows of a long text (`example_index`) is their text's.
    if "targets" in split.features:
        labels = split.features["targets"]
    else:
        labels = np.asarray(split.labels)
        if "example_index" in split.features:
            indices = split.features["example_index"][indices]
    out = np.zeros((rows, *labels.shape[1:]), labels.dtype)
    out[: len(indices)] = labels[indices]
    return out


def train_batches(split: Split, bucket_list: list[int], batch_size: int, seed: int, start_step: int):
    """This process's share of every global training batch from `start_step` on, epoch after epoch."""
    per_epoch = steps_per_epoch(split, bucket_list, batch_size)
    epoch, plan = None, None
    step = start_step
    while True:
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            plan = _plan(split, bucket_list, batch_size, seed, epoch)
        seq_len, indices = plan[step % per_epoch]
        yield _process_share(split, seq_len, indices, batch_size)
        step += 1


def eval_batches(split: Split, bucket_list: list[int], batch_size: int):
    """This process's share of evaluation batches covering every example once; the last ones padded."""
    for seq_len, indices in batching.eval_batch_plan(split.features["length"], bucket_list, batch_size):
        yield _process_share(split, seq_len, indices, batch_size)
