"""Prediction from a workdir, and export to Hugging Face format that PyTorch loads with equal outputs."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from jaxft import export, predict
from jaxft.configs import common
from jaxft.data import readers
from jaxft.errors import UserError

DEV = common.shipped("demo_sentiment/dev.jsonl")


def test_predict_writes_labels_and_probabilities_in_input_order(tiny_run, tmp_path):
    workdir, _ = tiny_run
    source = tmp_path / "in.jsonl"
    texts = ["the food was wonderful", "a dull, slow and tiresome film", "it rained"]
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out.jsonl"
    assert predict.main(["--workdir", str(workdir), "--input", str(source), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == texts
    for row in rows:
        assert set(row["probabilities"]) == {"negative", "positive"}
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)


def _predict_error(capsys, workdir, output, *extra) -> str:
    """The stderr of a predict run that must fail as bad input: exit status 2 and one `error:` line."""
    argv = ["--workdir", str(workdir), "--input", DEV, "--output", str(output), *extra]
    assert predict.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


@pytest.mark.parametrize("size", ["0", "-5"])
def test_predict_refuses_a_batch_size_below_one_before_loading_the_run(tmp_path, capsys, size):
    # tmp_path is no workdir: the flag is checked first, or the error would be about the workdir.
    err = _predict_error(capsys, tmp_path, tmp_path / "out.jsonl", "--batch-size", size)
    assert err.startswith(f"error: --batch-size {size}: must be a positive")
    assert os.listdir(tmp_path) == []


def test_predict_refuses_an_unwritable_output_before_inference_and_leaves_it_as_it_was(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    err = _predict_error(capsys, tmp_path, tmp_path / "taken")  # no workdir: checked before loading it
    assert err.startswith(f"error: --output {tmp_path / 'taken'}: is a directory")
    plain = tmp_path / "plain"
    plain.write_text("keep me")
    err = _predict_error(capsys, tmp_path, plain / "out.jsonl")
    assert err.startswith(f"error: --output {plain / 'out.jsonl'}: {plain} is a file, not a directory")
    assert sorted(os.listdir(tmp_path)) == ["plain", "taken"]  # no stray .tmp
    assert os.listdir(tmp_path / "taken") == ["file"]
    assert (tmp_path / "taken" / "file").read_text() == plain.read_text() == "keep me"


def test_predict_creates_the_outputs_missing_parent_directories(tiny_run, tmp_path):
    out = tmp_path / "new" / "deeper" / "out.jsonl"
    argv = ["--workdir", str(tiny_run[0]), "--input", DEV, "--output", str(out)]
    assert predict.main(argv) == 0
    assert len(out.read_text().splitlines()) == len(Path(DEV).read_text().splitlines())
    assert os.listdir(out.parent) == ["out.jsonl"]


def test_predicted_probabilities_match_the_models_eval_accuracy(tiny_run):
    workdir, final = tiny_run
    run = predict.load_run(str(workdir))
    examples = readers.read_examples(run.config.data.eval_path, text_field="text", label_field="label")
    probabilities = predict.predict_probabilities(run, examples)
    accuracy = np.mean(
        [run.label_names[p] == e.label for p, e in zip(probabilities.argmax(1), examples, strict=True)]
    )
    assert accuracy == pytest.approx(final["eval"]["accuracy"])  # same best parameters, same examples


@pytest.mark.parametrize("parallelism", ["dp", "fsdp"])
def test_prediction_under_the_sharded_layouts_equals_pmaps(tiny_run, parallelism):
    run = predict.load_run(str(tiny_run[0]))
    examples = readers.read_examples(run.config.data.eval_path, text_field="text", label_field="label")
    expected = predict.predict_probabilities(run, examples)
    run.config.training.parallelism = parallelism  # as a run trained with it records
    run.config.training.fsdp_min_size = 0  # shard the tiny encoder's leaves too
    np.testing.assert_allclose(predict.predict_probabilities(run, examples), expected, rtol=1e-6, atol=1e-7)


def test_exported_model_gives_the_same_probabilities_in_pytorch(tiny_run, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    workdir, _ = tiny_run
    out = export.export(str(workdir), str(tmp_path / "hf"))
    model = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    run = predict.load_run(str(workdir))
    examples = readers.read_examples(run.config.data.eval_path, text_field="text", label_field="label")[:20]
    ours = predict.predict_probabilities(run, examples)
    encoded = tokenizer(
        [e.text for e in examples],
        truncation=True,
        max_length=run.config.data.max_seq_length,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        theirs = torch.softmax(model(**encoded).logits, -1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_export_refuses_a_non_empty_target_and_a_non_run(tiny_run, tmp_path):
    workdir, _ = tiny_run
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    with pytest.raises(UserError, match="not an empty directory"):
        export.export(str(workdir), str(tmp_path / "taken"))
    assert (tmp_path / "taken" / "file").read_text() == "keep me"
    (tmp_path / "plain").write_text("keep me")
    with pytest.raises(UserError, match=r"--out .*plain: is a file, not a directory"):
        export.export(str(workdir), str(tmp_path / "plain"))
    with pytest.raises(UserError, match=r"--out .*plain/hf: .*plain is a file, not a directory"):
        export.export(str(workdir), str(tmp_path / "plain" / "hf"))
    assert (tmp_path / "plain").read_text() == "keep me"
    with pytest.raises(UserError, match="not a jaxft workdir"):
        export.export(str(tmp_path), str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["plain", "taken"]


def test_exported_files_all_have_the_same_mode(tiny_run, tmp_path):
    out = export.export(str(tiny_run[0]), str(tmp_path / "hf"))
    modes = {name: stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) for name in os.listdir(out)}
    assert "model.safetensors" in modes and "config.json" in modes
    assert len(set(modes.values())) == 1, modes  # safetensors' own save_file made its file 0600
