"""Checks on a resolved config, so that a wrong value fails before anything is read or written.

Configs are `ml_collections.ConfigDict`s built by `configs/*.py`. Unknown keys are already refused by the
locked ConfigDict; this module checks values and the combinations that only make sense together, and raises
`UserError` with the key's full name.
"""

import json
import math
import os

import ml_collections

from jaxft.errors import UserError

_CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "model.attention": ("auto", "xla", "cudnn"),
    "data.format": ("auto", "csv", "tsv", "jsonl"),
    "optimizer.name": ("adamw", "sgd"),
    "optimizer.schedule": ("linear", "constant"),
    "training.best_mode": ("max", "min"),
    "training.parallelism": ("pmap", "dp", "fsdp"),
}
# Numeric keys by what they may hold. Every one must be a finite number of its kind (NaN and infinity pass
# `<= 0`-style checks, and a JSON config can hold any type); integers are counts, sizes and steps.
_POSITIVE_INTS = (
    "data.max_seq_length",
    "data.num_buckets",
    "training.batch_size",
    "training.grad_accum_steps",
    "training.eval_batch_size",
    "training.log_every",
    "training.checkpoint_every",
    "training.keep_checkpoints",
    "model.random_init.hidden_size",
    "model.random_init.num_hidden_layers",
    "model.random_init.num_attention_heads",
    "model.random_init.intermediate_size",
    "model.random_init.max_position_embeddings",
)
_NON_NEGATIVE_INTS = (
    "seed",  # numpy's generators take no negative seed
    "optimizer.warmup_steps",
    "training.num_epochs",
    "training.eval_every",
    "training.early_stopping_patience",
    "data.max_train_examples",
    "data.max_eval_examples",
    "data.num_shards",
    "data.k_shot",
    "training.max_nonfinite_steps",
    "training.fsdp_min_size",
)
_INTS = ("training.num_train_steps",)  # -1 (or 0): num_epochs decides
_POSITIVE_FLOATS = ("optimizer.eps",)  # 0 divides 0 by 0 in Adam for a parameter whose gradient is always 0
_NON_NEGATIVE_FLOATS = (
    "optimizer.learning_rate",  # 0 keeps the parameters as they start: a warm start's check, an eval
    "optimizer.warmup_ratio",
    "optimizer.weight_decay",
    "optimizer.l2_penalty",
    "optimizer.max_grad_norm",
    "training.early_stopping_min_delta",
)
_UNIT_INTERVAL = (  # [0, 1): decay rates (1 or more never forgets, or grows without bound), dropout rates
    "optimizer.b1",
    "optimizer.b2",
    "optimizer.momentum",
    "optimizer.warmup_ratio",
    "model.classifier_dropout",
    "model.hidden_dropout",
    "model.attention_dropout",
    "model.random_init.hidden_dropout_prob",
    "model.random_init.attention_probs_dropout_prob",
)
_MISSING = object()


def number(key: str, value, *, integer: bool = False):
    """`value` if it is a finite number (an integer when `integer`); else raises `UserError` naming `key`.

    Booleans are refused although Python counts them as integers: `True` is no batch size.
    """
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise UserError(f"config {key}={value!r} must be {'an integer' if integer else 'a number'}")
    if not math.isfinite(value):
        raise UserError(f"config {key}={value} must be a finite number")
    return value


def _lookup(config: ml_collections.ConfigDict, dotted: str):
    try:
        return get(config, dotted)
    except (KeyError, AttributeError):
        return _MISSING


def get(config: ml_collections.ConfigDict, dotted: str):
    """Returns the value at a dotted key such as "training.batch_size"."""
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises `UserError` naming the first key whose value cannot work.

    Also run on a finished run's config.json (prediction, export); a key an older jaxft did not write is
    not checked there.
    """
    for key, choices in _CHOICES.items():
        value = _lookup(config, key)
        if value is not _MISSING and value not in choices:
            raise UserError(f"config {key}={value!r} must be one of {', '.join(choices)}")
    numeric = [
        *((key, True, "positive") for key in _POSITIVE_INTS),
        *((key, True, "non-negative") for key in _NON_NEGATIVE_INTS),
        *((key, True, None) for key in _INTS),
        *((key, False, "positive") for key in _POSITIVE_FLOATS),
        *((key, False, "non-negative") for key in _NON_NEGATIVE_FLOATS),
        *((key, False, "unit") for key in _UNIT_INTERVAL),
    ]
    for key, integer, sign in numeric:
        value = _lookup(config, key)
        if value is _MISSING or (value is None and sign == "unit"):  # an older run's config.json; unset
            continue
        number(key, value, integer=integer)
        if sign == "positive" and value <= 0:
            raise UserError(f"config {key}={value} must be positive")
        if sign == "non-negative" and value < 0:
            raise UserError(f"config {key}={value} must not be negative")
        if sign == "unit" and not 0 <= value < 1:
            raise UserError(f"config {key}={value} must be in [0, 1)")
    if config.training.num_epochs <= 0 and config.training.num_train_steps <= 0:
        raise UserError("config training.num_epochs or training.num_train_steps must be positive")
    if not config.data.train_path:
        raise UserError("config data.train_path is not set (pass --config.data.train_path=FILE)")
    if not config.model.checkpoint and not (config.model.tokenizer or config.model.init_from_workdir):
        raise UserError(
            "config model.checkpoint is not set, and without it model.tokenizer must name a tokenizer"
        )
    layer_decay = _lookup(config, "optimizer.layer_decay")
    if layer_decay is not _MISSING and number("optimizer.layer_decay", layer_decay) <= 0:
        raise UserError(f"config optimizer.layer_decay={layer_decay} must be positive")


def expand_path(path: str | None) -> str | None:
    """Expands `$VARS` and `~` in a path taken from the config; None stays None."""
    if path is None:
        return None
    expanded = os.path.expanduser(os.path.expandvars(path))
    if "$" in expanded:
        raise UserError(f"path {path!r}: environment variable in it is not set")
    return expanded


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as JSON, as written to WORKDIR/config.json."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
