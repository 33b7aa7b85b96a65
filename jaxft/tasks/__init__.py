"""Tasks: one module per task, chosen by `config.task.name`, on the same encoder, steps and loop.

    classification  one label per text (pair): softmax cross-entropy, sklearn report
    regression      one float per text (pair): MSE, Pearson / Spearman (SciPy), MSE
    multilabel      a label subset per text: sigmoid + BCE, sklearn multi-label report
    ner             a tag per word (CoNLL files): token cross-entropy, seqeval entity F1
    qa              an answer span per question (SQuAD v1.1): start/end cross-entropy, official EM / F1
    pet             one label per text (pair), read by the masked-LM head at a template's [MASK] as one
                    verbaliser word per label (PET / LM-BFF): softmax cross-entropy, sklearn report
    relation        a relation label per entity pair marked in a text ([E1] [E2] markers): softmax
                    cross-entropy, sklearn report

`from_config` builds the task object the steps take as a static argument; `validate` checks the task keys
of a config before anything is read.
"""

import ml_collections

from jaxft.config import number
from jaxft.errors import UserError
from jaxft.tasks.base import IGNORE, PER_EXAMPLE, Task, TaskReport
from jaxft.tasks.classification import Classification
from jaxft.tasks.multilabel import MultiLabel
from jaxft.tasks.ner import Ner
from jaxft.tasks.pet import Pet, check_template
from jaxft.tasks.qa import QuestionAnswering
from jaxft.tasks.regression import Regression
from jaxft.tasks.relation import Relation

__all__ = ["IGNORE", "PER_EXAMPLE", "Task", "TaskReport", "best_metric", "from_config", "validate"]

NAMES = ("classification", "regression", "multilabel", "ner", "qa", "pet", "relation")
# The task section of configs written before tasks existed (an old workdir's config.json): classification.
DEFAULTS = {
    "name": "classification",
    "threshold": 0.5,
    "label_separator": ",",
    "subword_labels": "first",
    "tag_scheme": "iob2",
    "tag_column": -1,
    "doc_stride": 128,
    "max_query_length": 64,
    "max_answer_length": 30,
    "n_best": 20,
    "template": "{text} It was [MASK].",
    "verbalizer": None,
    "head_field": "head",
    "tail_field": "tail",
    "relation_pooling": "markers",
}
_CHOICES = {
    "name": NAMES,
    "subword_labels": ("first", "all"),
    "tag_scheme": ("iob1", "iob2"),
    "relation_pooling": ("markers", "cls"),
}

_NUMBERS = {  # key: whether it is an integer
    "threshold": False,
    "tag_column": True,
    "doc_stride": True,
    "max_query_length": True,
    "max_answer_length": True,
    "n_best": True,
}


def _section(config: ml_collections.ConfigDict) -> dict:
    given = config.get("task") or {}
    return {**DEFAULTS, **(given.to_dict() if hasattr(given, "to_dict") else dict(given))}


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises `UserError` naming the first task key (or task-dependent data key) that cannot work."""
    task = _section(config)
    for key, choices in _CHOICES.items():
        if task[key] not in choices:
            raise UserError(f"config task.{key}={task[key]!r} must be one of {', '.join(choices)}")
    for key, integer in _NUMBERS.items():  # a JSON config.json can hold any type, NaN too
        number(f"task.{key}", task[key], integer=integer)
    if not 0 < task["threshold"] < 1:
        raise UserError(f"config task.threshold={task['threshold']} must be in (0, 1)")
    if not isinstance(task["label_separator"], str) or not task["label_separator"]:
        raise UserError("config task.label_separator must not be empty")
    name, data = task["name"], config.data
    if name not in ("classification", "pet", "relation") and data.positive_label is not None:
        raise UserError(f"config data.positive_label applies to task.name='classification', not {name!r}")
    if name == "regression" and data.labels is not None:
        raise UserError("config data.labels does not apply to task.name='regression' (one float target)")
    if name == "ner" and data.text_pair_field is not None:
        raise UserError(
            "config data.text_pair_field does not apply to task.name='ner' (one sentence of words)"
        )
    if name == "pet":
        if not task["verbalizer"]:
            raise UserError("config task.verbalizer must give one word per label for task.name='pet'")
        check_template(task["template"], data.text_pair_field is not None)
    if name == "relation" and data.text_pair_field is not None:
        raise UserError("config data.text_pair_field does not apply to task.name='relation' (one text)")
    if name == "relation" and task["head_field"] == task["tail_field"]:
        raise UserError(f"config task.head_field and task.tail_field are both {task['head_field']!r}")
    for key in ("max_query_length", "max_answer_length", "n_best"):
        if task[key] < 1:
            raise UserError(f"config task.{key}={task[key]} must be positive")
    room = data.max_seq_length - task["max_query_length"] - 3  # context tokens a window is sure to hold
    if name == "qa" and not 0 <= task["doc_stride"] < room:
        raise UserError(
            f"config task.doc_stride={task['doc_stride']} must be in [0, {room}): windows of "
            f"data.max_seq_length={data.max_seq_length} hold at least {room} context tokens after a question "
            f"of task.max_query_length={task['max_query_length']} and [CLS] [SEP] [SEP]"
        )


def from_config(config: ml_collections.ConfigDict) -> Task:
    """The task object of `config` (a config without a task section is classification)."""
    task = _section(config)
    name = task["name"]
    regularization = config.get("regularization")
    smoothing = float(regularization.label_smoothing) if regularization is not None else 0.0
    if name == "classification":
        return Classification(label_smoothing=smoothing)
    if name == "regression":
        return Regression()
    if name == "multilabel":
        return MultiLabel(threshold=float(task["threshold"]), separator=str(task["label_separator"]))
    if name == "ner":
        return Ner(
            subword_labels=task["subword_labels"],
            tag_scheme=task["tag_scheme"],
            tag_column=int(task["tag_column"]),
            max_seq_length=int(config.data.max_seq_length),
        )
    if name == "qa":
        return QuestionAnswering(
            doc_stride=int(task["doc_stride"]),
            max_query_length=int(task["max_query_length"]),
            max_answer_length=int(task["max_answer_length"]),
            n_best=int(task["n_best"]),
            max_seq_length=int(config.data.max_seq_length),
        )
    if name == "pet":
        return Pet(
            template=str(task["template"]),
            verbalizer=tuple(task["verbalizer"] or ()),
            label_smoothing=smoothing,
        )
    if name == "relation":
        return Relation(
            head_field=str(task["head_field"]),
            tail_field=str(task["tail_field"]),
            pooling=str(task["relation_pooling"]),
            label_smoothing=smoothing,
        )
    raise UserError(f"config task.name={name!r} must be one of {', '.join(NAMES)}")


def best_metric(config: ml_collections.ConfigDict, task: Task) -> str:
    """`training.best_metric`, "auto" resolved to the task's own (accuracy, pearson, micro_f1, f1, f1).

    Raises `UserError` when the task's evaluation does not report it: checked before training, not at the
    first evaluation.
    """
    chosen = config.training.best_metric
    if chosen == "auto":
        return task.default_metric
    names = task.metric_names(config.data)
    if chosen not in names:
        raise UserError(
            f"config training.best_metric={chosen!r} is not an eval metric of task {task.name!r}; "
            f"choose from auto, {', '.join(sorted(names))}"
        )
    return chosen
