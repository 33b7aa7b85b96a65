"""Multi-label: labels from JSONL lists and separator-joined CSV/TSV cells, an sklearn-equal report, bad
labels refused naming file and line, the threshold chosen on the eval split, a tiny end-to-end run,
prediction and export (multi-label problem)."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics

from jaxft import export, predict, tasks
from jaxft.configs import default, multilabel
from jaxft.errors import UserError
from jaxft.tasks.base import PER_EXAMPLE
from jaxft.tasks.multilabel import THRESHOLDS, MultiLabel, choose_threshold, multilabel_report
from jaxft.training import train
from tests.helpers import check_final_examples

WORDS = "the film was great and you got two hours of book staff room after first week".split()
LABELS = ["art", "food", "sport", "travel"]


def _data():
    config = default.get_config()
    config.data.label_field = "labels"
    return config.data


def test_reads_jsonl_lists_and_separated_cells(tmp_path):
    task = MultiLabel(separator="|")
    path = tmp_path / "a.jsonl"
    rows = [
        {"text": "a", "labels": ["x", "y", "x"]},
        {"text": "b", "labels": []},
        {"text": "c", "labels": "y|z"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = task.read(str(path), _data())
    assert [e.labels for e in examples] == [("x", "y"), (), ("y", "z")]
    assert task.label_names(examples, _data()) == ["x", "y", "z"]
    np.testing.assert_array_equal(task.encode(examples, ["x", "y", "z"]), [[1, 1, 0], [0, 0, 0], [0, 1, 1]])
    path = tmp_path / "a.tsv"
    path.write_text("text\tlabels\na\tx| y\nb\t\nc\tz\n")
    assert [e.labels for e in task.read(str(path), _data())] == [("x", "y"), (), ("z",)]


@pytest.mark.parametrize(
    "name, content, words",
    [
        (
            "a.jsonl",
            '{"text": "a", "labels": ["x"]}\n{"text": "b", "labels": 3}\n',
            [":2:", "list of strings"],
        ),
        ("a.jsonl", '{"text": "a", "labels": ["x"]}\n{"text": "b"}\n', [":2:", "no key 'labels'"]),
        ("a.csv", "text,labels\na,\nb,\n", ["no labels found", "'labels'"]),
        ("a.csv", "text,other\na,x\n", ["no labels found"]),
    ],
    ids=["not-a-list", "missing-key", "all-empty", "missing-column"],
)
def test_bad_label_cells_fail_naming_the_file(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError) as info:
        MultiLabel().read(str(path), _data())
    assert str(info.value).startswith(str(path)) and all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize("seed", range(3))
def test_report_equals_sklearn_multilabel_report(seed):
    rng = np.random.default_rng(seed)
    truth = (rng.random((40, 4)) < 0.35).astype(np.float32)
    predictions = (rng.random((40, 4)) < 0.35).astype(np.int32)
    predictions[:, 3] = 0  # a label never predicted
    report, text = multilabel_report(truth, predictions, LABELS)
    kwargs = dict(target_names=LABELS, zero_division=0, digits=4)
    assert report == sklearn.metrics.classification_report(truth, predictions, output_dict=True, **kwargs)
    assert text == sklearn.metrics.classification_report(truth, predictions, **kwargs)
    assert list(report)[-4:] == ["micro avg", "macro avg", "weighted avg", "samples avg"]


def test_the_host_thresholds_the_device_probabilities_as_the_device_would():
    logits = jax.random.normal(jax.random.key(0), (64, 4)) * 3
    batch = {"labels": jnp.zeros((64, 4)), "weights": jnp.ones(64)}
    probabilities = np.asarray(MultiLabel().eval_outputs(logits, batch)[PER_EXAMPLE]["probability"])
    split = type("Split", (), {"labels": np.zeros((64, 4), np.float32), "name": "eval"})
    totals = {"loss_sum": 1.0, "count": 64, PER_EXAMPLE: {"probability": probabilities}}
    for threshold in (0.5, 0.27, 0.9):
        result = MultiLabel(threshold=threshold).report(totals, split, LABELS, None)
        expected = np.asarray(jax.nn.sigmoid(logits) > threshold)  # the device's own comparison
        np.testing.assert_array_equal(result.examples["predicted"], expected)
        assert result.extra["threshold"] == threshold
        assert f"a label is predicted when its probability exceeds {threshold:g}" in result.text


def test_choose_threshold_by_hand():
    # Label x: positives at 0.3 and 0.35, a negative at 0.1; label y: positives at 0.4 and 0.45, a
    # negative at 0.15. Every threshold from 0.15 (0.15 is not above 0.15) to 0.29 separates both: macro-F1
    # 1; ties go to the lowest. Micro-F1 the same here.
    truth = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probabilities = np.array([[0.3, 0.15], [0.1, 0.4], [0.35, 0.45], [0.05, 0.05]], np.float32)
    assert choose_threshold(truth, probabilities, "macro_f1") == (0.15, 1.0)
    assert choose_threshold(truth, probabilities, "micro_f1") == (0.15, 1.0)
    # At task.threshold's default, 0.5, nothing is predicted: macro-F1 0.
    report = MultiLabel(threshold=0.5).report(
        {"loss_sum": 0.0, "count": 4, PER_EXAMPLE: {"probability": probabilities}},
        type("Split", (), {"labels": truth.astype(np.float32), "name": "eval"}),
        ["x", "y"],
        None,
    )
    assert report.metrics["macro_f1"] == 0.0


@pytest.mark.parametrize("metric, average", [("macro_f1", "macro"), ("micro_f1", "micro")])
@pytest.mark.parametrize("seed", range(3))
def test_choose_threshold_is_the_best_of_the_grid_by_sklearn(seed, metric, average):
    rng = np.random.default_rng(seed)
    truth = (rng.random((200, 6)) < 0.2).astype(np.int64)
    probabilities = np.clip(truth * 0.3 + rng.random((200, 6)) * 0.6, 0, 1).astype(np.float32)
    scores = {
        float(t): sklearn.metrics.f1_score(truth, probabilities > t, average=average, zero_division=0)
        for t in np.round(np.arange(0.01, 1.0, 0.01), 2)
    }
    best = max(scores.values())
    threshold, value = choose_threshold(truth, probabilities, metric)
    assert value == best and threshold == min(t for t, v in scores.items() if v == best)
    assert len(THRESHOLDS) == 99 and THRESHOLDS[0] == 0.01 and THRESHOLDS[-1] == 0.99
    # tuned(): that threshold, and what was chosen; a task that does not tune is itself.
    split = type("Split", (), {"labels": truth.astype(np.float32), "name": "eval"})
    totals = {PER_EXAMPLE: {"probability": probabilities}}
    task, chosen = MultiLabel(tune_threshold=metric).tuned(totals, split)
    assert task == MultiLabel(threshold=threshold, tune_threshold=metric)
    assert chosen == {"threshold": threshold, "metric": metric, "split": "eval", "value": value}
    assert MultiLabel().tuned(totals, split) == (MultiLabel(), {})


def _jsonl(seed: int, count: int, unknown_at: int | None = None) -> str:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        labels = [str(x) for x in rng.choice(LABELS, int(rng.integers(0, 3)), replace=False)]
        if i + 1 == unknown_at:
            labels.append("poetry")
        lines.append(json.dumps({"text": " ".join(rng.choice(WORDS, 5)), "labels": labels}))
    return "\n".join(lines) + "\n"


def _config(tmp_path, eval_text=None):
    config = multilabel.get_config("tiny")
    (tmp_path / "train.jsonl").write_text(_jsonl(0, 64))
    (tmp_path / "dev.jsonl").write_text(eval_text or _jsonl(1, 19))
    config.data.train_path = str(tmp_path / "train.jsonl")
    config.data.eval_path = str(tmp_path / "dev.jsonl")
    config.data.test_path = None
    config.data.format, config.data.has_header = "auto", True
    config.data.text_field, config.data.label_field = "text", "labels"
    config.training.num_train_steps = 4
    config.training.eval_every = 4
    config.training.checkpoint_every = 4
    return config


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("multilabel")
    final = train.train_and_evaluate(_config(tmp_path), str(tmp_path / "run"))
    return tmp_path / "run", final


def test_end_to_end_report_holds_every_example(multilabel_run):
    workdir, final = multilabel_run
    assert json.loads((workdir / "labels.json").read_text())["labels"] == LABELS
    saved = json.loads((workdir / "eval/final_eval.json").read_text())
    truth = [json.loads(line)["labels"] for line in _jsonl(1, 19).splitlines()]
    for label in LABELS:  # support: the examples that have the label
        assert saved["report"][label]["support"] == sum(label in t for t in truth)
    assert saved["report"]["samples avg"]["support"] == sum(map(len, truth))
    assert final["eval"]["num_examples"] == 19 and saved["task"] == "multilabel"
    expected = {
        "micro_f1",
        "macro_f1",
        "weighted_f1",
        "samples_f1",
        "subset_accuracy",
        "loss",
        "num_examples",
    }
    assert set(final["eval"]) == expected
    assert final["eval"]["micro_f1"] == saved["report"]["micro avg"]["f1-score"]
    check_final_examples(str(workdir), final["eval"], "multilabel", 19)
    # The final reports' threshold is the one that maximises macro-F1 on eval (the config's tune_threshold),
    # recorded where predict reads it and in final_metrics.json.
    tuned = json.loads((workdir / "tuned.json").read_text())
    assert tuned["metric"] == "macro_f1" and 0 < tuned["threshold"] < 1
    assert final["eval"]["macro_f1"] == tuned["value"] and saved["threshold"] == tuned["threshold"]
    assert json.loads((workdir / "final_metrics.json").read_text())["tuned"] == tuned


def test_prediction_and_export_agree_with_the_evaluation(multilabel_run, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    workdir, final = multilabel_run
    run = predict.load_run(str(workdir))
    threshold = json.loads((workdir / "tuned.json").read_text())["threshold"]
    assert run.config.task.threshold == threshold  # predict uses the tuned threshold, not config.json's 0.5
    examples = tasks.from_config(run.config).read(run.config.data.eval_path, run.config.data)
    probabilities, _ = predict.predict_outputs(run, examples)
    truth = tasks.from_config(run.config).encode(examples, run.label_names)
    for average in ("micro", "macro"):  # the best checkpoint, the same examples, the tuned threshold
        f1 = sklearn.metrics.f1_score(truth, probabilities > threshold, average=average, zero_division=0)
        assert f1 == pytest.approx(final["eval"][f"{average}_f1"])
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "the film was great"}) + "\n")
    assert (
        predict.main(["--workdir", str(workdir), "--input", str(source), "--output", str(tmp_path / "o")])
        == 0
    )
    row = json.loads((tmp_path / "o").read_text())
    assert set(row["probabilities"]) == set(LABELS)
    assert row["labels"] == [name for name in LABELS if row["probabilities"][name] > threshold]
    out = export.export(str(workdir), str(tmp_path / "hf"))
    readme = (tmp_path / "hf" / "README.md").read_text()
    assert f"exceeds {threshold:g} (chosen on the eval split by macro_f1)" in readme
    model = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    assert model.config.problem_type == "multi_label_classification"
    encoded = run.tokenizer([e.text for e in examples[:8]], padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = torch.sigmoid(model(**encoded).logits).numpy()
    np.testing.assert_allclose(probabilities[:8], theirs, atol=1e-4, rtol=0)


def test_unknown_eval_label_fails_naming_file_and_line(tmp_path):
    config = _config(tmp_path, eval_text=_jsonl(1, 6, unknown_at=4))
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert str(info.value).startswith(f"{tmp_path / 'dev.jsonl'}:4: label 'poetry' is not in the label set")
    config = _config(tmp_path)
    config.task.threshold = 1.5
    with pytest.raises(UserError, match="task.threshold"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_damaged_tuned_threshold_is_one_line_naming_the_file(multilabel_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(multilabel_run[0], workdir)
    damaged = (("{", "unreadable"), ('{"threshold": 1.5}', "'threshold' must be a number in (0, 1)"))
    for text, words in damaged:
        (workdir / "tuned.json").write_text(text)
        with pytest.raises(UserError) as info:
            predict.load_run(str(workdir))
        assert str(info.value).startswith(str(workdir / "tuned.json")) and words in str(info.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"tune_threshold": "f1"}, "config task.tune_threshold='f1' must be one of , macro_f1, micro_f1"),
        ({"eval_path": None}, "config task.tune_threshold='macro_f1' needs data.eval_path"),
        ({"name": "classification"}, "config task.tune_threshold applies to task.name='multilabel', not"),
    ],
)
def test_tune_threshold_is_refused_where_it_cannot_apply(tmp_path, changes, message):
    config = _config(tmp_path)
    for key, value in changes.items():
        section = config.data if key == "eval_path" else config.task
        section[key] = value
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert str(info.value).startswith(message), str(info.value)
    assert not (tmp_path / "run").exists()
