"""From config to batches: read and check every split, fix the label set, tokenise, and plan batches.

Reading (`read_splits`) writes nothing, so a bad file fails before the workdir is touched; tokenisation
(`tokenize_splits`) may write its cache. Batches are host NumPy arrays of fixed shapes (one per length
bucket); each process takes its own rows of every global batch.
"""

import dataclasses
import logging
import os

import jax
import ml_collections
import numpy as np

from jaxft.config import expand_path
from jaxft.data import batching, labels, readers, tokenize
from jaxft.errors import UserError


@dataclasses.dataclass
class Split:
    """One labelled split: its examples, class ids and (after tokenisation) features."""

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
    data: ml_collections.ConfigDict, saved_labels: list[str] | None, seed: int = 0
) -> tuple[list[str], dict]:
    """Reads train / eval / test, and encodes their labels.

    Args:
      data: the `data` section of the config.
      saved_labels: the label set of the run being resumed (WORKDIR/labels.json), which wins over the config.
      seed: picks the subsets of `data.max_train_examples` / `data.max_eval_examples`.

    Returns:
      (label names, {split name: Split}) with "train" always present.
    """
    raw = {}
    for name in ("train", "eval", "test"):
        path = expand_path(data[f"{name}_path"])
        if path:
            examples = readers.read_examples(
                path,
                text_field=data.text_field,
                label_field=data.label_field,
                text_pair_field=data.text_pair_field,
                fmt=data.format,
                has_header=data.has_header,
            )
            limit = data.max_train_examples if name == "train" else data.max_eval_examples
            raw[name] = (path, subset(examples, limit, seed))
    if saved_labels is not None:
        names = saved_labels
        if data.labels is not None and [str(x) for x in data.labels] != names:
            raise UserError(
                f"data.labels={list(data.labels)} differs from the label set {names} of the run "
                "being resumed in this workdir"
            )
    else:
        names = labels.build_label_vocab(raw["train"][1], data.labels)
    splits = {
        name: Split(name, path, examples, labels.encode_labels(examples, names))
        for name, (path, examples) in raw.items()
    }
    if data.positive_label is not None and data.positive_label not in names:
        raise UserError(f"data.positive_label={data.positive_label!r} is not in the label set {names}")
    return names, splits


def tokenize_splits(splits: dict, tokenizer, data: ml_collections.ConfigDict, cache_dir: str | None) -> None:
    """Fills each split's features, from the cache where the same inputs were tokenised before."""
    for split in splits.values():
        split.features = tokenize.cached_tokenize(
            split.examples,
            tokenizer,
            data.max_seq_length,
            cache_dir,
            {"path": os.path.abspath(split.path), "pair": data.text_pair_field is not None},
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
    return batching.make_batch(split.features, split.labels, share[share >= 0], seq_len, per_process)


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
