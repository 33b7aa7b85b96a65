"""Tests of `jaxft.training.trackers`: MLflow and W&B hold what metrics.jsonl holds, a resumed run continues
the same tracker runs, a missing package is one line, and the default loggers are what a run always wrote.

MLflow is read back with its own client from a file store in tmp_path; W&B's offline run is read from its
`.wandb` file (LevelDB-log framed protobuf records, parsed here with W&B's own `Record` message).
"""

import glob
import json
import os
import struct
import sys

import pytest

from jaxft import config as config_lib
from jaxft.configs import default, tiny
from jaxft.errors import UserError
from jaxft.training import trackers, train, writers
from jaxft.training import workdir as workdir_lib

LOGGERS = ("jsonl", "tensorboard", "mlflow", "wandb")


def _flatten(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _jsonl_series(workdir) -> dict[str, list[tuple[int, float]]]:
    """Every number of metrics.jsonl as tag -> [(step, value), ...] in file order, tagged as TensorBoard."""
    series = {}
    for record in writers.read_metrics(str(workdir / "metrics.jsonl")):
        for name, value in record.items():
            if name in ("kind", "step", "time", "split"):
                continue
            tag = writers.metric_tag(record["kind"], record.get("split"), name)
            series.setdefault(tag, []).append((record["step"], value))
    return series


def _wandb_records(run_dir: str) -> list:
    """The protobuf records of an offline W&B run: a 7-byte header, then 32 KiB blocks of records framed
    as in LevelDB's log (crc32, length, type; FULL=1 or FIRST/MIDDLE/LAST=2/3/4)."""
    pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
    [path] = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _wandb_run(run_dir: str) -> dict:
    """What an offline run recorded: its id, tags, config, history rows by step and final summary."""
    run_id, tags, config, history, summary = None, [], {}, {}, {}
    for record in _wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":  # at the start, and again when the tags are set
            run_id, tags = record.run.run_id, list(record.run.tags)
            config.update({_item_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({_item_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row = {_item_key(i): json.loads(i.value_json) for i in record.history.item}
            history[row["_step"]] = {k: v for k, v in row.items() if not k.startswith("_")}
        elif kind == "summary":
            summary.update({_item_key(i): json.loads(i.value_json) for i in record.summary.update})
    return {"id": run_id, "tags": tags, "config": config, "history": history, "summary": summary}


def _config(steps: int):
    config = tiny.get_config()
    config.training.num_train_steps = steps
    config.training.eval_every = 2
    config.training.checkpoint_every = 2
    config.data.num_buckets = 1
    config.data.max_eval_examples = 16
    config.training.loggers = LOGGERS
    return config


def _check_mlflow(client, run_id, workdir, config_json):
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    series = _jsonl_series(workdir)
    final = json.loads((workdir / "final_metrics.json").read_text())
    finals = {f"final/eval/{k}": v for k, v in final["eval"].items()}
    assert set(run.data.metrics) == set(series) | set(finals)
    for tag, points in series.items():
        history = [(m.step, m.value) for m in client.get_metric_history(run_id, tag)]
        assert [step for step, _ in history] == [step for step, _ in points], tag
        assert [value for _, value in history] == pytest.approx([value for _, value in points], rel=1e-6)
    last = max(step for points in series.values() for step, _ in points)
    for tag, value in finals.items():  # logged at the last step of each start that reached its end
        metric = client.get_metric_history(run_id, tag)[-1]
        assert (metric.step, metric.value) == (last, pytest.approx(value, rel=1e-6))
    expected = {k: v if isinstance(v, str) else json.dumps(v) for k, v in _flatten(config_json).items()}
    return run, expected


def test_mlflow_and_wandb_hold_the_run_and_a_resumed_run_continues_them(tmp_path, monkeypatch):
    mlflow_tracking = pytest.importorskip("mlflow.tracking")
    pytest.importorskip("wandb")
    store = (tmp_path / "store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    for name in ("MLFLOW_ALLOW_FILE_STORE", "WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    workdir = tmp_path / "run"
    train.train_and_evaluate(_config(4), str(workdir))
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # set only while MLflow ran
    assert workdir_lib.foreign_entries(str(workdir)) == []
    ids = json.loads((workdir / trackers.TRACKERS_FILE).read_text())
    assert ids["mlflow"]["tracking_uri"] == store and ids["mlflow"]["experiment"] == "jaxft"

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read the store back here
    client = mlflow_tracking.MlflowClient(store)
    config_json = json.loads((workdir / "config.json").read_text())
    run, params = _check_mlflow(client, ids["mlflow"]["run_id"], workdir, config_json)
    assert run.data.params == params
    assert params["training.loggers"] == json.dumps(list(LOGGERS))
    tags = {
        "task": "classification", "model": "random_init", "strategy": "full", "peft": "none",
        "adversarial": "none", "regularization": "none", "seed": "0",
    }  # fmt: skip
    assert {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")} == tags
    assert run.info.experiment_id == client.get_experiment_by_name("jaxft").experiment_id
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    artifacts += [a.path for a in client.list_artifacts(run.info.run_id, "eval")]
    assert sorted(artifacts) == [
        "curves.png", "eval", "eval/final_eval.json", "eval/final_eval.txt", "eval/final_eval_confusion.png",
        "eval/final_eval_examples.npz", "final_metrics.json",
    ]  # fmt: skip
    kept = client.download_artifacts(run.info.run_id, "eval/final_eval.txt", str(tmp_path / "down"))
    assert open(kept).read() == (workdir / "eval/final_eval.txt").read_text()

    [wandb_dir] = glob.glob(str(workdir / "wandb" / "offline-run-*"))
    recorded = _wandb_run(wandb_dir)
    assert recorded["id"] == ids["wandb"]["run_id"]
    assert {k: v for k, v in recorded["config"].items() if k != "_wandb"} == _flatten(config_json)
    assert sorted(recorded["tags"]) == sorted(f"{k}:{v}" for k, v in tags.items())
    expected_rows = {}
    for tag, points in _jsonl_series(workdir).items():
        for step, value in points:
            expected_rows.setdefault(step, {})[tag] = value
    assert recorded["history"] == expected_rows
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert {k: v for k, v in recorded["summary"].items() if k.startswith("final/")} == {
        f"final/eval/{k}": v for k, v in final["eval"].items()
    }
    assert os.path.exists(os.path.join(wandb_dir, "files", "eval", "final_eval.txt"))

    # Resumed to twice the steps: the same MLflow run goes on with the whole history; W&B the same id.
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    train.train_and_evaluate(_config(8), str(workdir))
    assert json.loads((workdir / trackers.TRACKERS_FILE).read_text()) == ids
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [ids["mlflow"]["run_id"]]
    config_json = json.loads((workdir / "config.json").read_text())
    resumed, params = _check_mlflow(client, ids["mlflow"]["run_id"], workdir, config_json)
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "train/loss")]
    assert steps == [2, 4, 6, 8]
    # MLflow keeps a param's first value; the changed one is a tag.
    assert resumed.data.params == {**params, "training.num_train_steps": "4"}
    assert resumed.data.tags["config.training.num_train_steps"] == "8"
    runs_dirs = sorted(glob.glob(str(workdir / "wandb" / "offline-run-*")))
    assert len(runs_dirs) == 2 and runs_dirs[0] == wandb_dir
    assert _wandb_run(runs_dirs[1])["id"] == ids["wandb"]["run_id"]
    assert set(_wandb_run(runs_dirs[1])["history"]) == {6, 8}


@pytest.mark.parametrize(
    ("logger", "module", "title"), [("mlflow", "mlflow", "MLflow"), ("wandb", "wandb", "Weights & Biases")]
)
def test_a_missing_tracker_package_is_one_line_before_anything_is_written(
    tmp_path, monkeypatch, logger, module, title
):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` raise ImportError
    config = tiny.get_config()
    config.training.loggers = ("jsonl", logger)
    workdir = tmp_path / "run"
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(config, str(workdir))
    assert str(info.value) == (
        f"config training.loggers has {logger!r}, which needs {title}: pip install 'jaxft[{logger}]'"
    )
    assert not workdir.exists()


def test_default_loggers_are_jsonl_and_tensorboard_as_before(tmp_path):
    config = default.get_config()
    assert config_lib.logger_names(config.training.loggers) == ("tensorboard", "jsonl")
    writer = trackers.create_writer(config, str(tmp_path / "a"), enabled=True)
    assert [type(logger) for logger in writer.loggers] == [writers.TensorBoardLogger, writers.JsonlLogger]
    with writer, writers.MetricWriter(str(tmp_path / "b")) as before:
        for w in (writer, before):
            w.write_scalars(2, {"loss": 0.5, "learning_rate": 1e-3})
            w.write_eval(2, "eval", {"accuracy": 0.75})
    strip = lambda path: [{k: v for k, v in r.items() if k != "time"} for r in writers.read_metrics(path)]
    assert (
        strip(str(tmp_path / "a/metrics.jsonl"))
        == strip(str(tmp_path / "b/metrics.jsonl"))
        == [
            {"kind": "train", "step": 2, "loss": 0.5, "learning_rate": 1e-3},
            {"kind": "eval", "step": 2, "split": "eval", "accuracy": 0.75},
        ]
    )
    config.training.tensorboard = False  # the older switch still turns TensorBoard off
    writer = trackers.create_writer(config, str(tmp_path / "c"), enabled=True)
    assert [type(logger) for logger in writer.loggers] == [writers.JsonlLogger]
    writer.close()
    assert trackers.create_writer(config, str(tmp_path / "d"), enabled=False).loggers == []
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("value", "names"),
    [
        (("jsonl,mlflow",), ("jsonl", "mlflow")),  # --config.training.loggers=jsonl,mlflow
        ("wandb, jsonl", ("wandb", "jsonl")),
        ((), ()),
    ],
)
def test_logger_names_take_tuples_and_comma_strings(value, names):
    assert config_lib.logger_names(value) == names


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (("jsonl", "neptune"), "config training.loggers=('jsonl', 'neptune'): unknown logger 'neptune'"),
        (("jsonl,jsonl",), "config training.loggers=('jsonl,jsonl',): a logger is given twice"),
    ],
)
def test_bad_loggers_are_one_line_naming_the_key(value, message):
    config = tiny.get_config()
    config.training.loggers = value
    with pytest.raises(UserError) as info:
        config_lib.check(config)
    assert str(info.value) == f"{message}; choose from tensorboard, jsonl, mlflow, wandb"


def test_tags_name_the_strategy_as_compare_does():
    config = tiny.get_config()
    config.model.checkpoint = "/models/bert-base-uncased/"
    config.peft.method, config.adversarial.method = "lora", "fgm"
    config.regularization.rdrop_alpha, config.optimizer.layer_decay, config.seed = 1.0, 0.9, 3
    assert trackers.run_tags(config) == {
        "task": "classification", "model": "bert-base-uncased", "strategy": "lora+fgm+rdrop+llrd",
        "peft": "lora", "adversarial": "fgm", "regularization": "rdrop,llrd", "seed": "3",
    }  # fmt: skip
    flat = trackers.flat_config(config)
    assert flat["optimizer.layer_decay"] == 0.9 and flat["peft.lora_targets"] == ["query", "value"]
    assert flat["model.checkpoint"] == "/models/bert-base-uncased/" and flat["data.labels"] is None


def test_closing_the_writer_closes_every_logger_even_when_one_fails(tmp_path):
    closed = []

    class Broken(writers.Logger):
        def close(self, error=None):
            closed.append(("broken", error))
            raise OSError("disk gone")

    class Fine(writers.Logger):
        def close(self, error=None):
            closed.append(("fine", error))

    writer = writers.MetricWriter(str(tmp_path), loggers=[Fine(), Broken()])
    stop = KeyboardInterrupt()
    with pytest.raises(OSError, match="disk gone"):
        writer.close(stop)
    assert closed == [("broken", stop), ("fine", stop)]
    writer.close()  # a second close is harmless
