"""Masked-LM pre-training of MiniLM-L6 continued on a task's texts, then fine-tuning (docs/pretraining.md).

Variants:

- `imdb` (the default): task-adaptive pre-training (TAPT, Gururangan et al. 2020) on the texts of the 5,000
  IMDB training reviews that the CPU classification recipe trains on (`jaxft.configs.imdb:cpu` draws the same
  subset: same file, size and seed), packed into 6,191 rows of 256 tokens (195 steps an epoch); the
  held-out text is 500 reviews of the test split. Their labels are not read. Batch 32, AdamW lr 1e-4 with 6%
  warm-up, 2 epochs, evaluated after each (masked-token accuracy, loss, perplexity on one fixed mask); the
  best checkpoint by loss is kept.
- `sst2`: the same on SST-2's 67,349 training sentences (packed into 6,585 rows of 128 tokens: 206 steps an
  epoch), held-out text the 872 dev sentences; 3 epochs. The start of pet on SST-2
  (`jaxft.configs.pet:sst2`): MiniLM has no masked-LM head, so pet needs one trained here first.
- `tiny`: jaxft/configs/tiny.py's random 2-layer model on the shipped demo texts: a pipeline check.

    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.mlm:imdb --workdir runs/tapt_imdb
    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.imdb:cpu --workdir runs/imdb_cpu_tapt \
        --config.model.init_from_workdir=runs/tapt_imdb

    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.mlm:sst2 --workdir runs/mlm_sst2
    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.pet:sst2 --workdir runs/pet_sst2_s0 \
        --config.model.init_from_workdir=runs/mlm_sst2 --config.seed=0

MiniLM (all-MiniLM-L6-v2) ships without a masked-LM head: the run creates one (BERT's initialisation, the
decoder tied to the word embeddings) and logs it as newly initialised. `sst2` measured on 2026-12-06
(docs/pretraining.md): held-out masked-token accuracy 0.2834, perplexity 127.2 after 3 epochs; pet k=16 from
it 0.5872 ± 0.0646 over 3 seeds. `imdb` measured on 2026-12-07: held-out masked-token accuracy 0.2986,
perplexity 92.3 after 2 epochs; the IMDB CPU recipe from it 0.8606 test-subset accuracy against 0.8592
straight from MiniLM (+0.0014, 95% paired bootstrap interval [-0.0052, +0.0080]).
"""

from jaxft.configs import common, default, tiny

VARIANTS = ("imdb", "sst2", "tiny")


def get_config(variant: str = "imdb"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} ({', '.join(VARIANTS)})")
    config = tiny.get_config() if variant == "tiny" else default.get_config()
    config.task.name = "mlm"
    config.task.mlm_probability = 0.15
    config.task.mlm_packing = True
    config.training.best_metric = "loss"
    if variant == "tiny":
        return config
    config.model.checkpoint = common.minilm_checkpoint()
    config.optimizer.learning_rate = 1e-4
    config.optimizer.warmup_ratio = 0.06
    config.optimizer.weight_decay = 0.01
    config.training.batch_size = 32
    config.training.eval_every = 0  # after every epoch
    config.training.eval_batch_size = 128
    config.training.log_every = 20
    config.training.checkpoint_every = 200
    if variant == "imdb":
        config.data.train_path = "$JAXFT_DATA/imdb/train.jsonl.gz"
        config.data.eval_path = "$JAXFT_DATA/imdb/test.jsonl.gz"
        config.data.text_field = "text"
        config.data.max_train_examples = 5000  # jaxft.configs.imdb:cpu's subset (same size and seed)
        config.data.max_eval_examples = 500
        config.data.max_seq_length = 256
        config.training.num_epochs = 2
    else:
        config.data.train_path = "$JAXFT_DATA/sst2/train.tsv"
        config.data.eval_path = "$JAXFT_DATA/sst2/dev.tsv"
        config.data.format = "tsv"
        config.data.text_field = "sentence"
        config.data.max_seq_length = 128
        config.training.num_epochs = 3
    return config
