"""Prompt-based sentiment classification through the masked-LM head (PET / LM-BFF) on the demo data.

    python train.py --config jaxft.configs.pet --workdir runs/pet \
        --config.model.checkpoint=PATH_TO_BERT_WITH_MLM_HEAD
    python train.py --config jaxft.configs.pet:tiny --workdir runs/pet_tiny  # smoke: random tiny model

Each text is written into `task.template` ("{text} It was [MASK].") and the label is read from the
masked-LM logits of its verbaliser word at the [MASK]: "terrible" for negative, "great" for positive (the
labels sort as negative, positive; `task.verbalizer` follows that order). This needs a checkpoint WITH
masked-LM weights (`cls.predictions.*`: a `BertForMaskedLM` or `BertForPreTraining` save, such as
google-bert/bert-base-uncased, given as a directory or a hub id already in the local cache); the default is
that hub id. The offline all-MiniLM-L6-v2 that `make demo` installs is a sentence-embedding model without
them, and is refused ("model.checkpoint has no masked-LM head"). Recipe after LM-BFF (Gao et al. 2021):
AdamW lr 1e-5, batch 8, no warm-up, 1000 steps, evaluated every 100; add `--config.data.k_shot=16` for
their 16-examples-per-class setting. Not measured here (no such checkpoint offline).
`:tiny` is jaxft/configs/tiny.py's random 2-layer model with verbaliser "bad" / "good": a pipeline check only.

`:sst2` is LM-BFF's 16-shot SST-2 setting on MiniLM-L6 (16 training sentences per class drawn by `seed`, the
whole dev split evaluated; same recipe as above, max_seq_length 64). MiniLM has no masked-LM head, so this
variant needs `--config.model.init_from_workdir` of a masked-LM run on the same checkpoint
(`jaxft.configs.mlm:sst2`), whose encoder and head it starts from (docs/pretraining.md):

    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.pet:sst2 --workdir runs/pet_sst2_s0 \
        --config.model.init_from_workdir=runs/mlm_sst2 --config.seed=0
"""

from jaxft.configs import common, finetune


def get_config(variant: str = "default"):
    config = finetune.get_config("default" if variant == "sst2" else variant)
    config.task.name = "pet"
    config.task.template = "{text} It was [MASK]."
    config.task.verbalizer = ("bad", "good") if variant == "tiny" else ("terrible", "great")
    if variant in ("default", "sst2"):  # LM-BFF's recipe
        config.optimizer.learning_rate = 1e-5
        config.optimizer.warmup_ratio = 0.0
        config.training.batch_size = 8
        config.training.num_train_steps = 1000
        config.training.eval_every = 100
        config.training.log_every = 20
    if variant == "default":
        config.model.checkpoint = "google-bert/bert-base-uncased"
        config.data.train_path = common.shipped("demo_sentiment/train.jsonl")
        config.data.eval_path = common.shipped("demo_sentiment/dev.jsonl")
    elif variant == "sst2":
        config.data.train_path = "$JAXFT_DATA/sst2/train.tsv"
        config.data.eval_path = "$JAXFT_DATA/sst2/dev.tsv"
        config.data.format = "tsv"
        config.data.text_field = "sentence"
        config.data.label_field = "label"  # "0" negative, "1" positive: the verbaliser's order
        config.data.k_shot = 16
        config.data.max_seq_length = 64
    return config
