"""Checks on the strategy sections of a config, run by `jaxft.train.prepare` before anything is read.

Each strategy module checks its own keys (`peft.from_config`, `adversarial.from_config`); this module checks
the combinations: which tasks a strategy applies to, and what prompt tuning needs from the encoder.
"""

import ml_collections

from jaxft.config import number
from jaxft.errors import UserError
from jaxft.strategies import adversarial, peft

# Tasks whose logits are one [B, classes] row per example of mutually exclusive classes.
SOFTMAX_TASKS = ("classification", "pet", "relation")


# Numeric strategy keys: (section, key, integer). Checked for type and finiteness here, before the
# strategy modules compare them (NaN passes every comparison they make).
_NUMBERS = (
    ("peft", "lora_rank", True),
    ("peft", "lora_alpha", False),
    ("peft", "lora_dropout", False),
    ("peft", "adapter_size", True),
    ("peft", "num_virtual_tokens", True),
    ("adversarial", "epsilon", False),
    ("adversarial", "step_size", False),
    ("adversarial", "steps", True),
    ("regularization", "label_smoothing", False),
    ("regularization", "rdrop_alpha", False),
    ("augment", "eda_alpha", False),
    ("augment", "num_augmented", True),
    ("optimizer", "layer_decay", False),
)


def validate(config: ml_collections.ConfigDict, task_name: str) -> None:
    """Raises `UserError` naming the first strategy key that cannot work with this config."""
    for section, key, integer in _NUMBERS:
        if key in (config.get(section) or {}):
            number(f"{section}.{key}", config[section][key], integer=integer)
    peft.from_config(config)
    adversarial.from_config(config)
    if config.get("peft") is not None and config.peft.get("lora_alpha", 1) <= 0:
        raise UserError(f"config peft.lora_alpha={config.peft.lora_alpha} must be positive")
    regularization = config.get("regularization")
    if regularization is not None:
        smoothing, rdrop = regularization.label_smoothing, regularization.rdrop_alpha
        if not 0 <= smoothing < 1:
            raise UserError(f"config regularization.label_smoothing={smoothing} must be in [0, 1)")
        if rdrop < 0:
            raise UserError(f"config regularization.rdrop_alpha={rdrop} must not be negative")
        for key, value in (("label_smoothing", smoothing), ("rdrop_alpha", rdrop)):
            if value and task_name not in SOFTMAX_TASKS:
                raise UserError(
                    f"config regularization.{key} applies to task.name in {', '.join(SOFTMAX_TASKS)}, "
                    f"not {task_name!r}"
                )
    decay = config.optimizer.get("layer_decay", 1.0)
    if not 0 < decay <= 1:
        raise UserError(f"config optimizer.layer_decay={decay} must be in (0, 1]")


def check_positions(config: ml_collections.ConfigDict, max_position_embeddings: int) -> None:
    """Prompt tuning lengthens every input by its virtual tokens; the position table must cover that."""
    extra = peft.from_config(config).extra_positions
    if extra and config.data.max_seq_length + extra > max_position_embeddings:
        raise UserError(
            f"config data.max_seq_length={config.data.max_seq_length} + peft.num_virtual_tokens={extra} "
            f"exceeds the model's max_position_embeddings={max_position_embeddings}"
        )


def step_options(config: ml_collections.ConfigDict) -> dict:
    """The strategy arguments of `jaxft.steps.train_step` for this config."""
    regularization = config.get("regularization")
    return {
        "peft": peft.from_config(config),
        "adversarial": adversarial.from_config(config),
        "rdrop_alpha": float(regularization.rdrop_alpha) if regularization is not None else 0.0,
    }
