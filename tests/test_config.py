"""Tests of `jaxft.config`: one `check` holds every rule, defaults come from jaxft/configs/default.py
alone."""

import dataclasses

import pytest

from jaxft import config as config_lib
from jaxft import tasks
from jaxft.configs import default, tiny
from jaxft.errors import UserError
from jaxft.strategies import adversarial, peft


def test_check_returns_the_config_it_accepts():
    config = tiny.get_config()
    assert config_lib.check(config) is config


def test_defaults_are_configs_default():
    assert config_lib.defaults().to_dict() == default.get_config().to_dict()


def test_the_strategy_sections_defaults_are_written_once_in_configs_default():
    """`PeftConfig()` and `AdversarialConfig()` (what steps and modules take when no config is given) hold the
    same values as jaxft/configs/default.py's sections, field by field, and name every key of them."""
    config = default.get_config()
    for section, cls, read in (
        ("peft", peft.PeftConfig, peft.from_config),
        ("adversarial", adversarial.AdversarialConfig, adversarial.from_config),
    ):
        assert read(config) == cls(), section
        fields = {field.name for field in dataclasses.fields(cls)}
        assert fields == set(config[section].keys()), section


def test_a_config_json_of_an_older_jaxft_gets_the_keys_it_lacks_from_configs_default():
    saved = tiny.get_config().to_dict()
    for section in ("task", "peft", "adversarial", "regularization", "augment"):
        del saved[section]
    del saved["optimizer"]["layer_decay"]
    saved["data"]["labels"] = ["negative", "positive"]  # as JSON writes a tuple
    config = config_lib.with_defaults(saved)
    config_lib.check(config)
    assert tasks.from_config(config).name == "classification"
    assert peft.from_config(config) == peft.PeftConfig()
    assert adversarial.from_config(config) == adversarial.AdversarialConfig()
    assert config.optimizer.layer_decay == 1.0
    assert config.data.labels == ["negative", "positive"]  # its own values stay as written
    assert config.training.batch_size == tiny.get_config().training.batch_size


def test_every_task_has_its_rules():
    assert set(config_lib._TASK_CHECKS) == set(config_lib.TASKS) == set(tasks.NAMES)


@pytest.mark.parametrize(
    "key, value, message",
    [
        # one bound for layer-wise decay: 1 is off, above 1 the rate would grow towards the embeddings
        ("optimizer.layer_decay", 0.0, "config optimizer.layer_decay=0.0 must be in (0, 1]"),
        ("optimizer.layer_decay", 1.1, "config optimizer.layer_decay=1.1 must be in (0, 1]"),
        (
            "task.name",
            "summarise",
            "config task.name='summarise' must be one of classification, regression, ",
        ),
        ("task.threshold", 1.0, "config task.threshold=1.0 must be in (0, 1)"),
        ("task.label_separator", "", "config task.label_separator must not be empty"),
        ("task.n_best", 0, "config task.n_best=0 must be positive"),
        ("peft.method", "qlora", "config peft.method='qlora' must be one of none, bitfit, lora, "),
        ("peft.lora_targets", ("gate",), "config peft.lora_targets=('gate',): choose from query, "),
        ("adversarial.steps", 0, "config adversarial.steps=0 must be positive"),
        ("adversarial.epsilon", -1.0, "config adversarial.epsilon and adversarial.step_size must not be "),
        (
            "regularization.label_smoothing",
            1.0,
            "config regularization.label_smoothing=1.0 must be in [0, 1)",
        ),
        ("augment.eda_alpha", 0.0, "config augment.eda_alpha=0.0 must be in (0, 1]"),
        ("augment.num_augmented", 0, "config augment.num_augmented=0 must be an integer >= 1"),
        ("augment.eda_ops", ("shuffle",), "config augment.eda_ops: 'shuffle' is not one of synonym, "),
    ],
)
def test_each_rule_refuses_its_bad_value_naming_the_key(key, value, message):
    config = tiny.get_config()
    section, leaf = key.split(".")
    with config[section].ignore_type():
        config[section][leaf] = value
    with pytest.raises(UserError) as raised:
        config_lib.check(config)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    "task, changes, message",
    [
        ("regression", {"data.labels": ("a", "b")}, "data.labels does not apply to task.name='regression'"),
        ("ner", {"data.text_pair_field": "b"}, "data.text_pair_field does not apply to task.name='ner'"),
        ("qa", {"task.doc_stride": 100}, "config task.doc_stride=100 must be in [0, "),
        ("pet", {}, "config task.verbalizer must give one word per label for task.name='pet'"),
        (
            "pet",
            {"task.verbalizer": ("a", "b"), "task.template": "{text}"},
            "must contain [MASK] exactly once",
        ),
        ("relation", {"task.tail_field": "head"}, "task.head_field and task.tail_field are both 'head'"),
        (
            "ner",
            {"data.positive_label": "B-PER"},
            "data.positive_label applies to task.name='classification'",
        ),
        ("ner", {"regularization.rdrop_alpha": 1.0}, "regularization.rdrop_alpha applies to task.name in "),
        (
            "ner",
            {"augment.eda_ops": ("swap",)},
            "augment.eda_ops: data augmentation applies to task.name in ",
        ),
    ],
)
def test_task_rules_and_what_applies_to_which_task(task, changes, message):
    config = tiny.get_config()
    config.task.name = task
    for key, value in changes.items():
        section, leaf = key.split(".")
        config[section][leaf] = value
    with pytest.raises(UserError) as raised:
        config_lib.check(config)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "variant", ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v3", "modernbert"]
)
def test_each_family_config_is_the_sst2_recipe_on_its_checkpoint(variant):
    from jaxft.configs import families, sst2

    config = config_lib.check(families.get_config(variant))
    recipe = sst2.get_config()
    assert config.model.checkpoint == families.CHECKPOINTS[variant][0] != recipe.model.checkpoint
    assert config.data == recipe.data and config.training == recipe.training
