"""Tests for jaxft.training.writers: the JSON-lines record, TensorBoard events, no-op writers and the curve
plot."""

import glob
import logging
import os
import struct
import sys

import numpy as np
import pytest

from jaxft.training import writers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_events(logdir):
    """Reads every scalar in a TensorBoard log dir as (tag, step, value), by parsing the TFRecord framing."""
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    scalars = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        offset = 0
        while offset < len(data):
            # Each record: uint64 length, uint32 length CRC, payload, uint32 payload CRC.
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            payload = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                scalars.append((value.tag, event.step, value.simple_value))
        assert offset == len(data)
    return scalars


def test_jsonl_round_trip(tmp_path):
    with writers.MetricWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write_scalars(10, {"loss": 0.5, "learning_rate": np.float32(2e-5)})
        writer.write_scalars(20, {"loss": 0.25, "learning_rate": 4e-5})
        writer.write_eval(20, "dev", {"accuracy": 0.75, "num_examples": np.int64(8)})
        # Flushed on write: a killed run would already have this line on disk.
        assert len(writers.read_metrics(writer.path)) == 3
    records = writers.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [(r["kind"], r["step"]) for r in records] == [("train", 10), ("train", 20), ("eval", 20)]
    assert records[0]["loss"] == 0.5 and records[0]["learning_rate"] == float(np.float32(2e-5))
    assert records[2] == {**records[2], "split": "dev", "accuracy": 0.75, "num_examples": 8}
    assert all(isinstance(r["time"], float) for r in records)
    assert set(records[1]) == {"kind", "step", "time", "loss", "learning_rate"}


def test_second_writer_appends(tmp_path):
    with writers.MetricWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write_scalars(1, {"loss": 1.0})
    with writers.MetricWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write_scalars(2, {"loss": 0.5})
    assert [r["step"] for r in writers.read_metrics(str(tmp_path / "metrics.jsonl"))] == [1, 2]


def test_line_cut_by_a_killed_run_is_skipped(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1, "loss": 1.0}\n{"kind": "train", "st')
    with writers.MetricWriter(str(tmp_path), tensorboard=False) as writer:
        writer.write_scalars(2, {"loss": 0.5})
    with caplog.at_level(logging.WARNING):
        records = writers.read_metrics(str(path))
    assert [r["step"] for r in records] == [1, 2]
    assert "metrics.jsonl:2" in caplog.text


def test_reserved_names_rejected(tmp_path):
    with writers.MetricWriter(str(tmp_path), tensorboard=False) as writer:
        with pytest.raises(ValueError, match="reserved"):
            writer.write_scalars(1, {"step": 3.0})


def test_tensorboard_events_hold_tags_steps_and_values(tmp_path):
    pytest.importorskip("tensorboardX")
    with writers.MetricWriter(str(tmp_path)) as writer:
        writer.write_scalars(10, {"loss": 0.6931, "learning_rate": 5e-5})
        writer.write_scalars(20, {"loss": 0.4})
        writer.write_eval(20, "dev", {"accuracy": 0.8125, "macro_f1": 0.7})
        writer.write_eval(20, "dev_mismatched", {"accuracy": 0.5})
    events = _read_events(str(tmp_path / "tensorboard"))
    # simple_value is a float32 in the proto.
    expected = [
        ("train/loss", 10, 0.6931),
        ("train/learning_rate", 10, 5e-5),
        ("train/loss", 20, 0.4),
        ("eval/dev/accuracy", 20, 0.8125),
        ("eval/dev/macro_f1", 20, 0.7),
        ("eval/dev_mismatched/accuracy", 20, 0.5),
    ]
    assert events == [(tag, step, float(np.float32(value))) for tag, step, value in expected]


def test_missing_tensorboardx_warns_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # makes `import tensorboardX` raise ImportError
    monkeypatch.setattr(writers, "_warned_no_tensorboardx", False)
    with caplog.at_level(logging.WARNING, logger="jaxft.training.writers"):
        for run in ("a", "b"):
            with writers.MetricWriter(str(tmp_path / run)) as writer:
                writer.write_scalars(1, {"loss": 1.0})
    assert caplog.text.count("tensorboardX is not installed") == 1
    assert not (tmp_path / "a" / "tensorboard").exists()
    assert len(writers.read_metrics(str(tmp_path / "b" / "metrics.jsonl"))) == 1


def test_disabled_writer_creates_nothing(tmp_path):
    workdir = tmp_path / "run"
    writer = writers.MetricWriter(str(workdir), enabled=False)
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_eval(1, "dev", {"accuracy": 1.0})
    writer.flush()
    writer.close()
    assert not workdir.exists()

    workdir.mkdir()
    with writers.MetricWriter(str(workdir), enabled=False) as writer:
        writer.write_scalars(1, {"loss": 1.0})
    assert os.listdir(workdir) == []


def test_progress_bar(capsys):
    bar = writers.ProgressBar(total=10, initial=2, desc="train")
    bar.update(3, loss=np.float32(0.123456), lr=5e-5, ex_per_s=1234.5)
    bar.close()
    bar.close()
    err = capsys.readouterr().err
    assert "5/10" in err and "loss=0.1235, lr=5e-05, ex_per_s=1234" in err

    quiet = writers.ProgressBar(total=10, enabled=False)
    quiet.update(3, loss=0.1)
    quiet.close()
    assert capsys.readouterr().err == ""


def test_plot_curves(tmp_path):
    with writers.MetricWriter(str(tmp_path), tensorboard=False) as writer:
        for step in range(1, 6):
            writer.write_scalars(step, {"loss": 1.0 / step, "learning_rate": 1e-5 * step})
        writer.write_eval(5, "dev", {"accuracy": 0.7, "macro_f1": 0.6, "loss": 0.5, "num_examples": 10})
    out = tmp_path / "plots" / "curves.png"
    writers.plot_curves(str(tmp_path / "metrics.jsonl"), str(out))
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_plot_curves_without_eval_rows_or_any_rows(tmp_path):
    with writers.MetricWriter(str(tmp_path / "train_only"), tensorboard=False) as writer:
        writer.write_scalars(1, {"loss": 1.0})
        writer.write_scalars(1, {"loss": 0.9})  # a resumed run logging step 1 again
    writers.plot_curves(str(tmp_path / "train_only" / "metrics.jsonl"), str(tmp_path / "a.png"))
    assert (tmp_path / "a.png").read_bytes().startswith(PNG_MAGIC)

    (tmp_path / "empty.jsonl").write_text("")
    writers.plot_curves(str(tmp_path / "empty.jsonl"), str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").read_bytes().startswith(PNG_MAGIC)
