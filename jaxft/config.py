"""The config, parsed and checked once: every rule on a config's values lives here, and `check` runs them.

Configs are `ml_collections.ConfigDict`s built by `jaxft/configs/*.py` from `jaxft/configs/default.py`, which
holds every key and its default (also for a run's config.json written by an older jaxft: `with_defaults`).
Unknown keys are already refused by the locked ConfigDict; `check` refuses a value that cannot work, or a
combination that makes no sense (a strategy on a task it does not apply to), with one `UserError` that names
the key. It runs before anything is read or written: on a training config (`jaxft.training.train.prepare`), on
each cell of a comparison (`jaxft.compare`) and on a finished run's config.json (`jaxft.predict.load_run`).
What reads a config afterwards (`tasks.from_config`, `peft.from_config`, `adversarial.from_config`) only reads
it.
"""

import json
import math
import os

import ml_collections

from jaxft.errors import UserError

TASKS = ("classification", "regression", "multilabel", "ner", "qa", "pet", "relation", "mlm")
SOFTMAX_TASKS = ("classification", "pet", "relation")  # one [B, classes] row of exclusive classes per example
# Tasks whose loss is over a label set, which `data.class_weights` weighs (regression and qa have none).
CLASS_WEIGHT_TASKS = (*SOFTMAX_TASKS, "multilabel", "ner")
BALANCED = "balanced"  # data.class_weights: scikit-learn's "balanced" weights, from the train split
PEFT_METHODS = ("none", "bitfit", "lora", "adapter", "prompt", "prefix")
# Dense layers of a BERT layer that LoRA can adapt, by the name `peft.lora_targets` uses.
# "qkv" is the fused query-key-value projection of the families that have one (ModernBERT).
LORA_TARGETS = ("query", "key", "value", "qkv", "attention_output", "intermediate", "output")
ADVERSARIAL_METHODS = ("none", "fgm", "pgd", "freelb")
AUGMENT_OPS = ("synonym", "insert", "swap", "delete")  # EDA's four operations
# Tasks whose examples are whole texts with one target: changing words keeps the target meaningful. NER
# tags, QA answer offsets and relation entity spans point into the text and would no longer match it.
AUGMENTABLE_TASKS = ("classification", "regression", "multilabel", "pet")
# Formats that one task reads: data sets in the files they are distributed as (jaxft/data/semeval2010.py,
# goemotions.py) and plain text, a document a line (mlm: jaxft/data/pretraining.py). The data.format that
# names one, and the task whose examples its reader builds.
DATASET_FORMATS = {"semeval2010": "relation", "goemotions": "multilabel", "txt": "mlm"}
MASK = "[MASK]"  # a pet template's placeholder for the tokenizer's mask token
LONG_INPUTS = ("truncate", "head_tail", "windows")  # data.long_inputs (jaxft/data/long_inputs.py)
LONG_INPUT_TASKS = ("classification",)  # the tasks that take a data.long_inputs other than "truncate"
LOGGERS = ("tensorboard", "jsonl", "mlflow", "wandb")  # training.loggers (jaxft/training/trackers.py)

_CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "model.attention": ("auto", "xla", "cudnn"),
    "data.format": ("auto", "csv", "tsv", "jsonl", "parquet", "arrow", "hf", *DATASET_FORMATS),
    "data.long_inputs": LONG_INPUTS,
    "optimizer.name": ("adamw", "sgd"),
    "optimizer.schedule": ("linear", "constant"),
    "training.best_mode": ("auto", "max", "min"),
    "training.parallelism": ("pmap", "dp", "fsdp"),
    "task.name": TASKS,
    "task.subword_labels": ("first", "all"),
    "task.tag_scheme": ("iob1", "iob2"),
    "task.relation_pooling": ("markers", "cls"),
    "task.tune_threshold": ("", "macro_f1", "micro_f1"),
    "peft.method": PEFT_METHODS,
    "adversarial.method": ADVERSARIAL_METHODS,
}
# Numeric keys by what they may hold. Every one must be a finite number of its kind (NaN and infinity pass
# `<= 0`-style checks, and a JSON config can hold any type); integers are counts, sizes and steps.
_POSITIVE_INTS = (
    "data.max_seq_length",
    "data.num_buckets",
    "training.batch_size",
    "training.grad_accum_steps",
    "training.eval_batch_size",
    "training.log_every",
    "training.checkpoint_every",
    "training.keep_checkpoints",
    "model.random_init.hidden_size",
    "model.random_init.num_hidden_layers",
    "model.random_init.num_attention_heads",
    "model.random_init.intermediate_size",
    "model.random_init.max_position_embeddings",
    "task.max_query_length",
    "task.max_answer_length",
    "task.n_best",
    "peft.lora_rank",
    "peft.adapter_size",
    "peft.num_virtual_tokens",
    "adversarial.steps",
)
_NON_NEGATIVE_INTS = (
    "seed",  # numpy's generators take no negative seed
    "optimizer.warmup_steps",
    "training.num_epochs",
    "training.eval_every",
    "training.early_stopping_patience",
    "data.max_train_examples",
    "data.max_eval_examples",
    "data.num_shards",
    "data.k_shot",
    "data.window_stride",  # its upper bound depends on the window (`_check_long_inputs`)
    "data.max_windows",
    "training.max_nonfinite_steps",
    "training.fsdp_min_size",
)
_INTS = (
    "training.num_train_steps",  # -1 (or 0): num_epochs decides
    "task.tag_column",  # -1: the last column
    "task.doc_stride",  # its range depends on the window (`_check_qa`)
    "data.head_tokens",  # -1: a quarter of the kept tokens (`_check_long_inputs`)
)
_FLOATS = ("adversarial.epsilon", "adversarial.step_size")  # not negative, checked together
_POSITIVE_FLOATS = (
    "optimizer.eps",  # 0 divides 0 by 0 in Adam for a parameter whose gradient is always 0
    "peft.lora_alpha",
)
_NON_NEGATIVE_FLOATS = (
    "optimizer.learning_rate",  # 0 keeps the parameters as they start: a warm start's check, an eval
    "optimizer.warmup_ratio",
    "optimizer.weight_decay",
    "optimizer.l2_penalty",
    "optimizer.max_grad_norm",
    "training.early_stopping_min_delta",
    "regularization.rdrop_alpha",
)
_UNIT_INTERVAL = (  # [0, 1): decay rates (1 or more never forgets, or grows without bound), dropout rates
    "optimizer.b1",
    "optimizer.b2",
    "optimizer.momentum",
    "optimizer.warmup_ratio",
    "model.classifier_dropout",
    "model.hidden_dropout",
    "model.attention_dropout",
    "model.random_init.hidden_dropout_prob",
    "model.random_init.attention_probs_dropout_prob",
    "peft.lora_dropout",
    "regularization.label_smoothing",  # 1 would make every target uniform
)
# (0, 1): a probability threshold that 0 or 1 would make every label predicted or none; masked-LM's share of
# chosen tokens, which at 0 leaves nothing to predict and at 1 nothing to predict from.
_OPEN_UNIT_INTERVAL = ("task.threshold", "task.mlm_probability")
# [0, 1]: the shares of masked-LM's chosen tokens that become [MASK] or a random token (their sum too).
_CLOSED_UNIT_INTERVAL = ("task.mlm_mask_ratio", "task.mlm_random_ratio")
# (0, 1]: layer i of n learns at decay^(n - i) of the rate, so 1 is off and above 1 would grow the rate
# towards the embeddings: no longer a decay (Clark et al. 2020 use 0.65 to 0.9).
_DECAYS = ("optimizer.layer_decay",)
_MISSING = object()


def number(key: str, value, *, integer: bool = False):
    """`value` if it is a finite number (an integer when `integer`); else raises `UserError` naming `key`.

    Booleans are refused although Python counts them as integers: `True` is no batch size.
    """
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise UserError(f"config {key}={value!r} must be {'an integer' if integer else 'a number'}")
    if not math.isfinite(value):
        raise UserError(f"config {key}={value} must be a finite number")
    return value


def class_weights(value) -> str | dict[str, float] | None:
    """`data.class_weights` read: None (unweighted), "balanced", or {label: weight}.

    Accepts a mapping (a dict in a config file or from `--config.data.class_weights='{"pos": 2.0}'`, a
    ConfigDict once the config was copied, a JSON object in a run's config.json; no label with a dot, which
    a ConfigDict key cannot hold) or the string "label=weight,label=weight" (split at the last "=" of each
    comma-separated part).

    Raises:
      UserError: naming data.class_weights, for any other value, an empty mapping, a dotted label in a
        mapping, a label given twice, or a weight that is not a finite positive number.
    """
    if value is None or (isinstance(value, str) and value == BALANCED):
        return value
    key = "config data.class_weights"
    if isinstance(value, str):
        pairs = []
        for part in value.split(","):
            label, equals, weight = part.rpartition("=")
            if not equals or not label.strip():
                raise UserError(
                    f"{key}={value!r} must be 'balanced', a mapping label -> weight, or 'label=weight,...'"
                )
            try:
                pairs.append((label.strip(), float(weight)))
            except ValueError:
                raise UserError(
                    f"{key}: weight {weight.strip()!r} of label {label.strip()!r} is no number"
                ) from None
    elif isinstance(value, ml_collections.ConfigDict | dict):
        mapping = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
        pairs = [(str(label), weight) for label, weight in mapping.items()]
        dotted = [label for label, _ in pairs if "." in label]
        if dotted:  # the run's config.json could not be read back: a ConfigDict key holds no dot
            raise UserError(
                f"{key}: label {dotted[0]!r} has a dot, which a config mapping cannot hold; give the weights "
                f"as a string instead, e.g. '{dotted[0]}=2.0'"
            )
    else:
        raise UserError(
            f"{key}={value!r} must be 'balanced', a mapping label -> weight, or 'label=weight,...'"
        )
    if not pairs:
        raise UserError(f"{key} is an empty mapping: name a label and its weight, or leave it unset")
    weights = {}
    for label, weight in pairs:
        if label in weights:
            raise UserError(f"{key}: label {label!r} is given twice")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < math.inf:
            raise UserError(
                f"{key}: the weight of label {label!r} must be a finite positive number, not {weight!r}"
            )
        weights[label] = float(weight)
    return weights


def _lookup(config: ml_collections.ConfigDict, dotted: str):
    try:
        return get(config, dotted)
    except (KeyError, AttributeError):
        return _MISSING


def get(config: ml_collections.ConfigDict, dotted: str):
    """Returns the value at a dotted key such as "training.batch_size"."""
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def defaults() -> ml_collections.ConfigDict:
    """`jaxft/configs/default.py`'s config: every key with its default."""
    from jaxft.configs import default

    return default.get_config()


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
    """A run's config.json as a ConfigDict, the keys it lacks (an older jaxft did not write them: the whole
    task section before tasks existed) filled in from `defaults`; its own values and types stay as written."""

    def fill(given: dict, default: dict) -> dict:
        filled = dict(given)
        for key, value in default.items():
            if key not in filled:
                filled[key] = value
            elif isinstance(value, dict) and isinstance(filled[key], dict):
                filled[key] = fill(filled[key], value)
        return filled

    return ml_collections.ConfigDict(fill(saved, defaults().to_dict()))


def check(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Runs every rule on `config`; returns it unchanged. The one check of a config, before any use.

    Raises:
      UserError: naming the first key whose value cannot work, alone or with the others.
    """
    _check_values(config)
    _check_run(config)
    _check_task(config)
    _check_strategies(config)
    return config


def _check_values(config: ml_collections.ConfigDict) -> None:
    """Each key on its own: a choice among its values, a finite number in its range."""
    for key, choices in _CHOICES.items():
        value = _lookup(config, key)
        if value is not _MISSING and value not in choices:
            raise UserError(f"config {key}={value!r} must be one of {', '.join(choices)}")
    numeric = [
        *((key, True, "positive") for key in _POSITIVE_INTS),
        *((key, True, "non-negative") for key in _NON_NEGATIVE_INTS),
        *((key, True, None) for key in _INTS),
        *((key, False, None) for key in _FLOATS),
        *((key, False, "positive") for key in _POSITIVE_FLOATS),
        *((key, False, "non-negative") for key in _NON_NEGATIVE_FLOATS),
        *((key, False, "unit") for key in _UNIT_INTERVAL),
        *((key, False, "open unit") for key in _OPEN_UNIT_INTERVAL),
        *((key, False, "closed unit") for key in _CLOSED_UNIT_INTERVAL),
        *((key, False, "decay") for key in _DECAYS),
    ]
    for key, integer, sign in numeric:
        value = _lookup(config, key)
        if value is _MISSING or (value is None and sign == "unit"):  # unset (a placeholder)
            continue
        number(key, value, integer=integer)
        if sign == "positive" and value <= 0:
            raise UserError(f"config {key}={value} must be positive")
        if sign == "non-negative" and value < 0:
            raise UserError(f"config {key}={value} must not be negative")
        if sign == "unit" and not 0 <= value < 1:
            raise UserError(f"config {key}={value} must be in [0, 1)")
        if sign == "open unit" and not 0 < value < 1:
            raise UserError(f"config {key}={value} must be in (0, 1)")
        if sign == "closed unit" and not 0 <= value <= 1:
            raise UserError(f"config {key}={value} must be in [0, 1]")
        if sign == "decay" and not 0 < value <= 1:
            raise UserError(f"config {key}={value} must be in (0, 1]")
    if any(_lookup(config, key) not in (_MISSING, None) and _lookup(config, key) < 0 for key in _FLOATS):
        raise UserError("config adversarial.epsilon and adversarial.step_size must not be negative")
    separator = _lookup(config, "task.label_separator")
    if separator is not _MISSING and (not isinstance(separator, str) or not separator):
        raise UserError("config task.label_separator must not be empty")
    if _lookup(config, "training.loggers") is not _MISSING:
        logger_names(config.training.loggers)
        experiment = config.training.experiment
        if not isinstance(experiment, str) or not experiment.strip():
            raise UserError(f"config training.experiment={experiment!r} must name an experiment")
    targets = _lookup(config, "peft.lora_targets")
    if targets is not _MISSING:
        unknown = [target for target in targets or () if target not in LORA_TARGETS]
        if unknown or (_lookup(config, "peft.method") == "lora" and not targets):
            raise UserError(
                f"config peft.lora_targets={tuple(targets or ())!r}: choose from {', '.join(LORA_TARGETS)}"
            )


def _check_run(config: ml_collections.ConfigDict) -> None:
    """What a training run needs at all: steps to take, data to read, an encoder or a tokenizer."""
    if config.training.num_epochs <= 0 and config.training.num_train_steps <= 0:
        raise UserError("config training.num_epochs or training.num_train_steps must be positive")
    if not config.data.train_path:
        raise UserError("config data.train_path is not set (pass --config.data.train_path=FILE)")
    if not config.model.checkpoint and not (config.model.tokenizer or config.model.init_from_workdir):
        raise UserError(
            "config model.checkpoint is not set, and without it model.tokenizer must name a tokenizer"
        )


# ---- task-specific keys, by task --------------------------------------------------------------------------
def _check_classification(task, data) -> None:
    del task, data  # its keys are the data section's own


def _check_regression(task, data) -> None:
    del task
    if data.labels is not None:
        raise UserError("config data.labels does not apply to task.name='regression' (one float target)")


def _check_multilabel(task, data) -> None:
    # task.threshold and task.label_separator: checked as values
    if task.get("tune_threshold") and not data.eval_path:
        raise UserError(
            f"config task.tune_threshold={task.tune_threshold!r} needs data.eval_path: the threshold is "
            "chosen on the eval split"
        )


def _check_ner(task, data) -> None:
    del task
    if data.text_pair_field is not None:
        raise UserError(
            "config data.text_pair_field does not apply to task.name='ner' (one sentence of words)"
        )


def _check_qa(task, data) -> None:
    room = data.max_seq_length - task.max_query_length - 3  # context tokens a window is sure to hold
    if not 0 <= task.doc_stride < room:
        raise UserError(
            f"config task.doc_stride={task.doc_stride} must be in [0, {room}): windows of "
            f"data.max_seq_length={data.max_seq_length} hold at least {room} context tokens after a question "
            f"of task.max_query_length={task.max_query_length} and [CLS] [SEP] [SEP]"
        )


def _check_pet(task, data) -> None:
    if not task.verbalizer:
        raise UserError("config task.verbalizer must give one word per label for task.name='pet'")
    check_template(task.template, data.text_pair_field is not None)


def _check_relation(task, data) -> None:
    if data.text_pair_field is not None:
        raise UserError("config data.text_pair_field does not apply to task.name='relation' (one text)")
    if task.head_field == task.tail_field:
        raise UserError(f"config task.head_field and task.tail_field are both {task.head_field!r}")


def _check_mlm(task, data) -> None:
    if data.text_pair_field is not None:
        raise UserError("config data.text_pair_field does not apply to task.name='mlm' (one text a document)")
    if data.labels is not None:
        raise UserError("config data.labels does not apply to task.name='mlm' (unlabelled text)")
    if data.k_shot:
        raise UserError("config data.k_shot does not apply to task.name='mlm' (unlabelled text: no classes)")
    if task.mlm_mask_ratio + task.mlm_random_ratio > 1:
        raise UserError(
            f"config task.mlm_mask_ratio={task.mlm_mask_ratio} + "
            f"task.mlm_random_ratio={task.mlm_random_ratio} must be at most 1 (the rest of the chosen tokens "
            "stay unchanged)"
        )


_TASK_CHECKS = {
    "classification": _check_classification,
    "regression": _check_regression,
    "multilabel": _check_multilabel,
    "ner": _check_ner,
    "qa": _check_qa,
    "pet": _check_pet,
    "relation": _check_relation,
    "mlm": _check_mlm,
}


def check_template(template: str, has_pair: bool) -> None:
    """Raises `UserError` naming task.template unless it holds one [MASK], one {text} and, exactly when the
    data has a second text (`data.text_pair_field`), one {text_pair}."""
    if template.count(MASK) != 1:
        raise UserError(f"config task.template={template!r} must contain {MASK} exactly once")
    if template.count("{text}") != 1:
        raise UserError(f"config task.template={template!r} must contain {{text}} exactly once")
    pairs = template.count("{text_pair}")
    if pairs > 1 or bool(pairs) != has_pair:
        need = "exactly once (data.text_pair_field is set)" if has_pair else "only with data.text_pair_field"
        raise UserError(f"config task.template={template!r} must contain {{text_pair}} {need}")


def _check_task(config: ml_collections.ConfigDict) -> None:
    """The task's own rules, and the data keys that do not apply to it."""
    name, data = config.task.name, config.data
    if name not in ("classification", "pet", "relation") and data.positive_label is not None:
        raise UserError(f"config data.positive_label applies to task.name='classification', not {name!r}")
    if data.format in DATASET_FORMATS and DATASET_FORMATS[data.format] != name:
        raise UserError(
            f"config data.format={data.format!r} is read by task.name={DATASET_FORMATS[data.format]!r}, "
            f"not {name!r}"
        )
    _TASK_CHECKS[name](config.task, data)
    if name != "multilabel" and config.task.get("tune_threshold"):
        raise UserError(f"config task.tune_threshold applies to task.name='multilabel', not {name!r}")
    _check_long_inputs(name, data)
    weights = class_weights(data.get("class_weights"))
    if weights is not None and name not in CLASS_WEIGHT_TASKS:
        raise UserError(
            f"config data.class_weights applies to task.name in {', '.join(CLASS_WEIGHT_TASKS)}, "
            f"not {name!r} (it has no classes)"
        )
    if isinstance(weights, dict) and data.labels is not None:  # else checked once the label set is read
        check_class_weight_labels(weights, [str(label) for label in data.labels])
    if weights is not None and data.long_inputs == "windows":
        raise UserError(
            "config data.class_weights does not combine with data.long_inputs='windows' (a text's loss is "
            "that of its mean window logits); use 'truncate' or 'head_tail'"
        )


def _check_long_inputs(name: str, data) -> None:
    """data.long_inputs on the task, and its keys on the room a row leaves for text."""
    mode, room = data.long_inputs, data.max_seq_length - 2  # the tokens beside [CLS] and [SEP]
    if data.head_tokens < -1:
        raise UserError(
            f"config data.head_tokens={data.head_tokens} must be a number of tokens, or -1 (a quarter)"
        )
    if mode != "truncate" and name not in LONG_INPUT_TASKS:
        raise UserError(
            f"config data.long_inputs={mode!r} applies to task.name in {', '.join(LONG_INPUT_TASKS)}, not "
            f"{name!r} (use 'truncate')"
        )
    if mode == "head_tail" and data.head_tokens > room:
        raise UserError(
            f"config data.head_tokens={data.head_tokens} must be at most {room}: the text tokens of "
            f"data.max_seq_length={data.max_seq_length} beside [CLS] and [SEP]"
        )
    if mode == "windows":
        what = "the text tokens a window of"
        if data.text_pair_field is not None:  # the other text of a pair takes at most half the room
            room = -(-(data.max_seq_length - 3) // 2)
            what = "the tokens of the windowed text of a pair (beside the other) that a window of"
        if data.window_stride >= room:
            raise UserError(
                f"config data.window_stride={data.window_stride} must be less than {room}: {what} "
                f"data.max_seq_length={data.max_seq_length} is sure to hold"
            )


def check_class_weight_labels(weights: dict[str, float], names: list[str]) -> None:
    """Raises `UserError` naming data.class_weights when it weighs a label that is not in `names`."""
    unknown = [label for label in weights if label not in names]
    if unknown:
        shown = ", ".join(map(repr, names[:20])) + (", ..." if len(names) > 20 else "")
        raise UserError(f"config data.class_weights: label {unknown[0]!r} is not in the label set [{shown}]")


def _check_strategies(config: ml_collections.ConfigDict) -> None:
    """Which tasks a strategy applies to."""
    name, regularization = config.task.name, config.regularization
    for key in ("label_smoothing", "rdrop_alpha"):
        if regularization[key] and name not in SOFTMAX_TASKS:
            tasks = ", ".join(SOFTMAX_TASKS)
            raise UserError(f"config regularization.{key} applies to task.name in {tasks}, not {name!r}")
    check_augment(config.augment, name)


def check_augment(augment: ml_collections.ConfigDict, task_name: str) -> None:
    """The `augment` section's rules (files are checked on reading); also run by `augment.augment_train`,
    which takes the section alone."""
    ops = augment.eda_ops or ()
    for op in (ops,) if isinstance(ops, str) else ops:
        if op not in AUGMENT_OPS:
            raise UserError(f"config augment.eda_ops: {op!r} is not one of {', '.join(AUGMENT_OPS)}")
    alpha = number("augment.eda_alpha", augment.eda_alpha)
    if not 0 < alpha <= 1:
        raise UserError(f"config augment.eda_alpha={alpha!r} must be in (0, 1]")
    num = number("augment.num_augmented", augment.num_augmented, integer=True)
    if num < 1:
        raise UserError(f"config augment.num_augmented={num!r} must be an integer >= 1")
    on = "augment.eda_ops" if ops else "augment.paraphrases_path" if augment.paraphrases_path else None
    if on and task_name not in AUGMENTABLE_TASKS:
        raise UserError(
            f"config {on}: data augmentation applies to task.name in {', '.join(AUGMENTABLE_TASKS)}, "
            f"not {task_name!r} (its labels point into the text)"
        )


def logger_names(value) -> tuple[str, ...]:
    """`training.loggers` as names: a tuple, a comma-separated string, or a tuple of such strings (the
    command line gives `--config.training.loggers=jsonl,mlflow` as one string in a tuple).

    Raises:
      UserError: a name not in `LOGGERS`, or one given twice.
    """
    parts = (value,) if isinstance(value, str) else tuple(value or ())
    names = tuple(name.strip() for part in parts for name in str(part).split(",") if name.strip())
    unknown = [name for name in names if name not in LOGGERS]
    if unknown or len(set(names)) != len(names):
        what = f"unknown logger {unknown[0]!r}" if unknown else "a logger is given twice"
        raise UserError(f"config training.loggers={value!r}: {what}; choose from {', '.join(LOGGERS)}")
    return names


def expand_path(path: str | None) -> str | None:
    """Expands `$VARS` and `~` in a path taken from the config; None stays None."""
    if path is None:
        return None
    expanded = os.path.expanduser(os.path.expandvars(path))
    if "$" in expanded:
        raise UserError(f"path {path!r}: environment variable in it is not set")
    return expanded


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as JSON, as written to WORKDIR/config.json."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
