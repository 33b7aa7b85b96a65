"""Class weights (`data.class_weights`): "balanced" is scikit-learn's, the weighted losses are PyTorch's
(`cross_entropy(weight=)`, `binary_cross_entropy_with_logits(pos_weight=)`, `ignore_index`), the same on 1
and 8 devices and with accumulation, bad values are one line, and a tiny run reports a weighted loss."""

import json

import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from sklearn.utils.class_weight import compute_class_weight

from jaxft import config as config_lib
from jaxft.configs import common, default, tiny
from jaxft.errors import UserError
from jaxft.models.heads import SequenceClassifier, TokenClassifier
from jaxft.tasks import IGNORE, PER_EXAMPLE
from jaxft.tasks.classification import Classification
from jaxft.tasks.multilabel import MultiLabel
from jaxft.tasks.ner import Ner
from jaxft.training import train
from tests.helpers import init_params, loss_and_grads, padded_batch, rel_error, tiny_bert

torch = pytest.importorskip("torch")
F = torch.nn.functional

CONFIG = tiny_bert(50, num_hidden_layers=1)  # one layer: the steps compile faster
C, LENGTH = 4, 10
WEIGHTS = (0.5, 2.0, 1.0, 3.5)


def _torch(x):
    return torch.from_numpy(np.asarray(x, np.float64))


def _long(x):
    return torch.from_numpy(np.asarray(x, np.int64))


def _batch(kind: str, size: int = 16, padding_rows: int = 3, seed: int = 0) -> dict:
    """A random host batch whose last `padding_rows` rows have weight 0 and garbage labels."""

    def labels(rng, lengths, mask):
        if kind == "multilabel":
            return (rng.random((size, C)) < 0.3).astype(np.float32)
        if kind == "ner":
            tags = rng.integers(0, C, (size, LENGTH)).astype(np.int32)
            tags[(rng.random((size, LENGTH)) < 0.3) | (mask == 0)] = IGNORE
            tags[size - padding_rows :] = rng.integers(0, C, (padding_rows, LENGTH))  # weight 0 masks them
            return tags
        return rng.integers(0, C, size).astype(np.int32)

    return padded_batch(
        size, CONFIG.vocab_size, labels, length=LENGTH, min_length=3, padding_rows=padding_rows, seed=seed
    )


def _torch_loss(kind: str, logits, batch, label_smoothing: float = 0.0) -> float:
    """PyTorch's loss with `WEIGHTS` over the real rows (ner: and the labelled positions), in float64."""
    real = batch["weights"] > 0
    logits, labels = np.asarray(logits)[real], batch["labels"][real]
    if kind == "multilabel":
        bce = F.binary_cross_entropy_with_logits
        return float(bce(_torch(logits), _torch(labels), pos_weight=_torch(WEIGHTS)))
    if kind == "ner":
        logits, labels = logits.reshape(-1, C), labels.reshape(-1)
    options = dict(weight=_torch(WEIGHTS), ignore_index=IGNORE, label_smoothing=label_smoothing)
    return float(F.cross_entropy(_torch(logits), _long(labels), **options))


# ---- "balanced" is scikit-learn's ------------------------------------------------------------------------
def test_balanced_weights_are_sklearns_compute_class_weight_exactly():
    names = ["a", "b", "c", "d", "e"]
    y = np.random.default_rng(1).choice(5, 97, p=[0.5, 0.2, 0.15, 0.1, 0.05]).astype(np.int32)
    expected = compute_class_weight("balanced", classes=np.arange(5), y=y)
    assert Classification().resolve_class_weights("balanced", y, names) == tuple(expected)
    assert tuple(expected) == tuple(len(y) / (5 * np.bincount(y)))  # the formula the docs give
    # NER: over every word tag of the train sentences (ragged arrays, as `Ner.encode` gives them).
    sentences = np.empty(3, object)
    sentences[:] = [y[:40], y[40:41], y[41:]]
    assert Ner().resolve_class_weights("balanced", sentences, names) == tuple(expected)
    # A mapping: the labels it names get their weight, the others 1.0.
    assert Classification().resolve_class_weights({"c": 2.5}, y, names) == (1.0, 1.0, 2.5, 1.0, 1.0)


def test_balanced_multilabel_pos_weight_is_negatives_over_positives():
    targets = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 1], [0, 0, 1]], np.float32)
    assert MultiLabel().resolve_class_weights("balanced", targets, ["x", "y", "z"]) == (3 / 2, 4 / 1, 1 / 4)


def _imbalanced_train(path, every: int) -> list[str]:
    """The shipped demo train file with only every `every`-th positive line kept, written to `path`."""
    lines = open(common.shipped("demo_sentiment/train.jsonl"), encoding="utf-8").read().splitlines()
    kept = [line for i, line in enumerate(lines) if json.loads(line)["label"] == "negative" or i % every == 0]
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return kept


def test_balanced_weights_come_from_the_train_split_after_subsetting(tmp_path):
    """`prepare` resolves them on the train examples as trained on: data.max_train_examples' subset."""
    kept = _imbalanced_train(tmp_path / "train.jsonl", 4)
    config = tiny.get_config()
    config.data.train_path = str(tmp_path / "train.jsonl")
    config.data.max_train_examples = 90
    config.data.class_weights = "balanced"
    setup = train.prepare(config, str(tmp_path / "run"))
    y = setup.splits["train"].labels
    assert len(y) == 90 and setup.label_names == ["negative", "positive"]
    assert setup.task.class_weights == tuple(compute_class_weight("balanced", classes=np.arange(2), y=y))
    whole = np.array([json.loads(line)["label"] == "positive" for line in kept])
    assert setup.task.class_weights != tuple(compute_class_weight("balanced", classes=np.arange(2), y=whole))


# ---- the losses are PyTorch's ----------------------------------------------------------------------------
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weighted_classification_loss_is_torch_cross_entropy_with_weight(smoothing):
    batch = _batch("classification")
    logits = np.random.default_rng(2).normal(size=(16, C)).astype(np.float32) * 3
    task = Classification(label_smoothing=smoothing, class_weights=WEIGHTS)
    loss_sum, weight = task.loss(logits, batch)
    assert float(weight) == pytest.approx(sum(WEIGHTS[y] for y in batch["labels"][:13]), rel=1e-7)
    expected = _torch_loss("classification", logits, batch, label_smoothing=smoothing)
    assert abs(float(loss_sum) / float(weight) - expected) <= 1e-6 * expected
    # All weights 1 is the unweighted loss, label smoothing included.
    ones = Classification(label_smoothing=smoothing, class_weights=(1.0,) * C).loss(logits, batch)
    plain = Classification(label_smoothing=smoothing).loss(logits, batch)
    np.testing.assert_allclose(np.array(ones), np.array(plain), rtol=1e-6)
    # Evaluation: the weighted loss (without smoothing) and its weight, the example count apart.
    outputs = task.eval_outputs(logits, batch)
    assert float(outputs["count"]) == 13
    evaluated = float(outputs["loss_sum"]) / float(outputs["loss_weight"])
    assert abs(evaluated - _torch_loss("classification", logits, batch)) <= 1e-6 * evaluated


def test_weighted_multilabel_loss_is_torch_bce_with_pos_weight():
    batch = _batch("multilabel")
    logits = np.random.default_rng(3).normal(size=(16, C)).astype(np.float32) * 3
    loss_sum, count = MultiLabel(class_weights=WEIGHTS).loss(logits, batch)
    assert float(count) == 13  # the mean stays over examples and labels
    expected = _torch_loss("multilabel", logits, batch)
    assert abs(float(loss_sum) / float(count) - expected) <= 1e-6 * expected


def test_weighted_ner_loss_is_torch_cross_entropy_with_weight_and_ignore_index():
    batch = _batch("ner")
    logits = np.random.default_rng(4).normal(size=(16, LENGTH, C)).astype(np.float32) * 3
    loss_sum, weight = Ner(class_weights=WEIGHTS).loss(logits, batch)
    labelled = batch["labels"][:13][batch["labels"][:13] != IGNORE]
    assert float(weight) == pytest.approx(sum(WEIGHTS[t] for t in labelled), rel=1e-6)
    expected = _torch_loss("ner", logits, batch)
    assert abs(float(loss_sum) / float(weight) - expected) <= 1e-6 * expected


def test_weighted_reports_say_so_and_keep_their_loss_denominators():
    # Classification: the loss is divided by its weight, not by the example count.
    confusion = np.array([[3, 1], [0, 2]])
    totals = {"confusion": confusion, "loss_sum": 4.5, "loss_weight": 9.0, "count": 6}
    data = ml_collections.ConfigDict({"positive_label": None})
    result = Classification(class_weights=(1.0, 3.0)).report(totals, None, ["neg", "pos"], data)
    assert result.metrics["loss"] == 0.5 and result.metrics["num_examples"] == 6
    assert result.extra == {"loss_class_weights": {"neg": 1.0, "pos": 3.0}}
    assert "loss weighted by data.class_weights (class weight per label): neg=1, pos=3" in result.text
    # Multilabel: still the mean over examples (and labels); the line names the pos_weights.
    split = type("Split", (), {"labels": np.array([[1, 0], [0, 1]], np.float32)})
    totals = {"loss_sum": 1.0, "count": 2.0, PER_EXAMPLE: {"probability": np.array([[0.9, 0.1], [0.7, 0.6]])}}
    result = MultiLabel(class_weights=(2.0, 0.5)).report(totals, split, ["x", "y"], None)
    assert result.metrics["loss"] == 0.5 and result.extra["loss_class_weights"] == {"x": 2.0, "y": 0.5}
    assert "loss weighted by data.class_weights (BCE pos_weight per label): x=2, y=0.5" in result.text


# ---- the same on any device count and accumulation -------------------------------------------------------
_TASKS = {
    "classification": (Classification(class_weights=WEIGHTS), SequenceClassifier),
    "multilabel": (MultiLabel(class_weights=WEIGHTS), SequenceClassifier),
    "ner": (Ner(max_seq_length=LENGTH, class_weights=WEIGHTS), TokenClassifier),
}


@pytest.mark.parametrize("kind", sorted(_TASKS))
def test_weighted_loss_is_the_same_on_1_and_8_devices_and_with_accumulation(kind):
    task, head = _TASKS[kind]
    model = head(CONFIG, num_labels=C)
    params, batch = init_params(model), _batch(kind, padding_rows=4)
    loss1, grads1, weight1 = loss_and_grads(model, params, batch, 1, task=task)
    loss8, grads8, weight8 = loss_and_grads(model, params, batch, 8, accum_steps=2, task=task)
    assert weight8 == pytest.approx(weight1, rel=1e-6)
    assert abs(loss8 - loss1) <= 1e-6 * loss1
    assert rel_error(grads8, grads1) <= 1e-6
    logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], None)
    expected = _torch_loss(kind, logits, batch)
    assert abs(loss1 - expected) <= 1e-5 * expected


def test_rdrop_kl_is_weighted_as_the_loss_so_device_counts_agree():
    model = SequenceClassifier(tiny_bert(50, num_hidden_layers=1, dropout=0.1), num_labels=C)
    params, batch = init_params(model), _batch("classification", padding_rows=4)
    options = dict(task=Classification(class_weights=WEIGHTS), rdrop_alpha=0.5)
    loss1, grads1, _ = loss_and_grads(model, params, batch, 1, **options)
    loss8, grads8, _ = loss_and_grads(model, params, batch, 8, accum_steps=2, **options)
    assert abs(loss8 - loss1) <= 1e-6 * loss1 and rel_error(grads8, grads1) <= 1e-6


# ---- bad values: one line naming the key -----------------------------------------------------------------
@pytest.mark.parametrize(
    "value, task, message",
    [
        ("balance", "classification", "must be 'balanced'"),
        (2.0, "classification", "must be 'balanced'"),
        ({"negative": -1.0}, "classification", "finite positive number, not -1.0"),
        ({"negative": 0}, "multilabel", "finite positive number, not 0"),
        ({"negative": float("nan")}, "ner", "finite positive number, not nan"),
        ("negative=inf", "classification", "finite positive number, not inf"),
        ({"negative": True}, "classification", "finite positive number, not True"),
        ({"negative": "2"}, "classification", "finite positive number, not '2'"),
        ("negative=2,negative=3", "classification", "label 'negative' is given twice"),
        ("negative=two", "classification", "weight 'two' of label 'negative' is no number"),
        ("negative=2,", "classification", "must be 'balanced'"),
        ({}, "classification", "empty mapping"),
        ({"4.5": 2.0}, "classification", "label '4.5' has a dot"),
        ("balanced", "regression", "not 'regression' (it has no classes)"),
        ({"a": 2.0}, "qa", "not 'qa' (it has no classes)"),
    ],
)
def test_bad_class_weights_are_one_line_naming_the_key(value, task, message):
    config = tiny.get_config()
    config.task.name = task
    config.task.max_query_length, config.task.doc_stride = 8, 8  # a valid qa window at max_seq_length 32
    config.data.class_weights = value
    with pytest.raises(UserError) as raised:
        config_lib.check(config)
    text = str(raised.value)
    assert text.startswith("config data.class_weights") and message in text and "\n" not in text


def test_class_weights_with_windows_are_refused_in_one_line():
    config = tiny.get_config()
    config.data.class_weights, config.data.long_inputs = "balanced", "windows"
    with pytest.raises(UserError, match=r"^config data.class_weights does not combine with data.long_inputs"):
        config_lib.check(config)


def test_labels_outside_the_label_set_and_undefined_balanced_weights_are_one_line():
    config = tiny.get_config()
    config.data.class_weights, config.data.labels = {"neutral": 2.0}, ("negative", "positive")
    y, names, multi_hot = np.array([0, 0, 2, 2, 2]), ["a", "b", "c"], np.array([[1, 0], [1, 1]])
    cases = [
        (
            lambda: config_lib.check(config),
            "label 'neutral' is not in the label set ['negative', 'positive']",
        ),
        (lambda: Classification().resolve_class_weights({"zebra": 2.0}, y, names), "label 'zebra' is not in"),
        (lambda: Classification().resolve_class_weights("balanced", y, names), "label 'b' has no train"),
        (lambda: MultiLabel().resolve_class_weights("balanced", multi_hot, ["x", "y"]), "'x' is on every"),
        (lambda: MultiLabel().resolve_class_weights("balanced", multi_hot[:1], ["x", "y"]), "'y' is on no"),
    ]
    for resolve, message in cases:
        with pytest.raises(UserError) as raised:
            resolve()
        text = str(raised.value)
        assert text.startswith("config data.class_weights") and message in text and "\n" not in text


def test_every_form_of_the_value_reads_the_same():
    expected = {"pos": 2.0, "neg": 1.0}
    assert config_lib.class_weights({"pos": 2, "neg": 1.0}) == expected
    assert config_lib.class_weights(ml_collections.ConfigDict(expected)) == expected  # a copied config
    assert config_lib.class_weights(" pos = 2.0 ,neg=1") == expected
    assert config_lib.class_weights("4.5=2,a=b=1") == {"4.5": 2.0, "a=b": 1.0}  # split at the last "="
    assert config_lib.class_weights("balanced") == "balanced" and config_lib.class_weights(None) is None
    # The command line: ml_collections reads a dict literal, and other text stays a string.
    for argv, value in [
        ('--config.data.class_weights={"pos": 2.0, "neg": 1}', expected),
        ("--config.data.class_weights=pos=2.0,neg=1", expected),
        ("--config.data.class_weights=balanced", "balanced"),
    ]:
        values, argv = flags.FlagValues(), ["train", f"--config={default.__file__}", argv]
        holder = config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
        values(argv)
        assert config_lib.class_weights(holder.value.data.class_weights) == value


# ---- a resumed run keeps its balanced weights ------------------------------------------------------------
def test_a_resumed_run_keeps_the_balanced_weights_it_saved(tmp_path, caplog):
    config = default.get_config()
    config.data.class_weights = "balanced"
    names, y = ["a", "b"], np.array([0, 0, 0, 1])
    saved = {"class_weights": "balanced", "weights": {"a": 0.75, "b": 1.25}}
    (tmp_path / train.CLASS_WEIGHTS).write_text(json.dumps(saved))
    assert train._with_class_weights(config, Classification(), y, names, "/nonexistent").class_weights == (
        2 / 3,
        2.0,
    )  # a new run: the data's
    task = train._with_class_weights(config, Classification(), y, names, str(tmp_path))
    assert task.class_weights == (0.75, 1.25)  # the run's, not the data's
    assert any("resuming with the run's" in r.getMessage() for r in caplog.records)
    config.data.class_weights = "b=3"  # a changed config: the new weights apply
    task = train._with_class_weights(config, Classification(), y, names, str(tmp_path))
    assert task.class_weights == (1.0, 3.0)
    (tmp_path / train.CLASS_WEIGHTS).write_text(json.dumps({"weights": {"a": -1.0, "b": 1.0}}))
    with pytest.raises(UserError, match="class_weights.json: not the class weights"):
        train._with_class_weights(config, Classification(), y, names, str(tmp_path))


# ---- end to end ------------------------------------------------------------------------------------------
def test_a_tiny_balanced_run_reports_its_loss_weighted(tmp_path):
    from jaxft import predict

    kept = _imbalanced_train(tmp_path / "train.jsonl", 4)
    config = tiny.get_config()
    config.data.train_path = str(tmp_path / "train.jsonl")
    config.data.class_weights = "balanced"
    config.training.num_train_steps = 4
    config.training.eval_every = 4
    workdir = tmp_path / "run"
    final = train.train_and_evaluate(config, str(workdir))
    y = np.array([json.loads(line)["label"] == "positive" for line in kept], np.int64)
    expected = compute_class_weight("balanced", classes=np.arange(2), y=y)
    saved = json.loads((workdir / train.CLASS_WEIGHTS).read_text())
    named = dict(zip(["negative", "positive"], expected, strict=True))
    assert saved == {"class_weights": "balanced", "weights": named}
    report = json.loads((workdir / "eval/final_eval.json").read_text())
    assert report["loss_class_weights"] == named
    assert "loss weighted by data.class_weights" in (workdir / "eval/final_eval.txt").read_text()
    # The reported loss is PyTorch's weighted cross-entropy of the reported parameters' predictions on dev.
    run = predict.load_run(str(workdir))
    examples = Classification().read(common.shipped("demo_sentiment/dev.jsonl"), run.config.data)
    log_probabilities = np.log(predict.predict_probabilities(run, examples))
    labels = [["negative", "positive"].index(example.label) for example in examples]
    reference = float(F.nll_loss(_torch(log_probabilities), _long(labels), weight=_torch(expected)))
    assert final["eval"]["loss"] == pytest.approx(reference, rel=1e-5)
