"""Checks on a resolved config, so that a wrong value fails before anything is read or written.

Configs are `ml_collections.ConfigDict`s built by `configs/*.py`. Unknown keys are already refused by the
locked ConfigDict; this module checks values and the combinations that only make sense together, and raises
`UserError` with the key's full name.
"""

import json
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
_POSITIVE = (
    "data.max_seq_length",
    "data.num_buckets",
    "training.batch_size",
    "training.grad_accum_steps",
    "training.eval_batch_size",
    "training.log_every",
    "training.checkpoint_every",
    "training.keep_checkpoints",
)
_NON_NEGATIVE = (
    "optimizer.learning_rate",
    "optimizer.warmup_steps",
    "optimizer.warmup_ratio",
    "optimizer.weight_decay",
    "optimizer.l2_penalty",
    "optimizer.max_grad_norm",
    "optimizer.eps",
    "training.eval_every",
    "training.early_stopping_patience",
    "training.early_stopping_min_delta",
    "data.max_train_examples",
    "data.max_eval_examples",
    "training.max_nonfinite_steps",
    "training.fsdp_min_size",
)


def get(config: ml_collections.ConfigDict, dotted: str):
    """Returns the value at a dotted key such as "training.batch_size"."""
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises `UserError` naming the first key whose value cannot work."""
    for key, choices in _CHOICES.items():
        if get(config, key) not in choices:
            raise UserError(f"config {key}={get(config, key)!r} must be one of {', '.join(choices)}")
    for key in _POSITIVE:
        if get(config, key) <= 0:
            raise UserError(f"config {key}={get(config, key)} must be positive")
    for key in _NON_NEGATIVE:
        if get(config, key) < 0:
            raise UserError(f"config {key}={get(config, key)} must not be negative")
    if config.optimizer.warmup_ratio >= 1:
        raise UserError(f"config optimizer.warmup_ratio={config.optimizer.warmup_ratio} must be below 1")
    if config.training.num_epochs <= 0 and config.training.num_train_steps <= 0:
        raise UserError("config training.num_epochs or training.num_train_steps must be positive")
    if not config.data.train_path:
        raise UserError("config data.train_path is not set (pass --config.data.train_path=FILE)")
    if not config.model.checkpoint and not (config.model.tokenizer or config.model.init_from_workdir):
        raise UserError(
            "config model.checkpoint is not set, and without it model.tokenizer must name a tokenizer"
        )
    for key in ("b1", "b2", "momentum"):  # decay rates: 1 or more never forgets, or grows without bound
        if not 0 <= config.optimizer[key] < 1:
            raise UserError(f"config optimizer.{key}={config.optimizer[key]} must be in [0, 1)")
    if config.optimizer.layer_decay <= 0:
        raise UserError(f"config optimizer.layer_decay={config.optimizer.layer_decay} must be positive")
    for dropout in ("classifier_dropout", "hidden_dropout", "attention_dropout"):
        value = config.model[dropout]
        if value is not None and not 0 <= value < 1:
            raise UserError(f"config model.{dropout}={value} must be in [0, 1)")


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
