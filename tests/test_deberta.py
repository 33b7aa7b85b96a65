"""Tests for jaxft.models.deberta: parity with transformers' DeBERTa-v2, conversion, the head, PEFT hooks."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxft.errors import UserError
from jaxft.models.deberta import (
    DebertaV2Config,
    DebertaV2Encoder,
    DisentangledSelfAttention,
    flax_to_hf,
    hf_to_flax,
    make_log_bucket_position,
    sequence_head,
)
from jaxft.strategies.peft import LORA_TARGETS, PeftConfig, wrap
from tests.helpers import ODD_SIZES, dot_flops

TOL = 1e-5
# DeBERTa-v3 (base/large) as its config.json has it, with the buckets scaled down: 8 buckets (distances
# beyond 4 are log-bucketed) resolving distances up to 10, so the 13-token rows below reach the clamp too.
V3 = dict(
    relative_attention=True,
    pos_att_type=["p2c", "c2p"],
    position_buckets=8,
    max_relative_positions=10,
    share_att_key=True,
    position_biased_input=False,
    type_vocab_size=0,
    norm_rel_ebd="layer_norm",
)
# DeBERTa-v2-like: absolute positions and token types, separate position projections, no buckets, a table
# of +-6 distances (clamped beyond).
V2 = dict(
    relative_attention=True,
    pos_att_type=["p2c", "c2p"],
    position_buckets=-1,
    max_relative_positions=6,
    share_att_key=False,
    position_biased_input=True,
    type_vocab_size=2,
)
# The config the tests of dropout, precision, padding and gradients share: each op shape compiles once.
V3_CONV = {**V3, "conv_kernel_size": 3}
TINY = dict(vocab_size=99, **ODD_SIZES, hidden_act="gelu", layer_norm_eps=1e-7)
LENGTHS = [13, 9, 4]


def _batch(extra_pad: int = 0):
    """Three rows of lengths 13, 9 and 4 with two segments each; 0 is the padding id."""
    rng = np.random.default_rng(0)
    width = max(LENGTHS) + extra_pad
    ids = np.zeros((3, width), np.int32)
    mask = np.zeros((3, width), np.int32)
    types = np.zeros((3, width), np.int32)
    for row, n in enumerate(LENGTHS):
        ids[row, :n] = rng.integers(1, TINY["vocab_size"], n)
        mask[row, :n] = 1
        types[row, n // 2 : n] = 1
    return ids, mask, types


def _hf_dict(**overrides) -> dict:
    return {**TINY, **overrides}


def _torch_model(cls_name: str, **overrides):
    """A transformers model with every parameter perturbed, so that biases and LayerNorms are exercised."""
    torch = pytest.importorskip("torch")
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(transformers.DebertaV2Config(**_hf_dict(**overrides))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _torch_run(model, ids, mask, types):
    import torch

    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            token_type_ids=torch.tensor(types, dtype=torch.long),
        )


def _state_dict(model) -> dict:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


VARIANTS = {
    "v3": V3,
    "v2": V2,
    "v2-table-from-max-positions": {**V2, "max_relative_positions": -1},
    "v3-c2p-only": {**V3, "pos_att_type": ["c2p"]},
    "v2-p2c-only-string": {**V2, "pos_att_type": "p2c"},
    "v3-no-position-terms": {**V3, "pos_att_type": None, "norm_rel_ebd": "none"},
    "scale-without-relative": {
        "relative_attention": False,
        "pos_att_type": ["c2p", "p2c"],
        "type_vocab_size": 2,
    },
    "embed-proj": {**V3, "embedding_size": 24},
    "conv": {**V2, "conv_kernel_size": 3, "conv_groups": 2, "hidden_act": "gelu_new"},
    "v3-conv": V3_CONV,
    "v3-conv5-gelu": {**V3, "conv_kernel_size": 5, "conv_act": "gelu"},
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_encoder_matches_transformers(overrides):
    model = _torch_model("DebertaV2Model", **overrides)
    ids, mask, types = _batch()
    expected = _torch_run(model, ids, mask, types).last_hidden_state.numpy()
    params, ignored = hf_to_flax(_state_dict(model))
    assert ignored == [] and set(params) == {"bert"}
    config = DebertaV2Config.from_dict(model.config.to_dict())
    seq, pooled = DebertaV2Encoder(config).apply({"params": params["bert"]}, ids, mask, types)
    assert pooled is None and seq.shape == (3, ids.shape[1], TINY["hidden_size"])
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(seq)[valid], expected[valid], rtol=0, atol=TOL)


def test_log_buckets_match_transformers():
    pytest.importorskip("torch")
    import torch
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position as hf_buckets

    relative = np.arange(-3000, 3001)
    for buckets, max_position in [(256, 512), (8, 10), (8, 64), (32, 100)]:
        expected = hf_buckets(torch.tensor(relative), buckets, max_position).long().numpy()
        np.testing.assert_array_equal(make_log_bucket_position(relative, buckets, max_position), expected)


class _Classifier(nn.Module):
    config: DebertaV2Config
    num_labels: int
    dtype: object = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, ids, mask, types, deterministic=True):
        hidden, pooled = DebertaV2Encoder(self.config, self.dtype, remat=self.remat, name="bert")(
            ids, mask, types, deterministic=deterministic
        )
        return sequence_head(
            self.config,
            hidden,
            pooled,
            num_labels=self.num_labels,
            dtype=self.dtype,
            classifier_dropout=None,
            deterministic=deterministic,
        )


@pytest.mark.parametrize("overrides", [V3, {**V2, "pooler_hidden_act": "tanh"}], ids=["v3", "v2-tanh-pooler"])
def test_sequence_classifier_matches_transformers_and_round_trips(overrides):
    model = _torch_model("DebertaV2ForSequenceClassification", num_labels=3, **overrides)
    ids, mask, types = _batch()
    expected = _torch_run(model, ids, mask, types).logits.numpy()
    state = _state_dict(model)
    params, ignored = hf_to_flax(state)
    assert ignored == [] and set(params) == {"bert", "pooler", "classifier"}
    config = DebertaV2Config.from_dict(model.config.to_dict())
    logits = _Classifier(config, 3).apply({"params": params}, ids, mask, types)
    assert logits.shape == (3, 3) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=TOL)

    back = flax_to_hf(params)
    assert sorted(back) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(back[name], value)
        assert back[name].dtype == np.float32 and back[name].flags.c_contiguous


def test_conversion_takes_base_model_names_and_other_heads():
    state = _state_dict(_torch_model("DebertaV2ForQuestionAnswering", conv_kernel_size=3, **V2))
    params, ignored = hf_to_flax(state)
    assert ignored == [] and set(params) == {"bert", "qa_outputs"}
    assert params["bert"]["encoder"]["conv"]["conv"]["kernel"].shape == (3, TINY["hidden_size"], 32)
    base = {k.removeprefix("deberta."): v for k, v in state.items() if k.startswith("deberta.")}
    base_params, _ = hf_to_flax({**base, "embeddings.position_ids": np.arange(4), "lm_predictions.x.bias": 0})
    assert _ == ["embeddings.position_ids", "lm_predictions.x.bias"]
    jax.tree.map(np.testing.assert_array_equal, base_params["bert"], params["bert"])
    assert sorted(flax_to_hf(params)) == sorted(state)
    with pytest.raises(UserError, match="cls"):
        flax_to_hf({**params, "cls": {}})


def test_config_round_trips_through_transformers():
    import transformers

    for overrides in VARIANTS.values():
        config = DebertaV2Config.from_dict(_hf_dict(**overrides))
        hf = transformers.DebertaV2Config(**config.to_hf_dict())
        assert DebertaV2Config.from_dict(hf.to_dict()) == config
        assert hf.model_type == DebertaV2Config.model_type


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"pos_att_type": ["p2p"]}, "pos_att_type"),
        ({"conv_kernel_size": 4}, "even"),
        ({"pooler_hidden_size": 16}, "pooler_hidden_size"),
        ({"attention_head_size": 4}, "attention_head_size"),
        ({"norm_rel_ebd": "layer_norm"}, "relative_attention"),
        ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob"),
        ({"type_vocab_size": -1}, "type_vocab_size"),
        ({"hidden_act": "swish"}, "hidden_act"),
        ({**V3, "position_buckets": 8, "max_relative_positions": 5}, "log"),
        ({"num_attention_heads": 5}, "multiple"),
    ],
)
def test_config_refuses_with_one_line(bad, message):
    with pytest.raises(UserError, match=message) as info:
        DebertaV2Config.from_dict(_hf_dict(**bad))
    assert "\n" not in str(info.value)


@functools.lru_cache
def _random_params(config):
    """Initial classifier parameters (rates set to 0: they do not change them); cached per shape."""
    config = dataclasses.replace(config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids, mask, types = _batch()
    return _Classifier(config, 3).init(jax.random.key(0), ids, mask, types)["params"]


def test_dropout_only_when_not_deterministic():
    # Hidden dropout off, so any randomness comes from the attention probabilities.
    config = DebertaV2Config.from_dict(
        _hf_dict(**V3_CONV, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    )
    model = DebertaV2Encoder(config)
    ids, mask, types = _batch()
    variables = {"params": _random_params(config)["bert"]}

    def run(deterministic, seed):
        rngs = {"dropout": jax.random.key(seed)}
        return np.asarray(model.apply(variables, ids, mask, types, deterministic=deterministic, rngs=rngs)[0])

    plain = np.asarray(model.apply(variables, ids, mask, types)[0])
    np.testing.assert_array_equal(run(True, 1), plain)
    assert not np.allclose(run(False, 1), run(False, 2))
    assert not np.allclose(run(False, 1), plain)


def test_bfloat16_compute_keeps_float32_params():
    config = DebertaV2Config.from_dict(_hf_dict(**V3_CONV))
    ids, mask, types = _batch()
    params = _random_params(config)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    logits16 = _Classifier(config, 3, jnp.bfloat16).apply({"params": params}, ids, mask, types)
    logits32 = _Classifier(config, 3).apply({"params": params}, ids, mask, types)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits32, rtol=0, atol=5e-2)
    seq16, _ = DebertaV2Encoder(config, jnp.bfloat16).apply({"params": params["bert"]}, ids, mask, types)
    seq32, _ = DebertaV2Encoder(config).apply({"params": params["bert"]}, ids, mask, types)
    assert seq16.dtype == jnp.bfloat16
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(seq16, np.float32)[valid], np.asarray(seq32)[valid], atol=1e-1)


def test_logits_do_not_depend_on_extra_padding_and_padded_rows_stay_finite():
    config = DebertaV2Config.from_dict(_hf_dict(**V3_CONV))
    model = _Classifier(config, 3)
    params = _random_params(config)
    logits = model.apply({"params": params}, *_batch())
    np.testing.assert_allclose(
        model.apply({"params": params}, *_batch(extra_pad=3)), logits, rtol=0, atol=TOL
    )
    ids, mask, types = _batch()
    mask[2] = 0
    assert np.isfinite(np.asarray(model.apply({"params": params}, ids, mask, types))).all()


def test_gradients_reach_every_layer():
    config = DebertaV2Config.from_dict(_hf_dict(**V3_CONV))
    ids, mask, types = _batch()
    params = _random_params(config)
    loss = lambda p: _Classifier(config, 3).apply({"params": p}, ids, mask, types).sum()  # noqa: E731
    g = jax.grad(loss)(params)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(g))
    groups = {"embeddings": g["bert"]["embeddings"], "pooler": g["pooler"], "classifier": g["classifier"]}
    groups.update(g["bert"]["encoder"])  # layer_i, rel_embeddings, LayerNorm, conv
    assert set(groups) >= {"layer_0", "layer_1", "rel_embeddings", "LayerNorm", "conv"}
    for name, tree in groups.items():
        assert sum(float(np.abs(x).sum()) for x in jax.tree.leaves(tree)) > 0, name


def test_remat_computes_the_same_function():
    config = DebertaV2Config.from_dict(_hf_dict(**V3_CONV))
    ids, mask, types = _batch()
    params = _random_params(config)
    logits = _Classifier(config, 3).apply({"params": params}, ids, mask, types)
    np.testing.assert_array_equal(
        _Classifier(config, 3, remat=True).apply({"params": params}, ids, mask, types), logits
    )


def _without_peft(params):
    flat = traverse_util.flatten_dict(params)
    keep = {k: v for k, v in flat.items() if not any(p.endswith("_lora") or p == "adapter" for p in k)}
    return traverse_util.unflatten_dict(keep)


_LORA = PeftConfig(method="lora", lora_targets=LORA_TARGETS, lora_rank=2)


@pytest.mark.parametrize(
    "peft, overrides",
    [
        (_LORA, V3_CONV),
        (_LORA, V2),  # separate position projections: not adapted
        (PeftConfig(method="adapter", adapter_size=5), V3_CONV),
        (PeftConfig(method="prompt", num_virtual_tokens=2), V3_CONV),
        (PeftConfig(method="prompt", num_virtual_tokens=2), V2),  # with absolute positions and token types
    ],
    ids=["lora-v3", "lora-v2", "adapter-v3", "prompt-v3", "prompt-v2"],
)
def test_peft_hooks(peft, overrides):
    config = DebertaV2Config.from_dict(_hf_dict(**overrides))
    encoder = DebertaV2Encoder(config)
    ids, mask, types = _batch()
    model = wrap(encoder, peft)
    params = model.init(jax.random.key(0), ids, mask, types)["params"]
    seq, _ = model.apply({"params": params}, ids, mask, types)
    assert seq.shape == (3, ids.shape[1], config.hidden_size) and np.isfinite(np.asarray(seq)).all()
    flat = traverse_util.flatten_dict(params)
    if peft.method == "lora":
        adapted = {k[-2] for k in flat if k[-2].endswith("_lora")}
        assert {f"{t}_lora" for t in ("query_proj", "key_proj", "value_proj", "dense")} == adapted
        assert sum(k[-2] == "dense_lora" for k in flat) == 3 * 2 * config.num_hidden_layers  # a, b of three
    elif peft.method == "adapter":
        assert sum(k[-3] == "adapter" for k in flat) == 2 * 2 * 2 * config.num_hidden_layers
    else:
        assert flat[("embeddings", "prompt_embeddings")].shape == (2, config.hidden_size)
        return
    plain, _ = encoder.apply({"params": _without_peft(params)}, ids, mask, types)
    np.testing.assert_array_equal(np.asarray(seq), np.asarray(plain))


def test_prefix_tuning_is_not_offered():
    # Relative-position scores are per key position; keys put before the sequence have none.
    assert not hasattr(DisentangledSelfAttention, "extend_keys_values")
    assert not hasattr(DisentangledSelfAttention, "plain_keys_values")


_FIRST_ONLY_VARIANTS = ("v3", "v2", "v3-c2p-only", "v2-p2c-only-string", "v3-conv")
_FIRST_ONLY_PEFT = {
    "full": PeftConfig(),
    "lora": _LORA,
    "adapter": PeftConfig(method="adapter", adapter_size=5),
    "prompt": PeftConfig(method="prompt", num_virtual_tokens=2),
}
# Each kind of relative-position term without PEFT, each PEFT method on v3, and remat once.
_FIRST_ONLY_CASES = (
    [(v, "full", False) for v in _FIRST_ONLY_VARIANTS]
    + [("v3", m, False) for m in ("lora", "adapter", "prompt")]
    + [("v2", "prompt", False), ("v3", "full", True)]
)


@pytest.mark.parametrize(
    "variant, method, remat",
    _FIRST_ONLY_CASES,
    ids=[f"{v}-{m}{'-remat' * r}" for v, m, r in _FIRST_ONLY_CASES],
)
def test_first_token_only_gives_the_full_first_position_and_gradients(variant, method, remat):
    """The last layer at the first position alone: the same first position (what `ContextPooler` reads)
    and the same gradients, for each kind of relative-position term."""
    config = DebertaV2Config.from_dict(_hf_dict(**VARIANTS[variant]))
    ids, mask, types = _batch()
    model = wrap(DebertaV2Encoder(config, remat=remat), _FIRST_ONLY_PEFT[method])
    params = model.init(jax.random.key(0), ids, mask, types)["params"]
    leaves, tree = jax.tree.flatten(params)  # perturbed: LoRA's B and the adapters' up start at zero
    noise = jax.random.split(jax.random.key(1), len(leaves))
    params = tree.unflatten(
        [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, noise, strict=True)]
    )

    def first(p, first_only):
        return model.apply({"params": p}, ids, mask, types, first_token_only=first_only)[0]

    fast, full = first(params, True), first(params, False)
    assert fast.shape == (3, 1, config.hidden_size)
    np.testing.assert_allclose(fast, full[:, :1], rtol=0, atol=TOL)

    def grads(first_only):
        return jax.grad(lambda p: (first(p, first_only)[:, 0] ** 2).sum())(params)

    # Equal to float32 rounding of differently shaped matmuls, per leaf as a norm (see test_bert's twin).
    close = lambda a, b: np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b) + 1e-7  # noqa: E731
    assert all(jax.tree.leaves(jax.tree.map(close, grads(True), grads(False))))


def test_first_token_only_leaves_out_the_last_layers_other_positions():
    """Counted from the jaxpr's matmuls (as test_bert's twin): at least the last layer's query, content
    scores, output projection and feed-forward at every other position are left out."""
    config = DebertaV2Config.from_dict(_hf_dict(**V3))
    ids = np.ones((4, 48), np.int32)
    model = DebertaV2Encoder(config)
    params = model.init(jax.random.key(0), ids, ids)["params"]

    def flops(first_only):
        first = lambda p: model.apply({"params": p}, ids, ids, first_token_only=first_only)[0][:, 0]  # noqa: E731
        return dot_flops(jax.make_jaxpr(first)(params))

    hidden, ffn, length = config.hidden_size, config.intermediate_size, ids.shape[1]
    per_position = 2 * (2 * hidden * hidden + 2 * hidden * ffn) + 4 * length * hidden
    assert flops(False) - flops(True) >= per_position * (ids.size - ids.shape[0])
    one_layer = DebertaV2Config.from_dict(_hf_dict(**V3_CONV, num_hidden_layers=1))
    seq, _ = DebertaV2Encoder(one_layer).apply(  # the convolution reads every position of layer 0
        {"params": _random_params(one_layer)["bert"]}, *_batch(), first_token_only=True
    )
    assert seq.shape == (3, max(LENGTHS), one_layer.hidden_size)
