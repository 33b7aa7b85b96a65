"""Multi-label classification (sigmoid + binary cross-entropy) with MiniLM-L6, e.g. GoEmotions' 28 emotions.

    JAXFT_DATA=DIR python train.py --config configs/multilabel.py --workdir runs/goemotions
    JAXFT_DATA=DIR python train.py --config configs/multilabel.py:tiny --workdir runs/ml_tiny  # smoke

Not among the project's shared data: `$JAXFT_DATA/goemotions/{train,dev,test}.tsv` are GoEmotions'
"simplified" files (no header; columns: text, comma-separated label ids, comment id; 43,410 / 5,426 /
5,427). Other data: a JSONL file with a list per example (`--config.data.format=jsonl
--config.data.text_field=text --config.data.label_field=labels`), or a CSV/TSV column of labels joined by
`task.label_separator`. A label is predicted when its probability exceeds `task.threshold` (0.5). Recipe:
max_seq_length 128, batch 32, AdamW lr 5e-5 with 10% warm-up, 3 epochs; best checkpoint by micro-F1. The
report is scikit-learn's multi-label classification report. Not measured here (no data).
"""

from configs import finetune


def get_config(variant: str = "default"):
    config = finetune.get_config(variant)
    config.task.name = "multilabel"
    config.task.threshold = 0.5
    config.task.label_separator = ","
    config.data.train_path = "$JAXFT_DATA/goemotions/train.tsv"
    config.data.eval_path = "$JAXFT_DATA/goemotions/dev.tsv"
    config.data.test_path = "$JAXFT_DATA/goemotions/test.tsv"
    config.data.format = "tsv"
    config.data.has_header = False
    config.data.text_field = "0"
    config.data.label_field = "1"
    config.training.best_metric = "auto"  # micro_f1
    return config
