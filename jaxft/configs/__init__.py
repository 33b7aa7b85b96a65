"""The configs that ship with jaxft, one module per recipe, each a `get_config(variant="default")`.

    import jaxft.configs
    config = jaxft.configs.get("sst2")            # jaxft/configs/sst2.py's default recipe
    config = jaxft.configs.get("sst2", "tiny")    # one of its variants
    jaxft-train --config jaxft.configs.sst2:tiny --workdir runs/x    # the same on the command line

`default` holds every key with its default value (what `jaxft.config.check` validates); `finetune` is
`default` with the MiniLM checkpoint and the BERT paper's recipe, for your own data; `common` holds helpers.
"""

import importlib
import os

import ml_collections

NAMES = (
    "conll03", "default", "demo", "families", "finetune", "imdb", "mrpc", "multilabel", "newsgroups", "pet",
    "mlm", "relation", "squad", "sst2", "stsb", "tiny",
)  # fmt: skip


def _check(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"no shipped config {name!r} (one of {', '.join(NAMES)})")


def path(name: str) -> str:
    """The file of the shipped config `name` (for `--config`, which takes a file).

    Raises:
      ValueError: `name` is not a shipped config.
    """
    _check(name)
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")


def get(name: str, variant: str | None = None) -> ml_collections.ConfigDict:
    """The shipped config `name` (e.g. "sst2") in `variant` (None: the module's own default; each
    module's docstring lists its variants).

    Raises:
      ValueError: `name` is not a shipped config.
    """
    _check(name)
    module = importlib.import_module(f"jaxft.configs.{name}")
    return module.get_config() if variant is None else module.get_config(variant)
