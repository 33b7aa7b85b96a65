"""The base every task config starts from, by variant.

- "default": jaxft/configs/default.py with the offline MiniLM-L6 checkpoint (`common.minilm_checkpoint`) and
the
  BERT paper's GLUE fine-tuning recipe: max_seq_length 128, batch 32, AdamW lr 5e-5 with 10% linear warm-up,
  3 epochs, evaluated at the end of every epoch; logs every 50 steps, full checkpoints every 1000.
  A task config changes only what its task needs on top.
- "tiny": jaxft/configs/tiny.py's random 2-layer model, a pipeline check for tests and smoke runs.
"""

from jaxft.configs import common, default, tiny

VARIANTS = ("default", "tiny")


def get_config(variant: str = "default"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} ({', '.join(VARIANTS)})")
    if variant == "tiny":
        return tiny.get_config()
    config = default.get_config()
    config.model.checkpoint = common.minilm_checkpoint()
    config.data.max_seq_length = 128
    config.optimizer.learning_rate = 5e-5
    config.optimizer.warmup_ratio = 0.1
    config.training.batch_size = 32
    config.training.num_epochs = 3
    config.training.eval_every = 0  # every epoch
    config.training.log_every = 50
    config.training.checkpoint_every = 1000
    config.training.eval_batch_size = 128
    return config
