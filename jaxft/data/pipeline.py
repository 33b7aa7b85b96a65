"""From config to batches: read and check every split, fix the label set, tokenise, and plan batches.

Reading (`read_splits`) writes nothing, so a bad file fails before the workdir is touched; tokenisation
(`tokenize_splits`) may write its cache. What a file holds and how its labels become targets is the task's
business (`jaxft.tasks`; classification by default). Batches are host NumPy arrays of fixed shapes (one per
length bucket); each process takes its own rows of every global batch.
"""

import dataclasses
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
        holds the word tags) or per-row `features["targets"]` (QA, whose rows are context windows).
      features: tokenised arrays (`jaxft.data.tokenize`), filled by `tokenize_splits`.
    """

    name: str
    path: str
    examples: list
    labels: np.ndarray
    features: dict | None = None


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


def tokenize_splits(
    splits: dict,
    tokenizer,
    data: ml_collections.ConfigDict,
    cache_dir: str | None,
    task: Task | None = None,
    label_names: list[str] | None = None,
) -> None:
    """Fills each split's features, from the cache where the same inputs were tokenised before.

    Token tasks also need `label_names`, to turn word tags into per-token labels.
    """
    task = task or Classification()
    for split in splits.values():
        split.features = task.tokenize(
            split.examples, tokenizer, data, cache_dir, os.path.abspath(split.path), label_names
        )
        logging.info("%s: %d examples from %s", split.name, len(split.examples), split.path)


def buckets(data: ml_collections.ConfigDict) -> list[int]:
    return batching.bucket_lengths(data.max_seq_length, data.num_buckets)


def steps_per_epoch(split: Split, bucket_list: list[int], batch_size: int) -> int:
    """Batches in one epoch; the same for every epoch, since only the order within buckets changes."""
    return len(batching.train_batch_plan(split.features["length"], bucket_list, batch_size, seed=0, epoch=0))


def _process_share(split: Split, seq_len: int, indices: np.ndarray, batch_size: int) -> dict:
    # Every process plans the same global batch; padding rows sit at its end, so each process's real rows
    # come first in its share and `make_batch` pads the rest.
    per_process = batch_size // jax.process_count()
    share = np.full(batch_size, -1, np.int64)
    share[: len(indices)] = indices
    share = share[jax.process_index() * per_process : (jax.process_index() + 1) * per_process]
    indices = share[share >= 0]
    batch = batching.make_batch(split.features, None, indices, seq_len, per_process)
    batch["labels"] = _batch_labels(split, indices, seq_len, per_process)
    return batch


def _batch_labels(split: Split, indices: np.ndarray, seq_len: int, rows: int) -> np.ndarray:
    """The targets of `indices`, padded to `rows` (0, or IGNORE for per-token labels, on padding rows)."""
    if "labels" in split.features:  # per-token labels, cut to the bucket like the token ids
        out = np.full((rows, seq_len), IGNORE, np.int32)
        out[: len(indices)] = split.features["labels"][indices, :seq_len]
        return out
    # Targets made by tokenisation, one per row (QA: a window's answer span), else the split's own.
    labels = split.features["targets"] if "targets" in split.features else np.asarray(split.labels)
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
            plan = batching.train_batch_plan(
                split.features["length"], bucket_list, batch_size, seed=seed, epoch=epoch
            )
        seq_len, indices = plan[step % per_epoch]
        yield _process_share(split, seq_len, indices, batch_size)
        step += 1


def eval_batches(split: Split, bucket_list: list[int], batch_size: int):
    """This process's share of evaluation batches covering every example once; the last ones padded."""
    for seq_len, indices in batching.eval_batch_plan(split.features["length"], bucket_list, batch_size):
        yield _process_share(split, seq_len, indices, batch_size)
