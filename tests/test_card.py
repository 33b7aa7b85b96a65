"""The model card an export writes (the Hub's metadata read back by huggingface_hub's own parser, the run's
real metrics and reports) and the Hub upload, tested at its network boundary."""

import json

import pytest

from jaxft import card, export
from jaxft.errors import UserError


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("card") / "tiny-sentiment"
    assert (
        export.main(["--workdir", str(tiny_run[0]), "--out", str(out), "--base-model", "acme/tiny-bert"]) == 0
    )
    return tiny_run[0], out


def test_the_card_holds_the_run_s_metrics_in_the_hub_s_format(exported):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    workdir, out = exported
    final = json.loads((workdir / "final_metrics.json").read_text())
    parsed = huggingface_hub.ModelCard.load(out / "README.md")
    data = parsed.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-classification"
    assert data["base_model"] == "acme/tiny-bert" and "jaxft" in data["tags"]
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in parsed.data.eval_results}
    expected = {
        ("eval", k): round(v, 4) for k, v in final["eval"].items() if k not in ("loss", "num_examples")
    }
    assert results == expected and ("eval", "accuracy") in results
    text = (out / "README.md").read_text()
    report = (workdir / "eval" / "final_eval.txt").read_text().rstrip()
    assert report in text and f"parameters of step {final['params_from_step']}" in text


def test_transformers_still_loads_the_directory_with_its_card(exported):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(exported[1])
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_base_model_and_datasets_are_found_from_the_config(tmp_path):
    from jaxft.configs import tiny

    config = tiny.get_config()
    config.model.checkpoint = "acme/bert-base"
    assert card.base_model(config) == "acme/bert-base"
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"_name_or_path": "acme/original"}))
    config.model.checkpoint = str(checkpoint)
    assert card.base_model(config) == "acme/original"
    (checkpoint / "config.json").write_text(json.dumps({"_name_or_path": "/home/me/model"}))
    assert card.base_model(config) is None
    config.data.train_path, config.data.eval_path = "hf:stanfordnlp/imdb:train", "tfds:glue/sst2:validation"
    assert card.dataset_names(config) == ["stanfordnlp/imdb", "glue"]


class _FakeApi:
    calls: list = []
    fail: Exception | None = None

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.fail:
            raise self.fail
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


@pytest.fixture
def hub(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    _FakeApi.calls, _FakeApi.fail = [], None
    return huggingface_hub


def test_push_creates_the_repository_and_uploads_the_directory(hub, tmp_path):
    assert card.push(str(tmp_path), "me/model", private=True) == "https://huggingface.co/me/model"
    assert _FakeApi.calls == [
        ("create_repo", "me/model", {"private": True, "exist_ok": True, "repo_type": "model"}),
        ("upload_folder", {"folder_path": str(tmp_path), "repo_id": "me/model", "repo_type": "model",
                           "commit_message": "jaxft export"}),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            "no_token",
            "--push-to-hub me/model: no Hugging Face token (set HF_TOKEN or run `huggingface-cli login`)",
        ),
        ("offline", "--push-to-hub me/model: HF_HUB_OFFLINE is set; unset it to upload"),
        ("network", "--push-to-hub me/model: the upload failed: Failed to resolve 'huggingface.co'"),
    ],
)
def test_push_fails_in_one_line(hub, monkeypatch, tmp_path, setup, message):
    if setup == "no_token":
        monkeypatch.setattr(hub, "get_token", lambda: None)
    elif setup == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        _FakeApi.fail = ConnectionError("Failed to resolve 'huggingface.co'\n(Caused by NameResolutionError)")
    with pytest.raises(UserError) as error:
        card.push(str(tmp_path), "me/model")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_export_command_line_pushes_after_writing(hub, exported, tmp_path, capsys):
    workdir, _ = exported
    out = tmp_path / "again"
    assert export.main(["--workdir", str(workdir), "--out", str(out), "--push-to-hub", "me/model"]) == 0
    assert (out / "README.md").exists() and _FakeApi.calls[-1][0] == "upload_folder"
    assert "uploaded" in capsys.readouterr().out
