"""Relation classification with MiniLM-L6 on SemEval-2010 Task 8 as distributed: sklearn's report and the
task's official score.

    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.relation --workdir runs/semeval2010
    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.relation \
        --config.task.relation_pooling=cls --workdir runs/semeval2010_cls  # [CLS] pooling, for comparison
    JAXFT_DATA=../shared/data python train.py --config jaxft.configs.relation:tiny \
        --workdir runs/rel_tiny  # smoke

Files (`$JAXFT_DATA/semeval2010_task8/`): the official release's TRAIN_FILE.TXT (8,000) and
TEST_FILE_FULL.TXT (2,717), read as they are (`data.format="semeval2010"`, jaxft/data/semeval2010.py: the
four-line CRLF blocks; <e1> is the head, <e2> the tail, the label the directed one, 19 classes). SemEval has
no dev split: the model after the last epoch is evaluated once on the test file (`data.test_path`), as the
published figures are; to select a checkpoint, hold out part of train as data.eval_path. The report is
sklearn's over the 19 labels plus the official score (`semeval_macro_f1`: macro-F1 over the nine relations,
direction taken into account, Other excluded, as semeval2010_task8_scorer-v1.2.pl computes it; see
`jaxft.evaluate.semeval2010_score`). Published reference (official score): R-BERT (BERT-large) 89.25;
entity-marker BERT-base models about 88-89. Not measured here yet.

Other relation data: JSONL, one object a line with the text, the [start, end) character spans of the head
and tail entities and the label, `{"text": "Ada moved to Lyon.", "head": [0, 3], "tail": [13, 17], "label":
"lives_in"}` (`--config.data.format=jsonl --config.data.train_path=... --config.data.eval_path=...`; keys:
data.text_field, task.head_field, task.tail_field, data.label_field).
Entity markers [E1] [/E1] [E2] [/E2] are added to the tokenizer (four new embedding rows) and the head reads
the hidden states at [E1] and [E2] ("entity start", Baldini Soares et al. 2019; task.relation_pooling).
Recipe (TACRED-style fine-tuning): max_seq_length 128, batch 32, AdamW lr 3e-5 with 10% warm-up, weight
decay 0.01, 5 epochs. `:tiny` is jaxft/configs/tiny.py's random 2-layer model: a pipeline check only.
"""

from jaxft.configs import finetune


def get_config(variant: str = "default"):
    config = finetune.get_config(variant)
    config.task.name = "relation"
    config.task.head_field = "head"  # JSONL only: SemEval's <e1>
    config.task.tail_field = "tail"  # JSONL only: SemEval's <e2>
    config.task.relation_pooling = "markers"
    if variant == "default":
        config.optimizer.learning_rate = 3e-5
        config.training.num_epochs = 5
    config.data.train_path = "$JAXFT_DATA/semeval2010_task8/TRAIN_FILE.TXT"
    config.data.eval_path = None  # SemEval has no dev split
    config.data.test_path = "$JAXFT_DATA/semeval2010_task8/TEST_FILE_FULL.TXT"
    config.data.format = "semeval2010"
    config.data.text_field = "text"  # JSONL only
    config.data.label_field = "label"  # JSONL only
    config.training.best_metric = "auto"  # accuracy; semeval_macro_f1 once a held-out eval split is given
    return config
