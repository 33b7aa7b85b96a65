"""Data parallelism: the only module that knows about `jax.pmap`, device placement and the axis name.

Steps are written as per-device functions that take `axis_name` and reduce with `lax.psum` over it; this
module maps them over all local devices (and, under `jax.distributed`, the collectives span every process).
A sharded-`jit` path would replace the functions here and nothing else.
"""

import functools

import jax
import numpy as np
from flax import jax_utils

from jaxft.errors import UserError

AXIS = "batch"


def local_devices() -> int:
    """Devices this process feeds."""
    return jax.local_device_count()


def global_devices() -> int:
    """Devices across all processes: the data-parallel width."""
    return jax.device_count()


def is_chief() -> bool:
    """True on the one process that writes logs, reports and files."""
    return jax.process_index() == 0


def sync_every_step() -> bool:
    """Whether the loop must block on each step's output.

    Collective programs on CPU devices deadlock when about 100 steps are in flight (XLA's rendezvous times
    out; see ENVIRONMENT.md); GPUs and TPUs keep dispatching ahead and sync only when metrics are read.
    """
    return jax.default_backend() == "cpu"


def check_batch_size(batch_size: int, accum_steps: int, key: str = "training.batch_size") -> None:
    """Refuses a global batch that does not split evenly over devices and micro-batches."""
    devices = global_devices()
    if batch_size % (devices * accum_steps):
        raise UserError(
            f"config {key}={batch_size} must be divisible by {devices} devices x "
            f"{accum_steps} accumulation steps = {devices * accum_steps}"
        )


def eval_batch_size(requested: int, devices: int | None = None) -> int:
    """An evaluation batch rounded up to a multiple of the devices; padding rows are masked anyway."""
    devices = devices or global_devices()
    return -(-requested // devices) * devices


def replicate(tree, devices=None):
    """Copies a host tree onto every device of `devices` (default: all local; leading axis = devices)."""
    # The axis name matters: the same mesh as pmap outputs use, so step 2 hits step 1's compiled program.
    return jax_utils.replicate(tree, devices, axis_name=AXIS)


def unreplicate(tree):
    """The first device's copy of a replicated tree, fetched to host NumPy (only that copy moves)."""

    # flax.jax_utils.unreplicate keeps the device axis when pmap ran on a subset of the local devices.
    def first(x):
        if isinstance(x, jax.Array):
            return np.asarray(x.addressable_shards[0].data)[0, ...]  # [0, ...]: 0-d arrays stay arrays
        return np.asarray(x)[0, ...]

    return jax.tree.map(first, tree)


def split_for_devices(batch: dict, num_devices: int | None = None) -> dict:
    """[B, ...] host arrays -> [devices, B / devices, ...] (all local devices by default)."""
    n = num_devices or local_devices()

    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} does not split over {n} devices")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return {k: split(np.asarray(v)) for k, v in batch.items()}


def pmap_train_step(step_fn, devices=None, **static):
    """Maps `step_fn(state, batch, axis_name=..., **static)` over `devices` (default: all local devices),
    donating the state."""
    return jax.pmap(
        functools.partial(step_fn, axis_name=AXIS, **static),
        axis_name=AXIS,
        donate_argnums=(0,),
        devices=devices,
    )


def pmap_eval_step(step_fn, devices=None, **static):
    """Maps `step_fn(params, batch, **static)` over `devices`; the host sums the per-device outputs."""
    return jax.pmap(functools.partial(step_fn, **static), axis_name=AXIS, devices=devices)


def pmap_reduce(fn, devices=None, **static):
    """Maps `fn(*args, axis_name=..., **static)` over `devices`, for functions that reduce across them."""
    return jax.pmap(functools.partial(fn, axis_name=AXIS, **static), axis_name=AXIS, devices=devices)


def prefetch(batches, size: int = 2):
    """Keeps `size` batches ([local devices, ...] host arrays) already on the devices, ahead of the step."""
    return jax_utils.prefetch_to_device(batches, size)
