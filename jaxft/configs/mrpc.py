"""GLUE MRPC paraphrase detection (sentence pairs) with MiniLM-L6; the report adds F1 of the class "1".

    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.mrpc --workdir runs/mrpc
    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.mrpc:tiny --workdir runs/mrpc_tiny  #
    smoke

Files (`$JAXFT_DATA/mrpc/`): GLUE's TSVs, UTF-8 with a byte-order mark, tab-only, no quoting, header
`Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String`; train 3,668 / dev 408 / the labelled MSR test
1,725. The second sentence gets token type 1. Recipe: max_seq_length 128 (4 length buckets), batch 32,
AdamW lr 5e-5 with 10% warm-up and linear decay, weight decay 0.01, clipping 1.0, 3 epochs (351 steps),
evaluated every epoch; the best checkpoint is picked by "f1" (F1 of class "1", GLUE's MRPC metric) and
evaluated on dev and test at the end. Result (2026-11-29, 2-core CPU shared with a CI run, 1,168 s wall,
`bench/tasks.sh ../shared/data mrpc`): dev accuracy 0.7917, F1 0.8600; test accuracy 0.7675, F1 0.8359.
`:tiny` is the same data on jaxft/configs/tiny.py's random 2-layer model: a pipeline check, not a result.
"""

from jaxft.configs import finetune


def get_config(variant: str = "default"):
    config = finetune.get_config(variant)
    if variant == "default":
        config.training.log_every = 20
    config.data.train_path = "$JAXFT_DATA/mrpc/train.tsv"
    config.data.eval_path = "$JAXFT_DATA/mrpc/dev.tsv"
    config.data.test_path = "$JAXFT_DATA/mrpc/msr_paraphrase_test.txt"
    config.data.format = "tsv"
    config.data.text_field = "#1 String"
    config.data.text_pair_field = "#2 String"
    config.data.label_field = "Quality"
    config.data.positive_label = "1"
    config.training.best_metric = "f1"
    return config
