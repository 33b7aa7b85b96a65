"""The command-line library of the four entry points: train (`jaxft.main`), compare, predict and export.

All four take absl flags (the training ones add ml_collections' `--config FILE --config.KEY=VALUE`), and all
four end the same way: `--help` (or `-h`) prints the entry point's docstring and its flags on stdout and
exits 0 (absl's own help exits 1, which reads as a failure to a script); a bad flag, a missing one or a
config file that cannot load ends with one `error:` line on stderr and exit status 2.

The training flags live in the global `absl.flags.FLAGS` (train and compare share them, and absl's logging
flags come with `app.run`); predict and export parse a `FlagValues` of their own, built afresh on each call,
so that they can run in one process with the others (tests, notebooks) without a flag defined twice or a
value left over from the previous call.
"""

import os
import re
import sys
from collections.abc import Callable, Sequence

from absl import flags

# absl's help flags, and -h, which absl lacks but every other command line knows.
HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--help=true", "--helpfull=true")


def fail(message: str, status: int = 2):
    """Ends the process with `error: MESSAGE` on stderr and `status` (2: bad input)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def one_line(error: BaseException) -> str:
    """An exception as one line; of a message that carries a traceback, its first and last lines."""
    if isinstance(error, SyntaxError):
        return f"{error.filename}:{error.lineno}: {error.msg}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "Traceback (most recent call last):" in lines:  # keep the first line and the exception's own lines
        raised = [i for i, line in enumerate(lines) if re.match(r"[A-Za-z_][\w.]*(: |$)", line)]
        lines = [lines[0], *lines[raised[-1] if raised else -1 :]]
    return " ".join(lines) or type(error).__name__


def unknown_key(argv: Sequence[str], error: Exception) -> str:
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


def config_paths(argv: Sequence[str]) -> list[str]:
    """The --config files of `argv`, without ml_collections' ":ARGS" suffix."""
    paths = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    paths += [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    return [path.split(":", 1)[0] for path in paths]


def config_package_roots(argv: Sequence[str]) -> list[str]:
    """Directories to put on sys.path so that the config files of `argv` can import their neighbours: a
    user's `myconfigs/x.py` that imports `myconfigs.common` works however the command was started (python
    train.py, jaxft-train, from another directory). The shipped configs import `jaxft.configs.*`."""
    return [os.path.dirname(os.path.dirname(os.path.abspath(p))) for p in config_paths(argv)] + [os.getcwd()]


def resolve_config_names(argv: Sequence[str]) -> list[str]:
    """`argv` with each `--config jaxft.configs.NAME[:VARIANT]` (a shipped config by its module name)
    replaced by that module's file, which is what ml_collections loads; file paths are left as they are."""
    from jaxft import configs

    def resolve(value: str) -> str:
        name, colon, variant = value.partition(":")
        if not name.startswith("jaxft.configs.") or name.endswith(".py"):
            return value
        try:
            return configs.path(name.removeprefix("jaxft.configs.")) + colon + variant
        except ValueError as error:
            fail(f"--config {value}: {error}")

    return _map_config_values(argv, resolve)


def config_name(value: str) -> str:
    """A `--config` value as a command written for someone else shows it: a shipped config's file by its
    module name (`jaxft.configs.NAME[:VARIANT]`, which runs on any installation; the file's path is this
    machine's), any other file as it is. The inverse of `resolve_config_names`."""
    from jaxft import configs

    path, colon, variant = value.partition(":")
    shipped = os.path.dirname(os.path.abspath(configs.__file__))
    if path.endswith(".py") and os.path.dirname(os.path.abspath(path)) == shipped:
        return f"jaxft.configs.{os.path.basename(path)[:-3]}{colon}{variant}"
    return value


def config_names(argv: Sequence[str]) -> list[str]:
    """`argv` with each `--config` value as `config_name` shows it."""
    return _map_config_values(argv, config_name)


def _map_config_values(argv: Sequence[str], fn) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + fn(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = fn(out[i + 1])
    return out


def check_config_file(path: str) -> None:
    """Ends the process with one line if `path` exists but cannot be a config file: a directory, or not a
    Python file (ml_collections would run a JSON file as Python and report a missing key)."""
    if os.path.isdir(path):
        fail(f"--config {path}: is a directory, not a config file (e.g. jaxft/configs/sst2.py)")
    if os.path.exists(path) and not path.endswith(".py"):
        fail(
            f"--config {path}: not a Python config file (a .py file defining get_config(), "
            "e.g. jaxft/configs/sst2.py)"
        )


def wants_help(values: flags.FlagValues, argv: Sequence[str]) -> bool:
    """Whether `argv` (program name first) asks for help; a "-h" that is the value of a flag does not."""
    previous = None
    for arg in argv[1:]:
        if arg == "--":
            return False
        name = previous[2:] if previous and previous.startswith("--") and "=" not in previous else None
        is_value = name is not None and name in values and not values[name].boolean
        if arg in HELP_FLAGS and not is_value:
            return True
        previous = arg
    return False


def print_help(values: flags.FlagValues, doc: str, prog: str, names: Sequence[str], full: bool) -> None:
    """Writes `doc` and the flags `names` (every flag when `full`) to stdout, laid out as absl's --help."""
    for name in names:
        values.register_key_flag_for_module(prog, values[name])
    listed = values.get_help(include_special_flags=False) if full else values.module_help(prog)
    sys.stdout.write(f"{doc.rstrip()}\n\nflags:\n{listed}\n")
    if not full and set(values) - set(names):
        sys.stdout.write("\nTry --helpfull to get a list of all flags.\n")


def parse(values: flags.FlagValues, argv: Sequence[str], doc: str, prog: str, names: Sequence[str]):
    """Parses `argv` (program name first) into `values`; returns the arguments left over.

    `--help` / `-h` prints `doc` and the flags `names` and exits 0 before anything is parsed (a config file
    is not even loaded). Any flag or config error ends the process with one line and exit status 2.
    """
    argv = list(argv)
    if wants_help(values, argv):
        print_help(values, doc, prog, names, full=any(arg.startswith("--helpfull") for arg in argv))
        sys.exit(0)
    paths = config_paths(argv) if "config" in values else []
    for path in paths:
        check_config_file(path)
    # absl raises a multi-line AttributeError for an unknown --config.KEY: turn it into one line.
    try:
        return values(argv)
    except flags.Error as error:
        fail(one_line(error))
    except (AttributeError, KeyError) as error:
        if "get_config" in str(error):  # the file ran, but defines no get_config()
            fail(f"--config {', '.join(paths)}: not a config file: it defines no get_config()")
        fail(unknown_key(argv, error))
    except Exception as error:  # the config file itself fails to import or run (SyntaxError, NameError, ...)
        fail(f"--config: cannot load the config file: {type(error).__name__}: {one_line(error)}")


def parser(doc: str, prog: str, names: Sequence[str]) -> Callable[[list[str]], list[str]]:
    """`parse` on the global FLAGS, as `absl.app.run(main, flags_parser=...)` takes it."""
    return lambda argv: parse(flags.FLAGS, argv, doc, prog, names)


def config_or_fail(values: flags.FlagValues = flags.FLAGS, name: str = "config"):
    """The parsed config of flag `name`; a config file that could not be found or loaded fails with one
    line (ml_collections defers both to the first use of the value)."""
    from ml_collections import config_flags

    path = config_flags.get_config_filename(values[name]).split(":", 1)[0]
    if not os.path.isfile(path):
        fail(f"--config {path}: no such file")
    config = values[name].value
    try:
        config.keys()  # ml_collections defers a load failure (an OSError) to the first access
    except OSError as error:
        fail(f"--config {path}: {one_line(error.__cause__ or error)}")
    except AttributeError:  # get_config() returned something else
        kind = type(config).__name__
        fail(f"--config {path}: get_config() must return an ml_collections.ConfigDict, not {kind}")
    return config


def require(values: flags.FlagValues, names: Sequence[str]) -> None:
    """Ends the process with one line naming the flags of `names` that were not given."""
    missing = [f"--{name}" for name in names if values[name].value is None]
    if len(missing) == 1:
        fail(f"{missing[0]} is required (see --help)")
    if missing:
        fail(f"{', '.join(missing[:-1])} and {missing[-1]} are required (see --help)")


def no_leftovers(argv: Sequence[str]) -> None:
    """Ends the process with one line if the command line held arguments that are not flags."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
