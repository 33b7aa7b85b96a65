"""What the strategies need beyond the config's own rules (those are `jaxft.config.check`'s): room for
prompt tuning's virtual tokens in the encoder's position table, and the strategy arguments of the step.
"""

import ml_collections

from jaxft.errors import UserError
from jaxft.strategies import adversarial, peft


def check_positions(config: ml_collections.ConfigDict, max_position_embeddings: int) -> None:
    """Prompt tuning lengthens every input by its virtual tokens; the position table must cover that."""
    extra = peft.from_config(config).extra_positions
    if extra and config.data.max_seq_length + extra > max_position_embeddings:
        raise UserError(
            f"config data.max_seq_length={config.data.max_seq_length} + peft.num_virtual_tokens={extra} "
            f"exceeds the model's max_position_embeddings={max_position_embeddings}"
        )


def step_options(config: ml_collections.ConfigDict) -> dict:
    """The strategy arguments of `jaxft.training.steps.train_step` for this config."""
    return {
        "peft": peft.from_config(config),
        "adversarial": adversarial.from_config(config),
        "rdrop_alpha": float(config.regularization.rdrop_alpha),
    }
