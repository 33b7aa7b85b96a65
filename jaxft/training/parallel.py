"""Parallelism: the only module that knows about meshes, shardings and device placement.

Steps are written as pure functions (`jaxft.training.steps`) that take `axis_name`. Two ways to run them over
every device, chosen by `training.parallelism` (`create`), implement one small interface, `Parallelism`, which
is all that the training loop sees:

- `Pmap` ("pmap", the default): pmap's programming model. Each device runs the step on its own rows and
  reduces with `lax.psum` over the axis `AXIS`; the state is replicated on every device, and arguments and
  outputs carry a leading device axis ([devices, B / devices, ...]). It is compiled as `jax.jit` of
  `jax.shard_map` over a one-axis mesh (`map_devices`), not with `jax.pmap`: JAX 0.10's `jax.pmap` keeps every
  mapped function's executables for the life of the process, and a process running many jobs ran out of
  memory maps. Under `jax.distributed` the mesh spans every process's devices.
- `Sharded` ("dp" or "fsdp"): one `jax.jit` step that sees the whole global batch (`axis_name=None`, no
  explicit collectives: XLA partitions it) over a `Mesh` of all devices with one axis, `DATA_AXIS`; batches
  are sharded along their rows. "dp" replicates parameters and optimizer state; "fsdp" shards each of them
  of at least `training.fsdp_min_size` elements along its largest dimension divisible by the device count
  (else replicates it), so an encoder too large to replicate with its Adam moments still trains.

Both give the same updates (tested to 1e-5 with dropout off; dropout masks differ, since the global step has
no device index to fold into the key). Evaluation runs per device on either path, so the host sums
per-device counts exactly as before. Several processes each feed their own rows, made into global arrays by
`jax.make_array_from_process_local_data`.
"""

import collections
import functools
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxft.errors import UserError

AXIS = "batch"  # the per-device steps' axis name (`Pmap`)
DATA_AXIS = "data"  # the mesh's one axis
# fsdp leaves with fewer elements stay replicated: 16,384 f32 is 64 KiB; in BERT-base that keeps the biases,
# LayerNorms, token-type embeddings and the classifier whole and shards every other weight matrix.
FSDP_MIN_SIZE = 1 << 14


def local_devices() -> int:
    """Devices this process feeds."""
    return jax.local_device_count()


def global_devices() -> int:
    """Devices across all processes: the data-parallel width."""
    return jax.device_count()


def is_chief() -> bool:
    """True on the one process that writes logs, reports and files."""
    return jax.process_index() == 0


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


def device_mesh(devices=None) -> Mesh:
    """The one-axis (`AXIS`) mesh that per-device steps map over: `devices`, by default every process's."""
    return Mesh(np.asarray(devices or jax.devices()), (AXIS,))


def replicate(tree, devices=None):
    """A copy of a host tree on every device of `device_mesh(devices)`: arrays with a leading device axis."""
    rows = NamedSharding(device_mesh(devices), P(AXIS))
    copies = len(rows.addressable_devices)  # this process's devices; the others place their own copies
    return jax.tree.map(
        lambda x: _place_rows(np.broadcast_to(np.asarray(x), (copies, *np.shape(x))), rows), tree
    )


def unreplicate(tree):
    """The first device's copy of a replicated tree, fetched to host NumPy (only that copy moves)."""

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


def map_devices(fn, devices=None, *, donate_first: bool = False):
    """`fn` run on each device of `device_mesh(devices)`, with pmap's signature: every argument and output
    has a leading device axis, this process's part of it ([local devices, ...]; host arrays are placed, one
    row per device), and collectives over `AXIS` inside `fn` span the mesh. Outputs stay on the devices as
    global arrays ([devices, ...]).

    `jax.jit` of `jax.shard_map` is what `jax.pmap` runs in JAX 0.10, but its executables belong to the
    returned function and are freed with it; `jax.pmap`'s stay in a global cache
    (`jax._src.pmap._cached_shard_map`, keyed weakly on the function but holding it strongly), so a process
    that ran many jobs, a sweep from a script or the test suite, grew by ~850 memory maps per small job until
    XLA:CPU segfaulted at Linux's `vm.max_map_count` (65,530).
    """
    mesh = device_mesh(devices)
    rows = NamedSharding(mesh, P(AXIS))

    def on_device(*args):  # [1, ...] blocks in and out: this device's row of the device axis
        outputs = fn(*jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], outputs)

    on_device.__name__ = getattr(fn, "func", fn).__name__  # profiles and compile logs name the step
    # check_vma=False: pmap's semantics, without shard_map's typing of which values vary across devices (the
    # steps' scan carries start as constants and then take each device's own gradients).
    mapped = jax.jit(
        jax.shard_map(on_device, mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS), check_vma=False),
        donate_argnums=(0,) if donate_first else (),
    )

    def run(*args):
        return mapped(*jax.tree.map(lambda x: x if isinstance(x, jax.Array) else _place_rows(x, rows), args))

    return run


def pmap_train_step(step_fn, devices=None, **static):
    """Maps `step_fn(state, batch, axis_name=..., **static)` over `devices` (default: every process's),
    donating the state."""
    return map_devices(functools.partial(step_fn, axis_name=AXIS, **static), devices, donate_first=True)


def pmap_eval_step(step_fn, devices=None, **static):
    """Maps `step_fn(params, batch, **static)` over `devices`; outputs are this process's rows as host
    arrays ([local devices, ...]), which the host sums or places."""
    mapped = map_devices(functools.partial(step_fn, **static), devices)
    return lambda params, batch: jax.tree.map(_process_rows, mapped(params, batch))


def pmap_reduce(fn, devices=None, **static):
    """Maps `fn(*args, axis_name=..., **static)` over `devices`, for functions that reduce across them;
    outputs are this process's rows as host arrays."""
    mapped = map_devices(functools.partial(fn, axis_name=AXIS, **static), devices)
    return lambda *args: jax.tree.map(_process_rows, mapped(*args))


def prefetch(batches, size: int = 2, devices=None):
    """Keeps `size` batches ([local devices, ...] host arrays) already on the devices of
    `device_mesh(devices)`, ahead of the step."""
    rows = NamedSharding(device_mesh(devices), P(AXIS))
    return _ahead((jax.tree.map(lambda x: _place_rows(x, rows), batch) for batch in batches), size)


class Parallelism(Protocol):
    """What the training loop needs from a way of running steps over devices (`Pmap`, `Sharded`)."""

    name: str  # the training.parallelism it implements

    def place_state(self, state):
        """A host train state (`steps.TrainState`), put on the devices for `train_step`'s function."""

    def place_params(self, params):
        """Host parameters, put on the devices for `eval_step`'s function."""

    def to_host(self, tree):
        """One whole host NumPy copy of a placed tree (state, parameters, metrics), on every process."""

    def to_save(self, tree):
        """A placed tree as Orbax should save it: each array written once, by the process that holds it."""

    def train_step(self, step_fn: Callable, **static) -> Callable:
        """`step_fn(state, batch, axis_name=..., **static)` as `(placed state, device batch) -> (state,
        metrics)`, donating the state; metrics are the same for every device."""

    def eval_step(self, step_fn: Callable, **static) -> Callable:
        """`step_fn(params, batch, **static)`, run on each device's rows without collectives, with pmap's
        signature: `(placed params, host batch [devices, rows, ...]) -> outputs [devices, ...]` over this
        process's devices (`split_for_devices`); the host sums the outputs, or places their rows."""

    def device_batches(self, batches: Iterable[dict]) -> Iterator:
        """This process's host batches ([rows, ...] arrays), put on the devices ahead of their step."""


def from_config(training) -> Parallelism:
    """The `Parallelism` a run's `training` config names (training and prediction both place parameters
    through here; an older run's config.json has the keys it lacks from `jaxft.config.with_defaults`)."""
    return create(training.parallelism, fsdp_min_size=training.fsdp_min_size)


def create(name: str, devices=None, *, fsdp_min_size: int = FSDP_MIN_SIZE) -> Parallelism:
    """The `Parallelism` that `training.parallelism` names: "pmap", "dp" or "fsdp"."""
    if name == "pmap":
        return Pmap(devices)
    return Sharded(name, devices, min_size=fsdp_min_size)


class Pmap:
    """Per-device steps (`map_devices`) over `devices` (default: every process's); the state is replicated on
    each."""

    name = "pmap"

    def __init__(self, devices=None):
        self.devices = devices
        self.num_devices = len(devices) if devices else local_devices()

    def place_state(self, state):
        return replicate(state, self.devices)

    def place_params(self, params):
        return replicate(params, self.devices)

    def to_host(self, tree):
        return unreplicate(tree)

    def to_save(self, tree):
        return unreplicate(tree)  # every device holds the whole state: one host copy

    def train_step(self, step_fn, **static):
        return pmap_train_step(step_fn, self.devices, **static)

    def eval_step(self, step_fn, **static):
        return pmap_eval_step(step_fn, self.devices, **static)

    def device_batches(self, batches):
        split = functools.partial(split_for_devices, num_devices=self.num_devices)
        return prefetch(map(split, batches), devices=self.devices)


class Sharded:
    """One `jax.jit` step over a `Mesh` of `devices` (default: every process's) with one axis, `DATA_AXIS`.

    The step sees the global batch, its rows split over the devices. `mode` "dp" replicates parameters and
    optimizer state; "fsdp" shards each of their leaves of at least `min_size` elements along its largest
    dimension divisible by the device count (a smaller leaf, or one with no such dimension, stays replicated:
    gathering a bias or LayerNorm scale every step costs more time than its copies cost memory). The train
    state keeps these shardings from step to step.
    """

    def __init__(self, mode: str, devices=None, *, min_size: int = FSDP_MIN_SIZE):
        if mode not in ("dp", "fsdp"):
            raise ValueError(f"parallelism {mode!r} is not one of pmap, dp, fsdp")
        self.name, self.min_size = mode, min_size
        devices = list(devices or jax.devices())
        # Auto axes: XLA propagates shardings inside the step (make_mesh's default is Explicit).
        self.mesh = jax.make_mesh(
            (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
        )
        self.replicated = NamedSharding(self.mesh, P())
        self.rows = NamedSharding(self.mesh, P(DATA_AXIS))  # the leading axis split over the devices

    def param_sharding(self, shape: tuple[int, ...]) -> NamedSharding:
        """Where a parameter or optimizer-state leaf of `shape` lives."""
        if self.name == "fsdp" and math.prod(shape) >= self.min_size:
            divisible = [axis for axis, size in enumerate(shape) if size and size % self.mesh.size == 0]
            if divisible:
                split = max(divisible, key=lambda axis: shape[axis])  # the first of the largest
                return NamedSharding(
                    self.mesh, P(*(DATA_AXIS if a == split else None for a in range(len(shape))))
                )
        return self.replicated

    def state_shardings(self, state):
        """A tree like the train state `state` of its leaves' shardings: parameters and optimizer state by
        `param_sharding`, the step, key and counters replicated."""
        by_shape = lambda tree: jax.tree.map(lambda x: self.param_sharding(np.shape(x)), tree)  # noqa: E731
        replicated = jax.tree.map(lambda _: self.replicated, state)
        return replicated.replace(params=by_shape(state.params), opt_state=by_shape(state.opt_state))

    def place_state(self, state):
        return jax.tree.map(_put, state, self.state_shardings(state))

    def place_params(self, params):
        return jax.tree.map(lambda x: _put(x, self.param_sharding(np.shape(x))), params)

    def to_host(self, tree):
        return jax.tree.map(_whole_on_host, tree)

    def to_save(self, tree):
        return tree  # global arrays: Orbax writes each shard from its process; nothing is gathered

    def train_step(self, step_fn, **static):
        step = functools.partial(step_fn, axis_name=None, **static)  # None: the global view, no psum

        def sharded_step(state, batch):
            state, metrics = step(state, batch)
            # The new state is laid out as the old one: no resharding, one compilation per batch shape.
            return jax.lax.with_sharding_constraint(state, self.state_shardings(state)), metrics

        return jax.jit(sharded_step, donate_argnums=(0,))

    def eval_step(self, step_fn, **static):
        per_device = functools.partial(step_fn, **static)

        def on_device(params, batch):  # [1, rows, ...] in, [1, ...] out: this device's row of pmap's layout
            outputs = per_device(params, jax.tree.map(lambda x: x[0], batch))
            return jax.tree.map(lambda x: x[None], outputs)

        # Whole parameters on each device (fsdp gathers them), each device's rows, no collective after.
        mapped = jax.jit(
            jax.shard_map(on_device, mesh=self.mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(DATA_AXIS))
        )
        return lambda params, batch: jax.tree.map(_process_rows, mapped(params, self.global_batch(batch)))

    def device_batches(self, batches):
        return _ahead(map(self.global_batch, batches), 2)

    def global_batch(self, batch: dict) -> dict:
        """This process's part of a batch (rows, or [devices, rows] for evaluation), as its part of global
        arrays split along their first axis over the mesh."""
        return {k: _place_rows(v, self.rows) for k, v in batch.items()}


def _put(x, sharding: NamedSharding) -> jax.Array:
    """A host array as a global array with `sharding`; every process holds the whole of `x`."""
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: np.asarray(host[index]))


def _place_rows(x, rows: NamedSharding) -> jax.Array:
    """This process's part of an array split along its first axis over `rows`' mesh (its devices' rows),
    as its part of the global array."""
    return jax.make_array_from_process_local_data(rows, np.asarray(x))


def _whole_on_host(x) -> np.ndarray:
    """The whole of `x` as a host array on every process; gathered when it is sharded over processes."""
    if not isinstance(x, jax.Array):
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _process_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of an array split along its first axis over the mesh, as a host array."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = sorted(x.addressable_shards, key=lambda shard: shard.index[0].start)
    return np.concatenate([np.asarray(shard.data) for shard in shards])


def _ahead(items: Iterator, size: int) -> Iterator:
    """`items`, each made `size` items before it is taken (device transfers start early)."""
    queue = collections.deque(itertools.islice(items, size))
    while queue:
        yield queue.popleft()
        queue.extend(itertools.islice(items, 1))
