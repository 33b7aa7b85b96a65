"""A tiny random BERT on the shipped demo data: for tests and CPU smoke runs. Needs no external file.

    python train.py --config jaxft.configs.tiny --workdir runs/tiny

Two layers of width 32 with a 555-token vocabulary (jaxft/configs/tiny_tokenizer, built from the demo data's
most frequent words): a few seconds on one CPU core. Not meant to learn much.
"""

from jaxft.configs import common, default


def get_config():
    config = default.get_config()
    config.model.tokenizer = common.shipped("tiny_tokenizer")
    config.model.random_init.hidden_size = 32
    config.model.random_init.num_hidden_layers = 2
    config.model.random_init.num_attention_heads = 4
    config.model.random_init.intermediate_size = 64
    config.model.random_init.max_position_embeddings = 64
    config.data.train_path = common.shipped("demo_sentiment/train.jsonl")
    config.data.eval_path = common.shipped("demo_sentiment/dev.jsonl")
    config.data.max_seq_length = 32
    config.data.num_buckets = 2
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 2
    config.training.batch_size = 16
    config.training.num_train_steps = 12
    config.training.eval_every = 6
    config.training.log_every = 2
    config.training.checkpoint_every = 4
    config.training.eval_batch_size = 64
    config.training.progress_bar = False
    return config
