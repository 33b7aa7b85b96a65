"""Command line: `python train.py --config configs/X.py --workdir DIR [--config.KEY=VALUE ...]`.

Flags only; the job is `jaxft.train.train_and_evaluate`. Bad input ends with one line on stderr and exit
status 2, a diverged run with exit status 3.
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file, e.g. configs/default.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")


def _fail(message: str, status: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def _parse(argv):
    # absl raises a multi-line AttributeError for an unknown --config.KEY: turn it into one line.
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _fail(str(error).splitlines()[0])
    except (AttributeError, KeyError) as error:
        keys = [arg.split("=", 1)[0][len("--config."):] for arg in argv if arg.startswith("--config.")]
        hint = str(error).strip("'\"").replace("\\n", " ").replace("\n", " ")
        _fail(f"unknown config key among {', '.join(keys)}: {hint}")


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        _fail("--config and --workdir are required (see --help)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from jaxft.errors import UserError
    from jaxft.train import train_and_evaluate

    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except UserError as error:
        _fail(str(error))
    except FloatingPointError as error:
        _fail(str(error), status=3)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
