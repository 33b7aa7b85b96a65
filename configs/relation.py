"""Relation extraction (a label per entity pair marked in a text) with MiniLM-L6: sklearn report.

    python train.py --config configs/relation.py --workdir runs/relation \
        --config.data.train_path=train.jsonl --config.data.eval_path=dev.jsonl
    python train.py --config configs/relation.py:tiny --workdir runs/relation_tiny \
        --config.data.train_path=train.jsonl --config.data.eval_path=dev.jsonl  # smoke

No relation data set is at hand (none among the project's shared data), so the paths come from the command
line and no result is recorded here. Each JSONL line holds the text, the [start, end) character spans of the
head and tail entities and the label: `{"text": "Ada moved to Lyon.", "head": [0, 3], "tail": [13, 17],
"label": "lives_in"}` (keys: data.text_field, task.head_field, task.tail_field, data.label_field).
Entity markers [E1] [/E1] [E2] [/E2] are added to the tokenizer (four new embedding rows) and the head reads
the hidden states at [E1] and [E2] ("entity start", Baldini Soares et al. 2019; task.relation_pooling).
Recipe (TACRED-style fine-tuning): max_seq_length 128, batch 32, AdamW lr 3e-5 with 10% warm-up, weight
decay 0.01, 5 epochs, evaluated every epoch, best checkpoint by accuracy (data.positive_label adds one
relation's F1). `:tiny` is configs/tiny.py's random 2-layer model: a pipeline check only.
"""

from configs import finetune


def get_config(variant: str = "default"):
    config = finetune.get_config(variant)
    config.task.name = "relation"
    config.task.head_field = "head"
    config.task.tail_field = "tail"
    config.task.relation_pooling = "markers"
    if variant == "default":
        config.optimizer.learning_rate = 3e-5
        config.training.num_epochs = 5
    config.data.train_path = None  # --config.data.train_path=train.jsonl
    config.data.eval_path = None  # --config.data.eval_path=dev.jsonl
    config.data.format = "jsonl"
    config.data.text_field = "text"
    config.data.label_field = "label"
    config.training.best_metric = "auto"  # accuracy
    return config
