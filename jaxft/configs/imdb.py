"""IMDB movie reviews (the seed's own benchmark): classify the review, not its tokens.

GPU recipe (the default here; run where a GPU is available): full 25,000 train / 25,000 test at 512 tokens.

    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.imdb --workdir runs/imdb

CPU recipe (what README reports): a fixed, reproducible 5,000 / 5,000 subset at 256 tokens, 1 epoch.

    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.imdb:cpu --workdir runs/imdb_cpu

Measured (2026-11-29, 2-core CPU shared with other jobs, `bench/accuracy.sh ../shared/data imdb-cpu`, 93 min
wall): CPU recipe test-subset accuracy 0.8610, macro-F1 0.8610 (bench/README.md has the report). The GPU
recipe has not been run.

Long reviews (data.long_inputs; docs/long-inputs.md), on a 2,000 / 1,000 subset that fits a 2-core CPU, two
epochs each, the same subset for all three:

    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.imdb:cpu_truncate --workdir runs/t
    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.imdb:cpu_windows --workdir runs/w
    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.imdb:cpu_head_tail --workdir runs/h

cpu_truncate reads the first 254 tokens of a review (max_seq_length 256); cpu_windows up to about 1,000:
windows of 256 sharing 64 tokens, at most 5 (254 + 4 x 190 = 1,014 tokens), averaged per review;
cpu_head_tail its first 127 and last 383 tokens at 512 (Sun et al. 2019). Measured (2026-12-07, 2-core CPU,
seed 0, `bench/accuracy.sh ../shared/data imdb-long`): test-subset accuracy 0.847 truncated, 0.881 in
windows, 0.863 head + tail (bench/README.md).

Files are gzipped JSON lines (`text` with raw `<br />` tags, `label` 0/1), grouped by class in the file: the
subsets are random (seeded by `seed`), and training batches are shuffled every epoch.
"""

from jaxft.configs import common, default

VARIANTS = ("gpu", "cpu", "cpu_truncate", "cpu_windows", "cpu_head_tail")


def get_config(variant: str = "gpu"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} ({', '.join(VARIANTS)})")
    config = default.get_config()
    config.model.checkpoint = common.minilm_checkpoint()
    config.data.train_path = "$JAXFT_DATA/imdb/train.jsonl.gz"
    config.data.eval_path = "$JAXFT_DATA/imdb/test.jsonl.gz"
    config.data.text_field = "text"
    config.data.label_field = "label"
    config.optimizer.learning_rate = 5e-5
    config.optimizer.warmup_ratio = 0.06
    config.training.log_every = 50
    config.training.checkpoint_every = 1000
    if variant == "cpu":
        config.data.max_train_examples = 5000
        config.data.max_eval_examples = 5000
        config.data.max_seq_length = 256
        config.training.batch_size = 32
        config.training.num_epochs = 1
        config.training.eval_batch_size = 128
    elif variant.startswith("cpu_"):  # long reviews: three ways to read them, on one subset
        config.data.max_train_examples = 2000
        config.data.max_eval_examples = 1000
        config.data.max_seq_length = 256
        config.training.batch_size = 32
        config.training.num_epochs = 2
        config.training.eval_batch_size = 128
        if variant == "cpu_windows":
            config.data.long_inputs = "windows"
            config.data.window_stride = 64
            config.data.max_windows = 5
        elif variant == "cpu_head_tail":
            config.data.long_inputs = "head_tail"  # data.head_tokens -1: 127 head + 383 tail tokens
            config.data.max_seq_length = 512
    else:
        config.data.max_seq_length = 512
        config.model.dtype = "bfloat16"
        config.training.batch_size = 32
        config.training.num_epochs = 2
        config.training.eval_batch_size = 256
    return config
