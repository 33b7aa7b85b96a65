"""Fixed-shape batches: length buckets, batch plans, padding and masks (devices: see jaxft.training.parallel).

A jitted step compiles once per input shape. Examples are therefore grouped into a few length buckets, and
every batch has exactly `batch_size` rows and one bucket's length: a short final batch is filled with padding
rows of weight 0 rather than given a new shape. That keeps compilation to one per bucket, while short texts
are not padded all the way to max_seq_length.
"""

import numpy as np

# Per-token features beyond the ids that batches carry, cut to the bucket like them: mlm's `word_pieces`
# (which tokens may be masked, and where words start; jaxft.data.pretraining).
TOKEN_FEATURES = ("word_pieces",)


def bucket_lengths(max_seq_length: int, num_buckets: int = 4, multiple: int = 16) -> list[int]:
    """A few increasing sequence lengths, ending at `max_seq_length`.

    Bucket i is max_seq_length * (i + 1) / num_buckets rounded up to a multiple of `multiple` (so
    accelerators get aligned shapes) and capped at max_seq_length; duplicates are dropped.

    Example: `bucket_lengths(128)` is [32, 64, 96, 128]; `bucket_lengths(100)` is [32, 64, 80, 100].

    Args:
        max_seq_length: The last and longest bucket, kept even when not a multiple of `multiple`.
        num_buckets: At most this many buckets; 1 pads everything to max_seq_length.
        multiple: Each bucket but the last is a multiple of this.

    Returns:
        Strictly increasing bucket lengths.
    """
    if max_seq_length < 1 or num_buckets < 1 or multiple < 1:
        raise ValueError(f"need positive arguments, got {max_seq_length=}, {num_buckets=}, {multiple=}")
    buckets = []
    for i in range(1, num_buckets + 1):
        length = -(-max_seq_length * i // num_buckets)  # ceiling division
        length = min(-(-length // multiple) * multiple, max_seq_length)
        if not buckets or length > buckets[-1]:
            buckets.append(length)
    return buckets


def assign_buckets(lengths: np.ndarray, buckets: list[int]) -> np.ndarray:
    """Index of the smallest bucket that holds each length (lengths above the last bucket are an error)."""
    lengths = np.asarray(lengths)
    if lengths.size and lengths.max() > buckets[-1]:
        raise ValueError(f"a length of {lengths.max()} exceeds the largest bucket {buckets[-1]}")
    return np.searchsorted(np.asarray(buckets), lengths, side="left")


def _chop(indices: np.ndarray, batch_size: int, drop_remainder: bool) -> list[np.ndarray]:
    stop = len(indices) - len(indices) % batch_size if drop_remainder else len(indices)
    return [indices[i : min(i + batch_size, stop)] for i in range(0, stop, batch_size)]


def train_batch_plan(
    lengths: np.ndarray,
    buckets: list[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    drop_remainder: bool = False,
    shard_of: np.ndarray | None = None,
    num_shards: int = 1,
) -> list[tuple[int, np.ndarray]]:
    """One epoch of training batches, as (bucket length, example indices) pairs.

    The examples are shuffled, grouped by bucket and cut into batches (a bucket's last batch may be short),
    and then the batch order is shuffled, so that buckets interleave across the epoch. Everything is a pure
    function of (seed, epoch): a resumed run replays the same order.

    With `num_shards` > 1 every batch is `num_shards` equal parts, part s drawn only from the examples of
    shard s (`shard_of`), each shard in the same shuffled order; a shard that runs out in a bucket's last
    batch leaves its part short, marked -1 (a padding row). A process that holds only some shards' examples
    can then build its own rows of every global batch (`jaxft.training.pipeline`). One shard is the plain
    plan.

    Args:
        lengths: Token count of each example, shape [N].
        buckets: From `bucket_lengths`.
        batch_size: Examples per batch (divisible by `num_shards`).
        seed: Data-order seed.
        epoch: Epoch number; each epoch gets a different order.
        drop_remainder: Drop each bucket's short last batch (those examples are then skipped this epoch).
        shard_of: The shard of each example, shape [N] (needed when `num_shards` > 1).
        num_shards: Parts per batch.

    Returns:
        The batches; without `drop_remainder`, every example is in exactly one. With shards, every batch has
        `batch_size` entries, -1 for padding rows.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if batch_size % num_shards:
        raise ValueError(f"batch_size {batch_size} does not split into {num_shards} shards")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    bucket_of = assign_buckets(np.asarray(lengths)[order], buckets)
    plan = []
    for b, length in enumerate(buckets):
        members = order[bucket_of == b]
        if num_shards == 1:
            batches = _chop(members, batch_size, drop_remainder)
        else:
            batches = _sharded_batches(
                members, np.asarray(shard_of)[members], num_shards, batch_size, drop_remainder
            )
        plan += [(length, batch) for batch in batches]
    return [plan[i] for i in rng.permutation(len(plan))]


def _sharded_batches(
    members: np.ndarray, shards: np.ndarray, num_shards: int, batch_size: int, drop_remainder: bool
) -> list[np.ndarray]:
    """`members` (one bucket, shuffled) cut into batches of `num_shards` parts, part s from shard s."""
    part = batch_size // num_shards
    by_shard = [members[shards == s] for s in range(num_shards)]
    sizes = [len(m) for m in by_shard]
    count = min(sizes) // part if drop_remainder else -(-max(sizes) // part)
    batches = []
    for k in range(count):
        batch = np.full(batch_size, -1, np.int64)
        for s, shard in enumerate(by_shard):
            rows = shard[k * part : (k + 1) * part]
            batch[s * part : s * part + len(rows)] = rows
        batches.append(batch)
    return batches


def eval_batch_plan(lengths: np.ndarray, buckets: list[int], batch_size: int) -> list[tuple[int, np.ndarray]]:
    """Evaluation batches: bucket by bucket, examples in file order within a bucket, each exactly once."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    bucket_of = assign_buckets(lengths, buckets)
    plan = []
    for b, length in enumerate(buckets):
        plan += [(length, batch) for batch in _chop(np.flatnonzero(bucket_of == b), batch_size, False)]
    return plan


def make_batch(
    features: dict[str, np.ndarray],
    labels: np.ndarray | None,
    indices: np.ndarray,
    seq_len: int,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Gathers examples into one fixed-shape batch, padding it to `batch_size` rows.

    Args:
        features: From `tokenize`: "input_ids", "token_type_ids" [N, max_seq_length] and "length" [N].
        labels: int32 class ids [N], or None (prediction), which gives zero labels.
        indices: The examples of this batch (at most `batch_size`).
        seq_len: The bucket length; every example must fit.
        batch_size: Rows of the batch.

    Returns:
        "input_ids", "token_type_ids", "attention_mask" (int32 [batch_size, seq_len]), "labels" (int32
        [batch_size]), "weights" (float32 [batch_size]: 1 for a real row, 0 for padding) and "index" (int32
        [batch_size]: the example index, -1 for padding), and the `TOKEN_FEATURES` the features hold, cut
        like the ids. Padding rows are all zeros.
    """
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    if n > batch_size:
        raise ValueError(f"{n} examples do not fit a batch of {batch_size}")
    lengths = features["length"][indices]
    if n and lengths.max() > seq_len:
        raise ValueError(f"an example of {lengths.max()} tokens does not fit seq_len={seq_len}")
    batch = {
        "input_ids": np.zeros((batch_size, seq_len), np.int32),
        "token_type_ids": np.zeros((batch_size, seq_len), np.int32),
        "attention_mask": np.zeros((batch_size, seq_len), np.int32),
        "labels": np.zeros(batch_size, np.int32),
        "weights": np.zeros(batch_size, np.float32),
        "index": np.full(batch_size, -1, np.int32),
    }
    batch["input_ids"][:n] = features["input_ids"][indices, :seq_len]
    batch["token_type_ids"][:n] = features["token_type_ids"][indices, :seq_len]
    for key in TOKEN_FEATURES:
        if key in features:
            batch[key] = np.zeros((batch_size, seq_len), features[key].dtype)
            batch[key][:n] = features[key][indices, :seq_len]
    batch["attention_mask"][:n] = np.arange(seq_len) < lengths[:, None]
    if labels is not None:
        batch["labels"][:n] = labels[indices]
    batch["weights"][:n] = 1.0
    batch["index"][:n] = indices
    return batch
