"""The Python API (`jaxft.finetune`, `jaxft.load`): configs by name, overrides, data in memory giving the
same run as the same data in a file, the caller's process left as it was, and a predictor whose outputs are
`jaxft-predict`'s and whose embeddings equal transformers' on the exported model."""

import copy
import json
import logging
import os
import signal
import sys
import threading

import numpy as np
import pytest

import jaxft
from jaxft import api
from jaxft import predict as predict_cli
from jaxft.configs import common
from jaxft.data import readers

DEMO = common.shipped("demo_sentiment")
TRAIN = [json.loads(line) for line in open(os.path.join(DEMO, "train.jsonl"), encoding="utf-8")]
DEV = [json.loads(line) for line in open(os.path.join(DEMO, "dev.jsonl"), encoding="utf-8")]
STEPS = {"training.num_train_steps": 3, "training.eval_every": 3, "training.progress_bar": False}
NO_TEST = {**STEPS, "data.test_path": None}  # the task configs' test split is a file of ../shared/data


# ---- configs and overrides ------------------------------------------------------------------------------


def test_every_shipped_config_resolves_by_name_and_module_name():
    for name in jaxft.configs.NAMES:
        config = api.resolve_config(name)
        assert config.to_dict() == jaxft.configs.get(name).to_dict()
        assert api.resolve_config(f"jaxft.configs.{name}").to_dict() == config.to_dict()
    gpu = jaxft.configs.get("sst2", "gpu")
    assert api.resolve_config("sst2:gpu").to_dict() == gpu.to_dict() != jaxft.configs.get("sst2").to_dict()
    assert api.resolve_config(jaxft.configs.path("tiny")).to_dict() == jaxft.configs.get("tiny").to_dict()


def test_a_config_object_is_copied_not_changed():
    config = jaxft.configs.get("tiny")
    before = copy.deepcopy(config.to_dict())
    resolved = api.resolve_config(config)
    api.apply_overrides(resolved, {"training.num_train_steps": 7, "optimizer.learning_rate": 1e-3})
    assert config.to_dict() == before
    assert resolved.training.num_train_steps == 7 and resolved.optimizer.learning_rate == 1e-3


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        ("nosuch", None, "config 'nosuch': no shipped config 'nosuch' (one of conll03,"),
        ("tiny", {"training.nope": 1}, "overrides: unknown config key 'training.nope'"),
        ("tiny", {"nope.x": 1}, "overrides: unknown config key 'nope' (in 'nope.x')"),
        ("tiny", {"training": 1}, "overrides: 'training' is a section; set its keys one by one"),
        ("tiny", {"training.batch_size": "x"}, "overrides: 'training.batch_size': Could not override"),
        ("missing.py", None, "config missing.py: no such file"),
        (3, None, "config: expected a ConfigDict or a config name, not int"),
    ],
)
def test_bad_configs_and_overrides_are_one_line(config, overrides, message):
    with pytest.raises(jaxft.UserError) as error:
        api.apply_overrides(api.resolve_config(config), overrides)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_command_line_takes_a_shipped_config_by_module_name(tmp_path):
    from jaxft import cli

    argv = [
        "jaxft-train",
        "--config",
        "jaxft.configs.sst2:gpu",
        "--config=jaxft.configs.tiny",
        "--workdir",
        "w",
    ]
    resolved = cli.resolve_config_names(argv)
    assert resolved[2] == jaxft.configs.path("sst2") + ":gpu"
    assert resolved[3] == "--config=" + jaxft.configs.path("tiny")
    assert cli.resolve_config_names(["x", "--config", "my/file.py"]) == ["x", "--config", "my/file.py"]
    # A command written down for others (compare's and a search's results) names a shipped config again.
    assert cli.config_names(resolved) == argv
    assert cli.config_name("my/file.py:cpu") == "my/file.py:cpu"


# ---- in-memory data: the same examples as the file ----------------------------------------------------


def _read(config, path):
    data = config.data
    return readers.read_examples(
        path, text_field=data.text_field, label_field=data.label_field, text_pair_field=data.text_pair_field,
        fmt=data.format,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["list", "dataframe", "dataset"])
def test_in_memory_rows_give_the_file_s_examples(tmp_path, kind):
    rows = TRAIN[:40]
    if kind == "dataframe":
        pd = pytest.importorskip("pandas")
        data = pd.DataFrame(rows)
    elif kind == "dataset":
        datasets = pytest.importorskip("datasets")
        data = datasets.Dataset.from_list(rows)
    else:
        data = rows
    config = jaxft.configs.get("tiny")
    path = api._data_path(data, "train", config, str(tmp_path))
    assert path == str(tmp_path / "data" / "train.jsonl")
    source = tmp_path / "source.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert [(e.text, e.label) for e in _read(config, path)] == [
        (e.text, e.label) for e in _read(config, str(source))
    ]


def test_dataset_class_labels_become_their_names():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    data = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 0, 1]}, features=features)
    assert api.rows_of(data, "train=") == [
        {"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": "pos"},
    ]  # fmt: skip


def test_pandas_missing_values_and_numpy_scalars_are_plain():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {"text": ["a", "b"], "label": [1, np.nan], "score": np.array([0.5, 2.0], np.float32)}
    )
    assert api.rows_of(frame, "train=") == [
        {"text": "a", "label": 1.0, "score": 0.5}, {"text": "b", "label": None, "score": 2.0},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (42, "train=: expected a path, a list of dicts, a pandas DataFrame or a datasets.Dataset, not int"),
        (["just text"], "train= row 0: expected a dict of fields, not str"),
    ],
)
def test_bad_in_memory_data_is_one_line(tmp_path, data, message):
    with pytest.raises(jaxft.UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        api._data_path(data, "train", jaxft.configs.get("tiny"), str(tmp_path))


def test_ner_and_qa_rows_are_written_in_the_files_their_tasks_read(tmp_path):
    from jaxft import tasks

    ner = jaxft.configs.get("conll03", "tiny")
    rows = [{"tokens": ["Ada", "went", "to", "Lyon"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]}]
    path = api._data_path(rows, "train", ner, str(tmp_path))
    sentences = tasks.from_config(ner).read(path, ner.data)
    assert [(s.words, s.tags) for s in sentences] == [
        (("Ada", "went", "to", "Lyon"), ("B-PER", "O", "O", "B-LOC"))
    ]

    qa = jaxft.configs.get("squad", "tiny")
    rows = [{"id": "q1", "question": "Who went?", "context": "Ada went to Lyon.",
             "answers": {"text": ["Ada"], "answer_start": [0]}}]  # fmt: skip
    path = api._data_path(rows, "train", qa, str(tmp_path))
    (example,) = tasks.from_config(qa).read(path, qa.data)
    assert (example.id, example.question, example.context) == ("q1", "Who went?", "Ada went to Lyon.")
    assert example.answers == (("Ada", 0),)

    with pytest.raises(
        jaxft.UserError, match=r"^train= row 0: no 'tokens' or 'words' field; the fields are x$"
    ):
        api._data_path([{"x": 1}], "train", ner, str(tmp_path))


# ---- finetune end to end ---------------------------------------------------------------------------------


def _process_state():
    root = logging.getLogger()
    return {
        "signals": (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)),
        "environ": dict(os.environ),
        "logging": (root.level, list(root.handlers), logging.getLogger("absl").level),
        "hooks": (sys.excepthook, threading.excepthook, sys.unraisablehook),
    }


def test_finetune_in_memory_equals_from_files_and_leaves_the_process_as_it_was(tmp_path):
    # What the libraries set when first imported (JAX, Orbax, tensorboardX: a few environment variables, a
    # logging handler) is theirs, not the run's: import them before taking the process's state.
    import tensorboardX  # noqa: F401

    import jaxft.training.train  # noqa: F401

    pd = pytest.importorskip("pandas")
    train_file, dev_file = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in TRAIN[:64]), encoding="utf-8")
    dev_file.write_text("".join(json.dumps(r) + "\n" for r in DEV[:24]), encoding="utf-8")
    before = _process_state()
    from_files = jaxft.finetune(
        "tiny", tmp_path / "files", train=str(train_file), eval=str(dev_file), overrides=STEPS
    )
    assert _process_state() == before
    in_memory = jaxft.finetune(
        jaxft.configs.get("tiny"), tmp_path / "memory", train=pd.DataFrame(TRAIN[:64]), eval=DEV[:24],
        overrides=STEPS,
    )  # fmt: skip
    assert in_memory.metrics == from_files.metrics
    assert in_memory.metrics["eval"]["num_examples"] == 24
    assert in_memory.best_step == 3 and in_memory.total_params == from_files.total_params
    assert in_memory.reports["eval"].startswith("              precision")
    assert sorted(in_memory.paths) == ["checkpoints", "config", "curves", "data", "eval", "labels", "metrics"]
    saved = json.loads(open(in_memory.paths["config"]).read())
    assert saved["data"]["train_path"] == os.path.join(in_memory.workdir, "data", "train.jsonl")

    # Resuming needs the same data; other data is refused in one line, and the run's files stay.
    again = jaxft.finetune("tiny", tmp_path / "memory", train=TRAIN[:64], eval=DEV[:24], overrides=STEPS)
    assert again.metrics == in_memory.metrics
    with pytest.raises(jaxft.UserError, match="^train=: differs from the data the run in .* was trained on"):
        jaxft.finetune("tiny", tmp_path / "memory", train=TRAIN[:63], eval=DEV[:24], overrides=STEPS)
    assert open(os.path.join(in_memory.workdir, "data", "train.jsonl")).read().count("\n") == 64


def test_finetune_ner_and_qa_from_rows_then_predict(tmp_path):
    ner_rows = [
        {"tokens": ["the", "cat", "sat", "on", "the", "mat"], "tags": ["O", "B-ANI", "O", "O", "O", "B-OBJ"]},
        {"tokens": ["a", "dog", "is", "good"], "tags": ["O", "B-ANI", "O", "O"]},
    ] * 8
    result = jaxft.finetune(
        "conll03:tiny", tmp_path / "ner", train=ner_rows, eval=ner_rows[:4], overrides=NO_TEST
    )
    assert result.metrics["eval"]["num_examples"] == 4
    (record,) = jaxft.load(result.workdir).predict(["the dog sat on the mat"])
    assert record["words"] == ["the", "dog", "sat", "on", "the", "mat"] and len(record["tags"]) == 6

    qa_rows = [
        {"id": f"q{i}", "question": "who sat ?", "context": "the cat sat on the mat .",
         "answers": {"text": ["the cat"], "answer_start": [0]}}
        for i in range(16)
    ]  # fmt: skip
    result = jaxft.finetune("squad:tiny", tmp_path / "qa", train=qa_rows, eval=qa_rows[:4], overrides=NO_TEST)
    (record,) = jaxft.load(result.workdir).predict([("who sat ?", "the cat sat on the mat .")])
    assert record["answer"] in "the cat sat on the mat ." and record["question"] == "who sat ?"


# ---- the predictor ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return jaxft.load(tiny_run[0])


def test_predict_returns_what_jaxft_predict_writes(tiny_run, predictor, tmp_path):
    texts = [row["text"] for row in DEV[:10]]
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    assert (
        predict_cli.main(["--workdir", str(tiny_run[0]), "--input", str(source), "--output", str(out)]) == 0
    )
    written = [json.loads(line) for line in out.read_text().splitlines()]
    got = predictor.predict(texts, batch_size=4)
    assert [r["label"] for r in got] == [r["label"] for r in written]
    for mine, theirs in zip(got, written, strict=True):
        assert mine["text"] == theirs["text"]
        assert mine["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-6)
    assert predictor.predict(texts[0]) == predictor.predict([texts[0]])
    assert predictor.predict([{"text": texts[1]}])[0]["label"] == got[1]["label"]
    assert predictor.labels == ["negative", "positive"]


def test_predict_names_the_bad_input(predictor):
    with pytest.raises(jaxft.UserError, match=r"^inputs\[1\]: a pair, but the run reads single texts"):
        predictor.predict(["fine", ("a", "b")])
    with pytest.raises(jaxft.UserError, match=r"^inputs\[0\]: no key 'text'"):
        predictor.predict([{"words": "x"}])
    with pytest.raises(jaxft.UserError, match="^inputs: nothing to predict$"):
        predictor.predict([])
    with pytest.raises(jaxft.UserError, match="^batch_size 0: must be a positive number of examples$"):
        predictor.predict(["x"], batch_size=0)


def test_embed_equals_transformers_on_the_exported_model(tiny_run, predictor, tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    from jaxft import export

    texts = [row["text"] for row in DEV[:6]]
    assert export.main(["--workdir", str(tiny_run[0]), "--out", str(tmp_path / "hf")]) == 0
    model = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=predictor.run.config.data.max_seq_length,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    mean = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(predictor.embed(texts, batch_size=4), mean, atol=1e-5)
    np.testing.assert_allclose(predictor.embed(texts, pooling="cls"), hidden[:, 0].numpy(), atol=1e-5)
    with pytest.raises(jaxft.UserError, match="^pooling 'max': must be 'mean' or 'cls'$"):
        predictor.embed(texts, pooling="max")
