"""GLUE SST-2 sentiment with MiniLM-L6 (issue 3's CPU recipe): full train split, 1 epoch, dev report.

    JAXFT_DATA=../shared/data python train.py --config configs/sst2.py --workdir runs/sst2

The files are GLUE's TSVs (`sentence<TAB>label`, header). `$JAXFT_DATA` (or --config.data.train_path=...)
points at the directory holding `sst2/`. Recipe: max_seq_length 64 with 4 length buckets, batch 32, AdamW
lr 5e-5, warm-up 6%, weight decay 0.01, clipping 1.0, seed 0.

Result (2026-11-28, 2-core CPU, `bench/accuracy.sh ../shared/data sst2`): dev accuracy 0.8979, macro-F1
0.8979, 29.5 min wall with other jobs sharing the cores; the PyTorch reference with the same recipe
(`bench/accuracy.sh ../shared/data sst2-torch`) 0.8888 / 0.8886. README "Results" has the details.
"""

from configs import common, default


def get_config():
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
    return config
