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
    mlm             no label: continued masked-LM pre-training on unlabelled text, masks drawn on the device
                    every step: cross-entropy at the masked tokens, masked-token accuracy and perplexity

`from_config` builds the task object the steps take as a static argument, from a config that
`jaxft.config.check` has checked (the task rules live there, with the others). Class weights
(`data.class_weights`, `jaxft.tasks.class_weights`) depend on the train data too: training resolves them
once the data is read and rebuilds the task with them (`Task.resolve_class_weights`).
"""

import ml_collections

from jaxft import config as config_lib
from jaxft.data import long_inputs
from jaxft.errors import UserError
from jaxft.tasks.base import IGNORE, PER_EXAMPLE, StepLoss, Task, TaskReport
from jaxft.tasks.classification import Classification
from jaxft.tasks.mlm import MaskedLanguageModel
from jaxft.tasks.multilabel import MultiLabel
from jaxft.tasks.ner import Ner
from jaxft.tasks.pet import Pet
from jaxft.tasks.qa import QuestionAnswering
from jaxft.tasks.regression import Regression
from jaxft.tasks.relation import Relation

__all__ = [
    "IGNORE",
    "PER_EXAMPLE",
    "StepLoss",
    "Task",
    "TaskReport",
    "best_metric",
    "best_mode",
    "from_config",
]

NAMES = config_lib.TASKS
# The metrics that fall as a model improves: training.best_mode="auto" minimises these, maximises the rest.
MINIMISED = ("loss", "mse", "perplexity")


def from_config(config: ml_collections.ConfigDict) -> Task:
    """The task object of `config` (checked by `jaxft.config.check`)."""
    task = config.task
    name = task.name
    smoothing = float(config.regularization.label_smoothing)
    if name == "classification":
        return Classification(
            label_smoothing=smoothing, long_inputs=long_inputs.LongInputs.from_data(config.data)
        )
    if name == "regression":
        return Regression()
    if name == "multilabel":
        return MultiLabel(
            threshold=float(task.threshold),
            separator=str(task.label_separator),
            tune_threshold=str(task.tune_threshold),
        )
    if name == "ner":
        return Ner(
            subword_labels=task.subword_labels,
            tag_scheme=task.tag_scheme,
            tag_column=int(task.tag_column),
            max_seq_length=int(config.data.max_seq_length),
        )
    if name == "qa":
        return QuestionAnswering(
            doc_stride=int(task.doc_stride),
            max_query_length=int(task.max_query_length),
            max_answer_length=int(task.max_answer_length),
            n_best=int(task.n_best),
            max_seq_length=int(config.data.max_seq_length),
        )
    if name == "pet":
        return Pet(
            template=str(task.template),
            verbalizer=tuple(task.verbalizer or ()),
            label_smoothing=smoothing,
        )
    if name == "relation":
        return Relation(
            head_field=str(task.head_field),
            tail_field=str(task.tail_field),
            pooling=str(task.relation_pooling),
            label_smoothing=smoothing,
        )
    if name == "mlm":
        return MaskedLanguageModel(
            probability=float(task.mlm_probability),
            mask_ratio=float(task.mlm_mask_ratio),
            random_ratio=float(task.mlm_random_ratio),
            whole_word=bool(task.whole_word_mask),
            packing=bool(task.mlm_packing),
        )
    raise UserError(f"config task.name={name!r} must be one of {', '.join(NAMES)}")


def best_metric(config: ml_collections.ConfigDict, task: Task) -> str:
    """`training.best_metric`, "auto" resolved to the task's own (accuracy, pearson, micro_f1, f1, f1, loss).

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


def best_mode(config: ml_collections.ConfigDict, task: Task) -> str:
    """`training.best_mode`, "auto" resolved by the best metric: "min" for one in `MINIMISED`, else "max"."""
    mode = config.training.best_mode
    if mode != "auto":
        return mode
    return "min" if best_metric(config, task) in MINIMISED else "max"
