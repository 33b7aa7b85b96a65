"""Prediction from a workdir, and export to Hugging Face format that PyTorch loads with equal outputs."""

import json

import numpy as np
import pytest

from jaxft import export, predict
from jaxft.data import readers
from jaxft.errors import UserError


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
    with pytest.raises(UserError, match="not a jaxft workdir"):
        export.export(str(tmp_path), str(tmp_path / "new"))
