"""Running a per-device step over every example of a tokenised split: length buckets, devices, padding out.

What prediction (`jaxft.predict`), embedding and attribution (`jaxft.explain`) share. The step is
`step(params, batch) -> outputs` on one device's rows (`jaxft.training.steps.predict_step` and its kind),
mapped over the devices by the run's own parallelism (`training.parallelism`: "fsdp" keeps parameters too
large to replicate sharded here as in training). Examples are batched bucket by bucket in file order; the last
batch of a bucket is padded with all-zero rows, whose outputs are dropped, so every example's row is computed
exactly once whatever the device count.
"""

import jax
import ml_collections
import numpy as np
import tqdm

from jaxft.data import batching
from jaxft.training import parallel


def run_batches(
    config: ml_collections.ConfigDict,
    params,
    features: dict,
    step,
    batch_size: int = 128,
    progress: bool = False,
    *,
    devices=None,
    extra: dict | None = None,
    desc: str = "predict",
):
    """`step(params, batch)`'s rows for every example of `features`, in their order.

    Args:
      config: the run's config (data.max_seq_length, data.num_buckets, training.parallelism).
      params: host parameters.
      features: `jaxft.data.tokenize.tokenize`'s arrays ("input_ids", "token_type_ids", "length").
      step: `step(params, batch) -> outputs`, an array or a tree of arrays with a leading row axis.
      batch_size: examples per batch (rounded up to a multiple of the devices).
      progress: show a progress bar (named `desc`).
      devices: the devices to run on (default: every process's).
      extra: more per-example arrays `[N, ...]`, each added to the batches under its key (padding rows 0);
        arrays of width max_seq_length are not cut to the bucket: the step slices them.

    Returns:
      `step`'s outputs with the row axis over the examples (a tree where `step` returns one).
    """
    buckets = batching.bucket_lengths(config.data.max_seq_length, config.data.num_buckets)
    num_devices = len(devices) if devices else None
    batch_size = parallel.eval_batch_size(batch_size, num_devices)
    parallelism = parallel.create(
        config.training.parallelism, devices, fsdp_min_size=config.training.fsdp_min_size
    )
    p_step = parallelism.eval_step(step)
    params = parallelism.place_params(params)
    out = None
    plan = batching.eval_batch_plan(features["length"], buckets, batch_size)
    for seq_len, indices in tqdm.tqdm(plan, desc=desc, unit="batch", disable=not progress):
        batch = batching.make_batch(features, None, indices, seq_len, batch_size)
        for key, values in (extra or {}).items():
            rows = np.zeros((batch_size, *values.shape[1:]), values.dtype)
            rows[: len(indices)] = values[indices]
            batch[key] = rows
        outputs = p_step(params, parallel.split_for_devices(batch, num_devices))
        # [devices, rows, ...] -> [rows, ...]
        outputs = jax.tree.map(lambda x: np.asarray(x).reshape(batch_size, *x.shape[2:]), outputs)
        if out is None:  # one row per example (QA: per context window)
            out = jax.tree.map(lambda x: np.zeros((len(features["length"]), *x.shape[1:]), x.dtype), outputs)
        for rows, values in zip(jax.tree.leaves(out), jax.tree.leaves(outputs), strict=True):
            rows[indices] = values[: len(indices)]
    return out
