"""Checkpoints: the full train state every N steps, and the best parameters by an eval metric.

Two Orbax managers, because Orbax's `best_fn` makes `max_to_keep` keep the best N instead of the newest N,
and resuming needs the newest:

    WORKDIR/checkpoints/latest/<step>/   full TrainState + JSON meta (data position, best so far, checksums)
    WORKDIR/checkpoints/best/<step>/     parameters of a best evaluation + JSON meta (its metrics, checksums)

Where a run starts from, in order: resume from `latest` in its own workdir > parameters of another run
(`model.init_from_workdir`) > a pretrained Hugging Face checkpoint > random initialisation.

The two managers stay consistent whatever the moment a run is killed:
- a best checkpoint is never deleted while a kept `latest` checkpoint's meta names it as its best
  (`prune_best`), so falling back to an older full state finds that state's best too;
- resuming from step S deletes the best checkpoints of later steps (`reconcile_best`): the resumed run
  evaluates those steps again, bit for bit, and saves them again;
- every checkpoint records a checksum of each array (`checksums`); a read that does not match, or that fails
  (truncated or missing files), is damaged: resuming falls back to the previous full state, and the users of
  a finished run (final report, predict, export, warm start) fall back from the best to the newest state.
"""

import contextlib
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxft import files
from jaxft.errors import UserError


class Damaged(Exception):
    """A checkpoint that cannot be read back whole, or whose arrays do not match their checksums."""


def _on_host(template):
    """A restore target that reads each leaf whole into a host array, however it was saved: host arrays, or
    global arrays sharded over devices that the reading process may not have (another device count, another
    parallelism). Only shapes and dtypes matter; the memory is not touched."""
    return jax.tree.map(lambda x: np.empty(np.shape(x), np.dtype(x.dtype)), template)


def _leaf_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def _host_checksum(x) -> int:
    x = np.ascontiguousarray(x).ravel()
    bits = x.astype(np.uint8) if x.dtype == np.bool_ else x.view(_UINT[x.dtype.itemsize])
    weights = np.arange(x.size, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    return int(np.sum(bits.astype(np.uint32) * weights, dtype=np.uint32))


@jax.jit
def _device_checksums(leaves):
    def one(x):
        x = jnp.ravel(x)
        if x.dtype == jnp.bool_:
            bits = x.astype(jnp.uint32)
        else:
            bits = jax.lax.bitcast_convert_type(x, _UINT[x.dtype.itemsize]).astype(jnp.uint32)
        weights = jnp.arange(x.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
        return jnp.sum(bits * weights, dtype=jnp.uint32)

    return [one(x) for x in leaves]


def checksums(tree) -> dict[str, int]:
    """A checksum of each array of `tree`, by its path ("params/bert/...").

    The sum, modulo 2**32, of the elements' bit patterns, each times an odd weight of its position: changing
    any one element changes it (an odd number is invertible modulo 2**32), and so does swapping two. Host
    arrays are summed on the host, device arrays (global ones included) where they are, with the same
    result, so a checksum recorded from device arrays is checked against the host arrays read back.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = [_leaf_name(path) for path, _ in leaves]
    on_device = [i for i, (_, x) in enumerate(leaves) if isinstance(x, jax.Array)]
    values = {i: _host_checksum(x) for i, (_, x) in enumerate(leaves) if i not in set(on_device)}
    if on_device:
        sums = _device_checksums([leaves[i][1] for i in on_device])
        values.update(
            {i: int(np.asarray(s.addressable_data(0))) for i, s in zip(on_device, sums, strict=True)}
        )
    return {names[i]: values[i] for i in range(len(leaves))}


def verify(tree, recorded: dict | None, what: str) -> None:
    """Raises `Damaged` when an array of `tree` does not match the checksum `recorded` for it (checkpoints
    written before checksums existed record none, and are taken as they are)."""
    if not recorded:
        return
    for name, value in checksums(tree).items():
        if name in recorded and recorded[name] != value:
            raise Damaged(f"{what}: array {name} does not match its checksum")


@contextlib.contextmanager
def _quiet_reads():
    """Orbax and its event loop log each failed read with a traceback; a damaged checkpoint is reported
    once, by us, as one warning."""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "asyncio", "tensorstore")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _quiet_read_only():
    """Drops Orbax's warning that a directory opened read-only is read-only: it is what was asked for, and
    prediction would print it four times."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")

    logger = logging.getLogger("absl")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


class Checkpoints:
    """Saves and restores one workdir's checkpoints.

    Args:
      workdir: the run's directory; checkpoints go to `workdir/checkpoints`.
      keep: how many of the newest full-state checkpoints to keep.
      async_save: write in the background (the step loop goes on; `wait` blocks until written).
      read_only: only read (another run's workdir, prediction, export): nothing is created, moved or deleted.
    """

    def __init__(self, workdir: str, *, keep: int = 2, async_save: bool = True, read_only: bool = False):
        self.root = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.read_only = read_only

        def manager(kind: str, max_to_keep: int | None) -> ocp.CheckpointManager:
            if read_only:
                options = ocp.CheckpointManagerOptions(create=False, read_only=True, save_interval_steps=0)
            else:
                options = ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
                )
            return ocp.CheckpointManager(os.path.join(self.root, kind), options=options)

        with _quiet_read_only():
            self.latest = manager("latest", keep)
            self.best = manager("best", None)  # deleted by `prune_best`, never by age
        self._best_of = {}  # latest step -> the best step its meta names (read once per step)

    # Writing.

    def save(self, step: int, state, meta: dict) -> None:
        """Saves the full train state and `meta` (JSON; `meta["best"]["best_step"]` names its best) as step
        `step`, with the checksums of its arrays.

        `state` holds host arrays, or global `jax.Array`s sharded over the devices: then each process writes
        only the shards it holds (nothing is gathered), and the async save has copied them off the devices
        when this returns (the next step may donate their buffers)."""
        meta = {**meta, "checksums": checksums(state)}
        with _storage_errors(self.latest.directory, "saving a checkpoint"):
            self.latest.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            )
        self._best_of[step] = (meta.get("best") or {}).get("best_step")
        with _storage_errors(self.best.directory, "deleting a best checkpoint no full state names"):
            self.prune_best()

    def save_best(self, step: int, params, meta: dict) -> None:
        """Saves `params` as the best so far; the caller decides what "best" means. The best checkpoints
        that a kept full state still names stay (`prune_best`)."""
        meta = {**meta, "checksums": checksums(params)}
        with _storage_errors(self.best.directory, "saving the best checkpoint"):
            self.best.save(
                step,
                args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)),
                force=True,
            )

    def prune_best(self) -> None:
        """Deletes the best checkpoints no kept full state names, except those newer than every full state
        (the next full state will name the newest of them)."""
        latest_steps = self.latest.all_steps()
        newest = max(latest_steps, default=-1)
        named = {self._named_best(step) for step in latest_steps} | {self._best_of.get(newest)}
        for step in self.best.all_steps():
            if step <= newest and step not in named:
                self.best.delete(step)

    def _named_best(self, step: int) -> int | None:
        if step not in self._best_of:
            try:
                meta = _restore(self.latest, step, meta=ocp.args.JsonRestore()).meta
                self._best_of[step] = (meta.get("best") or {}).get("best_step")
            except (Damaged, AttributeError):  # a damaged meta names nothing; resuming sets it aside
                self._best_of[step] = None
        return self._best_of[step]

    # Resuming.

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, template_state) -> tuple[object, dict] | None:
        """The newest full state that reads back whole and matches its checksums, shaped like
        `template_state`, and its meta.

        A damaged newer checkpoint (truncated, partly deleted or altered files) is skipped with a warning,
        moved to `checkpoints/damaged/`, and the one before it is used. Orbax writes into a temporary
        directory and renames it when complete, so a half-written async save is never among the steps tried.

        Returns:
          (state, meta), or None when there is no checkpoint.

        Raises:
          UserError: checkpoints exist but none of them can be read, or they do not fit the model.
        """
        steps = sorted(self.latest.all_steps(), reverse=True)
        for step in steps:
            try:
                state, meta = self._read_latest(step, template_state)
            except Damaged as error:
                logging.warning("checkpoint step %d is damaged (%s); trying an older one", step, error)
                continue
            self._set_aside(self.latest, [s for s in steps if s > step])
            return state, meta
        if steps:
            raise UserError(f"none of the checkpoints {steps} in {self.latest.directory} can be read")
        return None

    def _read_latest(self, step: int, template_state):
        restored = _restore(
            self.latest,
            step,
            state=ocp.args.StandardRestore(_on_host(template_state)),
            meta=ocp.args.JsonRestore(),
        )
        meta = restored.meta
        if not isinstance(meta, dict) or "step" not in meta:
            raise Damaged("its meta is missing")
        check_shapes(restored.state.params, template_state.params, f"checkpoint step {step} in this workdir")
        verify(restored.state, meta.get("checksums"), f"checkpoint step {step}")
        return restored.state, meta

    def reconcile_best(self, step: int, best_step: int | None, template_params, *, redo_step: bool) -> bool:
        """Makes the best checkpoints agree with the full state of `step` that a run resumes from.

        Best checkpoints of later steps (and of `step` itself when its evaluation is to be redone) are
        deleted: the resumed run evaluates those steps again, with the same result, and saves them again.

        Returns:
          Whether the best checkpoint `best_step` that this state names is there and intact (True when it
          names none). A damaged one is moved to `checkpoints/damaged/`.
        """
        for saved in self.best.all_steps():
            if saved > step or (redo_step and saved == step):
                self.best.delete(saved)
        if best_step is None:
            return True
        if best_step not in self.best.all_steps():
            return False
        try:
            self._read_best(best_step, template_params)
        except Damaged as error:
            logging.warning("best checkpoint step %d is damaged (%s)", best_step, error)
            self._set_aside(self.best, [best_step])
            return False
        return True

    def _read_best(self, step: int, template_params):
        restored = _restore(
            self.best,
            step,
            params=ocp.args.StandardRestore(_on_host(template_params)),
            meta=ocp.args.JsonRestore(),
        )
        if not isinstance(restored.meta, dict):
            raise Damaged("its meta is missing")
        check_shapes(restored.params, template_params, f"best checkpoint step {step}")
        verify(restored.params, restored.meta.get("checksums"), f"best checkpoint step {step}")
        return restored.params, restored.meta

    def _read_latest_params(self, step: int, template_params):
        """Only the parameters of a full state (its Adam moments stay on disk)."""
        item = {"params": _on_host(template_params)}
        restored = _restore(
            self.latest,
            step,
            state=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),  # host arrays, as item
                partial_restore=True,
            ),
            meta=ocp.args.JsonRestore(),
        )
        params = restored.state["params"]
        check_shapes(params, template_params, f"checkpoint step {step}")
        verify({"params": params}, (restored.meta or {}).get("checksums"), f"checkpoint step {step}")
        return params

    def _set_aside(self, manager: ocp.CheckpointManager, damaged: list[int]) -> None:
        # Moved, not deleted (they may still matter to someone), and out of Orbax's way: the resumed run
        # saves those step numbers again.
        if not damaged or self.read_only or jax.process_index() != 0:
            return
        aside = os.path.join(self.root, "damaged")
        os.makedirs(aside, exist_ok=True)
        kind = os.path.basename(str(manager.directory))
        for step in damaged:
            target = os.path.join(aside, f"{kind}-{step}-{int(time.time())}")
            shutil.move(os.path.join(str(manager.directory), str(step)), target)
            logging.warning("moved damaged %s checkpoint step %d to %s", kind, step, target)
        manager.reload()

    # Reading a run's parameters.

    def restore_best_params(self, template_params) -> tuple[object, dict] | None:
        """The newest best parameters and their meta; None when no evaluation has been saved.

        Raises:
          Damaged: that checkpoint cannot be read back whole.
        """
        step = self.best.latest_step()
        if step is None:
            return None
        return self._read_best(step, template_params)

    def restore_latest_params(self, template_params):
        """Only the parameters of the newest full state (Adam moments stay on disk)."""
        return self._read_latest_params(self.latest.latest_step(), template_params)

    def best_params_or_latest(self, template_params) -> tuple[object, str, int]:
        """The parameters a finished run is used with: its best evaluation, else its newest state.

        A damaged checkpoint is skipped with a warning: the newest best, then the full states from the
        newest, then the older bests are tried in turn.

        Returns:
          (params, "best" | "latest", step).

        Raises:
          UserError: there is no checkpoint, or none can be read.
        """
        bests = sorted(self.best.all_steps(), reverse=True)
        candidates = [("best", s) for s in bests[:1]]
        candidates += [("latest", s) for s in sorted(self.latest.all_steps(), reverse=True)]
        candidates += [("best", s) for s in bests[1:]]
        errors = []
        for kind, step in candidates:
            try:
                if kind == "best":
                    return self._read_best(step, template_params)[0], kind, step
                return self._read_latest_params(step, template_params), kind, step
            except Damaged as error:
                logging.warning("%s checkpoint step %d is damaged (%s); trying another", kind, step, error)
                errors.append(f"{kind} {step}: {error}")
        if not candidates:
            raise UserError(f"no finished jaxft checkpoint in {self.root}")
        raise UserError(f"none of the checkpoints in {self.root} can be read ({errors[0]})")

    def wait(self) -> None:
        """Blocks until background saves are on disk."""
        with _storage_errors(self.latest.directory, "saving a checkpoint"):
            self.latest.wait_until_finished()
        with _storage_errors(self.best.directory, "saving the best checkpoint"):
            self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()


@contextlib.contextmanager
def _storage_errors(directory, doing: str):
    """A save that the machine refused (a full disk, a read-only filesystem) as one `StorageError` line.

    An async save's error surfaces in the next save or wait (Orbax raises it there); either way it ends the
    run. Errors without an OS reason are not the machine's and keep their traceback.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        if files.error_number(error) is None:
            raise
        raise files.storage_error(error, str(directory), doing) from None


def _restore(manager: ocp.CheckpointManager, step: int, **items):
    """`items` (Orbax restore args by item name) of checkpoint `step`; a failure to read them is `Damaged`."""
    try:
        with _quiet_reads():
            return manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # tensorstore and Orbax raise many types for a damaged directory
        raise Damaged(_first_line(error)) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def find_checkpoint(workdir: str, key: str = "model.init_from_workdir") -> tuple[str, int]:
    """The checkpoint another run would be used from: ("best" | "latest", step). Reads only.

    Raises:
      UserError: `workdir` holds no finished jaxft checkpoint.
    """
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    if os.path.isdir(root):
        ckpts = Checkpoints(workdir, read_only=True)
        steps = {"best": ckpts.best.latest_step(), "latest": ckpts.latest.latest_step()}
        ckpts.close()
        for kind, step in steps.items():
            if step is not None:
                return kind, step
    raise UserError(f"{key}={workdir}: no finished jaxft checkpoint in {root}")


def check_shapes(restored, template, what: str) -> None:
    """Raises `UserError` naming the first parameter whose shape differs from the model's."""
    expected = dict(jax.tree_util.tree_flatten_with_path(template)[0])
    for path, value in jax.tree_util.tree_flatten_with_path(restored)[0]:
        if path not in expected or np.shape(value) != np.shape(expected[path]):
            name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
            want = np.shape(expected[path]) if path in expected else "absent"
            raise UserError(f"{what}: parameter {name} has shape {np.shape(value)}, the model expects {want}")


def params_from_workdir(
    workdir: str, template_params, key: str = "model.init_from_workdir", log=logging.info
) -> tuple[object, int]:
    """Fine-tuned parameters of another run (its best checkpoint, else its newest; a damaged one is skipped
    for the next), for a warm start, prediction or export.

    Returns:
      (params, the step they are from).

    Raises:
      UserError: `workdir` holds no jaxft checkpoint that reads back, or its parameters do not fit the model.
    """
    find_checkpoint(workdir, key)
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        params, kind, step = ckpts.best_params_or_latest(template_params)
    except UserError as error:
        raise UserError(f"{key}={workdir}: {error}") from None
    finally:
        ckpts.close()
    log(f"Parameters from {workdir} ({kind} checkpoint, step {step})")
    return params, step


def saved_metas(workdir: str) -> list[tuple[str, int, dict]]:
    """The JSON meta of every checkpoint in `workdir` that has one: ("latest" | "best", step, meta), newest
    first within each kind. Reads only; a checkpoint whose meta cannot be read is left out (restoring it
    reports that)."""
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(root):
        return []
    ckpts = Checkpoints(workdir, read_only=True)
    found = []
    try:
        for kind, manager in (("latest", ckpts.latest), ("best", ckpts.best)):
            for step in sorted(manager.all_steps(), reverse=True):
                try:
                    meta = _restore(manager, step, meta=ocp.args.JsonRestore()).meta
                except Damaged:  # `restore` warns and falls back when it gets there
                    continue
                if isinstance(meta, dict):
                    found.append((kind, step, meta))
    finally:
        ckpts.close()
    return found


def saved_labels(workdir: str) -> dict[str, list[str]]:
    """The label sets the checkpoints of `workdir` were trained with, as their meta records them:
    {"checkpoint latest step 12": [...], ...}; checkpoints written without labels are left out."""
    return {
        f"checkpoint {kind} step {step}": list(meta["labels"])
        for kind, step, meta in saved_metas(workdir)
        if isinstance(meta.get("labels"), list)
    }
