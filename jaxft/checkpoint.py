"""Checkpoints: the full train state every N steps, and the best parameters by an eval metric.

Two Orbax managers, because Orbax's `best_fn` makes `max_to_keep` keep the best N instead of the newest N
(ENVIRONMENT.md), and resuming needs the newest:

    WORKDIR/checkpoints/latest/<step>/   full TrainState + JSON meta (data position, best so far, ...)
    WORKDIR/checkpoints/best/<step>/     parameters of the best evaluation + JSON meta (its metrics)

Where a run starts from, in order: resume from `latest` in its own workdir > parameters of another run
(`model.init_from_workdir`) > a pretrained Hugging Face checkpoint > random initialisation.
"""

import contextlib
import logging
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxft import files
from jaxft.errors import UserError


def _on_host(template):
    """A restore target that reads each leaf whole into a host array, however it was saved: host arrays, or
    global arrays sharded over devices that the reading process may not have (another device count, another
    parallelism). Only shapes and dtypes matter; the memory is not touched."""
    return jax.tree.map(lambda x: np.empty(np.shape(x), np.dtype(x.dtype)), template)


class Checkpoints:
    """Saves and restores one workdir's checkpoints.

    Args:
      workdir: the run's directory; checkpoints go to `workdir/checkpoints`.
      keep: how many of the newest full-state checkpoints to keep.
      async_save: write in the background (the step loop goes on; `wait` blocks until written).
      read_only: only read (another run's workdir, prediction, export): Orbax creates and deletes nothing.
    """

    def __init__(self, workdir: str, *, keep: int = 2, async_save: bool = True, read_only: bool = False):
        root = os.path.join(os.path.abspath(workdir), "checkpoints")

        def manager(kind: str, max_to_keep: int) -> ocp.CheckpointManager:
            if read_only:
                options = ocp.CheckpointManagerOptions(create=False, read_only=True, save_interval_steps=0)
            else:
                options = ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
                )
            return ocp.CheckpointManager(os.path.join(root, kind), options=options)

        self.latest = manager("latest", keep)
        self.best = manager("best", 1)

    def save(self, step: int, state, meta: dict) -> None:
        """Saves the full train state and `meta` (JSON) as step `step`.

        `state` holds host arrays, or global `jax.Array`s sharded over the devices: then each process writes
        only the shards it holds (nothing is gathered), and the async save has copied them off the devices
        when this returns (the next step may donate their buffers)."""
        with _storage_errors(self.latest.directory, "saving a checkpoint"):
            self.latest.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            )

    def save_best(self, step: int, params, meta: dict) -> None:
        """Replaces the best checkpoint with `params`; the caller decides what "best" means."""
        with _storage_errors(self.best.directory, "saving the best checkpoint"):
            self.best.save(
                step,
                args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)),
                force=True,
            )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, template_state) -> tuple[object, dict] | None:
        """The newest full state that reads back whole, shaped like `template_state`, and its meta.

        A damaged newest checkpoint (truncated or partly deleted files) is skipped with a warning and the one
        before it is used. Orbax writes into a temporary directory and renames it when complete, so a
        half-written async save is never among the steps tried.

        Returns:
          (state, meta), or None when there is no checkpoint.

        Raises:
          UserError: checkpoints exist but none of them can be read.
        """
        steps = sorted(self.latest.all_steps(), reverse=True)
        for step in steps:
            try:
                restored = self.latest.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(_on_host(template_state)), meta=ocp.args.JsonRestore()
                    ),
                )
            except UserError:
                raise
            except Exception as error:  # tensorstore and Orbax raise many types for a damaged directory
                logging.warning(
                    "checkpoint step %d is damaged (%s); trying an older one", step, _first_line(error)
                )
                continue
            check_shapes(
                restored.state.params, template_state.params, f"checkpoint step {step} in this workdir"
            )
            if restored.meta is None or "step" not in restored.meta:
                logging.warning("checkpoint step %d has no meta; trying an older one", step)
                continue
            self._set_aside([s for s in steps if s > step])
            return restored.state, restored.meta
        if steps:
            raise UserError(f"none of the checkpoints {steps} in {self.latest.directory} can be read")
        return None

    def _set_aside(self, damaged: list[int]) -> None:
        # Moved, not deleted (they may still matter to someone), and out of Orbax's way: the resumed run
        # saves those step numbers again.
        if not damaged or jax.process_index() != 0:
            return
        aside = os.path.join(os.path.dirname(str(self.latest.directory)), "damaged")
        os.makedirs(aside, exist_ok=True)
        for step in damaged:
            target = os.path.join(aside, f"{step}-{int(time.time())}")
            os.replace(os.path.join(str(self.latest.directory), str(step)), target)
            logging.warning("moved damaged checkpoint step %d to %s", step, target)
        self.latest.reload()

    def restore_best_params(self, template_params) -> tuple[object, dict] | None:
        """The best parameters and their meta; None when no evaluation has been saved."""
        step = self.best.latest_step()
        if step is None:
            return None
        restored = self.best.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_on_host(template_params)), meta=ocp.args.JsonRestore()
            ),
        )
        check_shapes(restored.params, template_params, f"best checkpoint step {step}")
        return restored.params, restored.meta

    def restore_latest_params(self, template_params):
        """Only the parameters of the newest full state (Adam moments stay on disk)."""
        step = self.latest.latest_step()
        item = {"params": _on_host(template_params)}
        restored = self.latest.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),  # host arrays, as item
                    partial_restore=True,
                )
            ),
        )
        params = restored.state["params"]
        check_shapes(params, template_params, f"checkpoint step {step}")
        return params

    def best_params_or_latest(self, template_params) -> tuple[object, str, int]:
        """The parameters a finished run is used with: its best evaluation, else its newest state.

        Returns:
          (params, "best" | "latest", step).
        """
        best = self.restore_best_params(template_params)
        if best is not None:
            return best[0], "best", self.best.latest_step()
        return self.restore_latest_params(template_params), "latest", self.latest.latest_step()

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
):
    """Fine-tuned parameters of another run (its best checkpoint, else its newest), for a warm start,
    prediction or export.

    Raises:
      UserError: `workdir` holds no jaxft checkpoint, or its parameters do not fit the model.
    """
    find_checkpoint(workdir, key)
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        params, kind, step = ckpts.best_params_or_latest(template_params)
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{key}={workdir}: its parameters do not fit this model ({_first_line(error)})"
        ) from None
    finally:
        ckpts.close()
    log(f"Parameters from {workdir} ({kind} checkpoint, step {step})")
    return params
