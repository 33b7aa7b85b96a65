"""Command line: `python train.py --config configs/X.py --workdir DIR [--config.KEY=VALUE ...]`
(also installed as `jaxft-train`).

The one module that defines the training flags; the job is `jaxft.train.train_and_evaluate`. Its public
helpers (`parse`, `config_or_fail`, `fail`, `one_line`, ...) also serve `jaxft.compare`, which takes the same
`--config` / `--workdir` flags. Bad input ends with one line on stderr and exit status 2, a diverged run
with exit status 3, a pre-empted one (checkpoint saved) with 143 for SIGTERM and 130 for Ctrl-C.
Several hosts: start the same command on each with `--distributed` (and, where JAX cannot detect the cluster,
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`).
"""

import logging
import os
import re
import sys
import threading

from absl import app, flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file, e.g. configs/default.py.")
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first (multi-host; auto-detects SLURM, TPU pods, ...).",
)
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for --distributed.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes, for --distributed.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, for --distributed.")


def fail(message: str, status: int = 2):
    """Ends the process with `error: MESSAGE` on stderr and `status` (2: bad input)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def unknown_key(argv, error: Exception) -> str:
    """One line naming the unknown --config.KEY, from the (nested) KeyError that ml_collections raises."""
    while error.args and isinstance(error.args[0], Exception):  # AttributeError(KeyError(...))
        error = error.args[0]
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    text = " ".join(text.split())  # "'name'\nDid you mean ...?" -> one line, quotes unescaped
    keys = [arg.split("=", 1)[0][len("--config.") :] for arg in argv if arg.startswith("--config.")]
    missing = text.split("'")[1] if text.startswith("'") and text.count("'") >= 2 else None
    culprits = [key for key in keys if missing in key.split(".")] or keys
    flags_text = ", ".join(f"--config.{key}" for key in culprits)
    if len(culprits) == 1:
        return f"unknown config key {flags_text}: {text}"
    return f"unknown config key among {flags_text}: {text}"


def one_line(error: BaseException) -> str:
    """An exception as one line; of a message that carries a traceback, its first and last lines."""
    if isinstance(error, SyntaxError):
        return f"{error.filename}:{error.lineno}: {error.msg}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "Traceback (most recent call last):" in lines:  # keep the first line and the exception's own lines
        raised = [i for i, line in enumerate(lines) if re.match(r"[A-Za-z_][\w.]*(: |$)", line)]
        lines = [lines[0], *lines[raised[-1] if raised else -1 :]]
    return " ".join(lines) or type(error).__name__


def config_paths(argv) -> list[str]:
    """The --config files of `argv`, without ml_collections' ":ARGS" suffix."""
    paths = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    paths += [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    return [path.split(":", 1)[0] for path in paths]


def check_config_file(path: str) -> None:
    """Ends the process with one line if `path` exists but cannot be a config file: a directory, or not a
    Python file (ml_collections would run a JSON file as Python and report a missing key)."""
    if os.path.isdir(path):
        fail(f"--config {path}: is a directory, not a config file (e.g. configs/default.py)")
    if os.path.exists(path) and not path.endswith(".py"):
        fail(
            f"--config {path}: not a Python config file (a .py file defining get_config(), "
            "e.g. configs/default.py)"
        )


def parse(argv):
    """Parses the flags of `argv`; any flag or config error ends the process with one line."""
    for path in config_paths(argv):
        check_config_file(path)
    # absl raises a multi-line AttributeError for an unknown --config.KEY: turn it into one line.
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        fail(one_line(error))
    except (AttributeError, KeyError) as error:
        if "get_config" in str(error):  # the file ran, but defines no get_config()
            fail(f"--config {', '.join(config_paths(argv))}: not a config file: it defines no get_config()")
        fail(unknown_key(argv, error))
    except Exception as error:  # the config file itself fails to import or run (SyntaxError, NameError, ...)
        fail(f"--config: cannot load the config file: {type(error).__name__}: {one_line(error)}")


def config_or_fail():
    """The parsed config; a config file that could not be found fails here with one line."""
    path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]
    if not os.path.isfile(path):
        fail(f"--config {path}: no such file")
    config = CONFIG.value
    try:
        config.keys()  # ml_collections defers a load failure (an OSError) to the first access
    except OSError as error:
        fail(f"--config {path}: {one_line(error.__cause__ or error)}")
    except AttributeError:  # get_config() returned something else
        kind = type(config).__name__
        fail(f"--config {path}: get_config() must return an ml_collections.ConfigDict, not {kind}")
    return config


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if CONFIG.value is None or WORKDIR.value is None:
        fail("--config and --workdir are required (see --help)")
    config = config_or_fail()
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
    from jaxft.preemption import Preempted
    from jaxft.train import train_and_evaluate

    try:
        workdir = expand_path(WORKDIR.value)  # `$RUNS/x` as the data paths take it
        _BackgroundErrors.install()
        train_and_evaluate(config, workdir)
    except UserError as error:
        _BackgroundErrors.reported = True
        fail(str(error))
    except OSError as error:  # a write the machine refused (full disk, read-only): not a traceback
        _BackgroundErrors.reported = True
        fail(str(files.storage_error(error, f"workdir {WORKDIR.value}")))
    except FloatingPointError as error:
        fail(str(error), status=3)
    except Preempted as error:
        # 143 for SIGTERM, 130 for Ctrl-C: as if the signal had ended the process
        fail(str(error), status=error.status)
    except KeyboardInterrupt:  # a Ctrl-C before training started, or a second one: nothing saved for it
        fail("interrupted (Ctrl-C)", status=130)


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


def config_package_roots(argv) -> list[str]:
    """Directories to put on sys.path so that the config files of `argv` can import `configs.*`."""
    # Config files import `configs.common` / `configs.default`: the directory holding `configs/` must be
    # importable however the command was started (python train.py, jaxft-train, from another directory).
    return [os.path.dirname(os.path.dirname(os.path.abspath(p))) for p in config_paths(argv)] + [os.getcwd()]


def run():
    """Entry point of `train.py` and the `jaxft-train` console script."""
    for root in config_package_roots(sys.argv):
        if root not in sys.path:
            sys.path.insert(0, root)
    # absl's --help lists the flags of the module named by sys.argv[0] (train.py, the console script).
    listed = flags.FLAGS.get_key_flags_for_module(sys.argv[0])
    for flag in flags.FLAGS.get_key_flags_for_module(__name__):
        if flag not in listed:
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main, flags_parser=parse)


if __name__ == "__main__":
    run()
