"""GLUE STS-B sentence similarity as regression (one float, MSE loss) with MiniLM-L6: Pearson / Spearman.

    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.stsb --workdir runs/stsb
    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.stsb:tiny --workdir runs/stsb_tiny #
    smoke

Files (`$JAXFT_DATA/stsb/{train,dev}.tsv`): GLUE's, read by the plain TSV reader as they are (header `index
genre filename year old_index source1 source2 sentence1 sentence2 score`, tab-only: quotes are ordinary
characters, as GLUE reads them, and 191 sentences start with one; scores 0-5; train 5,749 / dev 1,500).
Recipe: max_seq_length 128, batch 32, AdamW lr 5e-5 with 10% warm-up, weight decay 0.01, 3 epochs, evaluated
every epoch; the best checkpoint is picked by Pearson (training.best_metric=auto). The report is SciPy's
Pearson and Spearman correlation and scikit-learn's MSE. Published reference (BERT-base, dev Pearson /
Spearman): about 0.89 / 0.88. Not measured here yet.
"""

from jaxft.configs import finetune


def get_config(variant: str = "default"):
    config = finetune.get_config(variant)
    config.task.name = "regression"
    if variant == "default":
        config.training.log_every = 20
    config.data.train_path = "$JAXFT_DATA/stsb/train.tsv"
    config.data.eval_path = "$JAXFT_DATA/stsb/dev.tsv"
    config.data.format = "tsv"
    config.data.text_field = "sentence1"
    config.data.text_pair_field = "sentence2"
    config.data.label_field = "score"
    config.training.best_metric = "auto"  # pearson
    return config
