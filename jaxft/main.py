"""Command line: `python train.py --config jaxft.configs.X --workdir DIR [--config.KEY=VALUE ...]`
(also installed as `jaxft-train`).

The one module that defines the training flags; the job is `jaxft.training.train.train_and_evaluate`, the
parsing `jaxft.cli`'s, as for the other entry points. `jaxft.compare` takes the same `--config` / `--workdir`
flags. `--help` (or `-h`) lists the flags and exits 0. Bad input ends with one line on stderr and exit status
2, a diverged run with exit status 3, a pre-empted one (checkpoint saved) with 143 for SIGTERM and 130 for
Ctrl-C. Several hosts: start the same command on each with `--distributed` (and, where JAX cannot detect the
cluster, `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`).
"""

import logging
import sys
import threading

from absl import app, flags
from ml_collections import config_flags

from jaxft import cli

CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file, e.g. jaxft/configs/default.py.")
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first (multi-host; auto-detects SLURM, TPU pods, ...).",
)
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for --distributed.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes, for --distributed.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, for --distributed.")
KEY_FLAGS = ("config", "workdir", "distributed", "coordinator_address", "num_processes", "process_id")


def main(argv):
    cli.no_leftovers(argv)
    if CONFIG.value is None or WORKDIR.value is None:
        cli.fail("--config and --workdir are required (see --help)")
    train(cli.config_or_fail())


def train(config, extensions=None) -> None:
    """Trains `config` in --workdir as this command line does: logging, --distributed, and every error
    as one line with its exit status (see the module docstring).

    Args:
      config: the parsed --config.
      extensions: a `jaxft.training.train.Extensions` (a search trial's pruning hook); default none.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    if DISTRIBUTED.value:
        import jax

        # Before anything touches a device. Afterwards JAX itself catches SIGTERM (its preemption notifier);
        # the loop then stops at a step all processes agree on.
        jax.distributed.initialize(
            coordinator_address=COORDINATOR.value,
            num_processes=NUM_PROCESSES.value,
            process_id=PROCESS_ID.value,
        )
    if config.get("training", {}).get("keep_cpu_step_memory", False):
        # A process-wide setting (the C library's heap, JAX's dispatch), so the command line makes it, for
        # its own process, before anything touches a device (after jax.distributed, which must come first);
        # a library call never does.
        from jaxft import cpu

        cpu.keep_step_memory()
    from jaxft import files
    from jaxft.config import expand_path
    from jaxft.errors import UserError
    from jaxft.training.preemption import Preempted
    from jaxft.training.train import train_and_evaluate

    try:
        workdir = expand_path(WORKDIR.value)  # `$RUNS/x` as the data paths take it
        _BackgroundErrors.install()
        train_and_evaluate(config, workdir, extensions)
    except UserError as error:
        _BackgroundErrors.reported = True
        cli.fail(str(error))
    except OSError as error:  # a write the machine refused (full disk, read-only): not a traceback
        _BackgroundErrors.reported = True
        cli.fail(str(files.storage_error(error, f"workdir {WORKDIR.value}")))
    except FloatingPointError as error:
        cli.fail(str(error), status=3)
    except Preempted as error:
        # 143 for SIGTERM, 130 for Ctrl-C: as if the signal had ended the process
        cli.fail(str(error), status=error.status)
    except KeyboardInterrupt:  # a Ctrl-C before training started, or a second one: nothing saved for it
        cli.fail("interrupted (Ctrl-C)", status=130)


class _BackgroundErrors:
    """From `install` to the process's end, a background thread's OS error (Orbax's async save, TensorBoard's
    writer on a full disk) is logged in one line instead of a traceback: the main thread meets the same
    failure (the next save, the next write) and ends with the one `error:` line. Once that line is out
    (`reported`), what the threads still say while shutting down goes to the debug log only, so the
    `error:` line stays the last."""

    reported = False

    @classmethod
    def install(cls) -> None:
        from jaxft import files

        def os_level(error) -> bool:
            return isinstance(error, OSError) or files.error_number(error) is not None

        def log(text: str, error) -> None:
            logging.log(
                logging.DEBUG if cls.reported else logging.WARNING, "%s: %s", text, files.os_reason(error)
            )

        def strip_traceback(record: logging.LogRecord) -> bool:
            error = record.exc_info[1] if record.exc_info else None
            if error is None or not os_level(error):
                return True
            if cls.reported:
                return False
            text = " ".join(record.getMessage().split())
            record.msg, record.args = f"{text} ({files.os_reason(error)})", None
            record.exc_info, record.exc_text = None, None
            return True

        previous_thread_hook, previous_unraisable_hook = threading.excepthook, sys.unraisablehook

        def thread_hook(args):
            if os_level(args.exc_value):
                log(f"in thread {getattr(args.thread, 'name', '?')}", args.exc_value)
            else:
                previous_thread_hook(args)

        def unraisable_hook(unraisable):
            error = unraisable.exc_value
            if os_level(error):
                log(unraisable.err_msg or "in a background write", error)
            elif isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
                # tensorstore's callbacks for the rest of an async save that failed (the failure itself is
                # reported once), arriving after Orbax closed that save's event loop.
                logging.debug("after a failed checkpoint save: %s", error)
            else:
                previous_unraisable_hook(unraisable)

        for handler in logging.getLogger().handlers:
            handler.addFilter(strip_traceback)
        threading.excepthook, sys.unraisablehook = thread_hook, unraisable_hook


def run():
    """Entry point of `train.py` and the `jaxft-train` console script."""
    sys.argv = cli.resolve_config_names(sys.argv)
    for root in cli.config_package_roots(sys.argv):
        if root not in sys.path:
            sys.path.insert(0, root)
    app.run(main, flags_parser=cli.parser(__doc__, "jaxft-train", KEY_FLAGS))


if __name__ == "__main__":
    run()
