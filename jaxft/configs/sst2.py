"""GLUE SST-2 sentiment with MiniLM-L6 (the CPU accuracy recipe): full train split, 1 epoch, dev report.

    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.sst2 --workdir runs/sst2

The files are GLUE's TSVs (`sentence<TAB>label`, header). `$JAXFT_DATA` (or --config.data.train_path=...)
points at the directory holding `sst2/`. Recipe: max_seq_length 64 with 4 length buckets, batch 32, AdamW
lr 5e-5, warm-up 6%, weight decay 0.01, clipping 1.0, seed 0.

Result (2026-11-28, 2-core CPU, `bench/accuracy.sh ../shared/data sst2`): dev accuracy 0.8979, macro-F1
0.8979, 29.5 min wall with other jobs sharing the cores; the PyTorch reference with the same recipe
(`bench/accuracy.sh ../shared/data sst2-torch`) 0.8888 / 0.8886. Latest run
(2026-11-30 04:34 UTC, 2-core CPU, Intel Xeon with AMX, same command): 0.9071 / 0.9070; details and every run
in bench/README.md.

`jaxft/configs/sst2.py:gpu` is the GPU end-to-end timing (bench/gpu.sh), not an accuracy recipe: a randomly
initialised BERT-base-sized encoder (12 layers, hidden 768; no checkpoint download), bfloat16 compute,
attention dropout 0 (cuDNN's fused attention has none, so with it training would take the explicit path),
3 epochs of batch 32 at 64 tokens in 2 length buckets (32/64: fewer compilations), evaluated after every
epoch. Its tokenizer defaults to the repo's jaxft/configs/tiny_tokenizer (555 tokens: most SST-2 words become
[UNK]); gpu.sh passes a 30,522-token WordPiece vocabulary it builds from the train split instead. Not run on
a GPU yet.
"""

from jaxft.configs import common, default


def get_config(variant: str = "default"):
    if variant not in ("default", "gpu"):
        raise ValueError(f"unknown variant {variant!r} (default, gpu)")
    config = default.get_config()
    config.model.checkpoint = common.minilm_checkpoint()
    config.data.train_path = "$JAXFT_DATA/sst2/train.tsv"
    config.data.eval_path = "$JAXFT_DATA/sst2/dev.tsv"
    config.data.format = "tsv"
    config.data.text_field = "sentence"
    config.data.label_field = "label"
    config.data.max_seq_length = 64
    config.optimizer.learning_rate = 5e-5
    config.optimizer.warmup_ratio = 0.06
    config.optimizer.weight_decay = 0.01
    config.optimizer.max_grad_norm = 1.0
    config.training.batch_size = 32
    config.training.num_epochs = 1
    config.training.eval_every = 500
    config.training.log_every = 100
    config.training.checkpoint_every = 1000
    config.training.eval_batch_size = 128
    if variant == "gpu":
        # Random init: model.random_init's BERT-base sizes (jaxft/configs/default.py); nothing is downloaded.
        config.model.checkpoint = None
        config.model.tokenizer = common.shipped("tiny_tokenizer")
        config.model.dtype = "bfloat16"
        config.model.attention_dropout = 0.0  # so training runs through the fused cuDNN attention
        config.data.num_buckets = 2
        config.training.num_epochs = 3
        config.training.eval_every = 0  # after every epoch
        config.training.eval_batch_size = 256
        config.training.checkpoint_every = 100_000  # only the final save
        config.training.progress_bar = False
    return config
