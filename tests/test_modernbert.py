"""Tests for jaxft.models.modernbert: parity with PyTorch transformers (eager attention), the sliding window,
both poolings, conversion, dropout, bf16, the PEFT hooks and gradients."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft.errors import UserError
from jaxft.models.bert import softmax_attention
from jaxft.models.modernbert import (
    SHAPE_FIELDS,
    ModernBertConfig,
    ModernBertEncoder,
    flax_to_hf,
    hf_to_flax,
    sequence_head,
)
from jaxft.strategies.peft import PeftConfig, merge_lora, wrap
from tests.helpers import dot_flops

# Odd sizes (vocab 99, intermediate 37) catch swapped dimensions; a window of 4 (2 each side) is far shorter
# than the 13-token rows, and every other layer of three is global (0 and 2).
TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    local_attention=4,
    global_attn_every_n_layers=2,
    global_rope_theta=1000.0,
    local_rope_theta=50.0,
    pad_token_id=0,
)
TORCH_ONLY = dict(bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)  # in the tiny vocabulary
TOL = 1e-5


def _batch(extra_pad: int = 0):
    """Three rows of lengths 13, 6 and 2 (right-padded with 0), then `extra_pad` more padding columns."""
    rng = np.random.default_rng(0)
    lengths = [13, 6, 2]
    width = max(lengths) + extra_pad
    ids = np.zeros((3, width), np.int32)
    mask = np.zeros((3, width), np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(3, TINY["vocab_size"], n)
        mask[row, :n] = 1
    return ids, mask


def _torch_model(cls_name: str, **overrides):
    """A transformers model (eager attention) with every parameter perturbed, so biases and norms count."""
    torch = pytest.importorskip("torch")
    import transformers

    torch.manual_seed(0)
    hf_config = transformers.ModernBertConfig(**{**TINY, **TORCH_ONLY, **overrides})
    hf_config._attn_implementation = "eager"
    model = getattr(transformers, cls_name)(hf_config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _torch_run(model, ids, mask):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))


def _state_dict(model) -> dict:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


VARIANTS = {
    "default": {},
    "biases": dict(norm_bias=True, attention_bias=True, mlp_bias=True),
    "tanh_gelu_odd_window": dict(hidden_activation="gelu_pytorch_tanh", local_attention=5),
    "layer_types": dict(layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "all_global": dict(global_attn_every_n_layers=1, norm_eps=1e-3),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_encoder_matches_transformers(variant):
    model = _torch_model("ModernBertModel", **VARIANTS[variant])
    ids, mask = _batch()
    expected = _torch_run(model, ids, mask).last_hidden_state.numpy()
    params, ignored = hf_to_flax(_state_dict(model))
    assert ignored == []
    config = ModernBertConfig.from_dict(model.config.to_dict())
    assert config.layer_types == tuple(model.config.layer_types)
    seq, pooled = ModernBertEncoder(config).apply({"params": params["bert"]}, ids, mask, np.ones_like(ids))
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(seq)[valid], expected[valid], rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(pooled), expected[:, 0], rtol=0, atol=TOL)


def test_window_is_what_changes_the_output():
    # The same weights with a window wide enough to be global differ: the window test above is not vacuous.
    ids, mask = _batch()
    config = ModernBertConfig(**TINY)
    params = ModernBertEncoder(config).init(jax.random.key(0), ids, mask)
    narrow = ModernBertEncoder(config).apply(params, ids, mask)[0]
    wide = ModernBertEncoder(ModernBertConfig(**{**TINY, "local_attention": 64})).apply(params, ids, mask)[0]
    assert not np.allclose(narrow[0], wide[0], atol=1e-3)
    np.testing.assert_allclose(narrow[2, :2], wide[2, :2], atol=1e-6)  # a 2-token row fits any window


def test_window_mask_equals_dot_product_attention_local_window():
    # |i - j| <= local_attention // 2 is jax.nn.dot_product_attention's local_window_size=(w, w) on XLA.
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 11, 4, 8))
    w = ModernBertConfig(**TINY).sliding_window
    pos = jnp.arange(11)
    mask = (jnp.abs(pos[:, None] - pos[None, :]) <= w)[None, None]
    attend = jax.jit(
        functools.partial(jax.nn.dot_product_attention, local_window_size=(w, w), implementation="xla")
    )
    out = jax.jit(softmax_attention)(q, k, v, mask)
    np.testing.assert_allclose(out, attend(q, k, v), rtol=0, atol=1e-6)


def test_cudnn_leaves_local_layers_to_the_softmax_path():
    # cuDNN's window is causal only: with every layer local, "cudnn" never reaches the kernel (which raises
    # on CPU) and computes the XLA path's function.
    config = ModernBertConfig(**{**TINY, "layer_types": ("sliding_attention",) * 3})
    ids, mask = _batch()
    variables = ModernBertEncoder(config).init(jax.random.key(0), ids, mask)
    expected = ModernBertEncoder(config, attention_impl="xla").apply(variables, ids, mask)[0]
    np.testing.assert_array_equal(
        ModernBertEncoder(config, attention_impl="cudnn").apply(variables, ids, mask)[0], expected
    )
    with pytest.raises(UserError, match="attention_impl 'flash' is not one of"):
        ModernBertEncoder(config, attention_impl="flash").apply(variables, ids, mask)


class _Classifier(nn.Module):
    config: ModernBertConfig
    num_labels: int
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, ids, mask, deterministic=True):
        hidden, pooled = ModernBertEncoder(self.config, self.dtype, remat=self.remat, name="bert")(
            ids, mask, deterministic=deterministic
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


@pytest.mark.parametrize(
    "overrides",
    [dict(classifier_pooling="cls"), dict(classifier_pooling="mean", classifier_bias=True, norm_bias=True)],
    ids=["cls", "mean_biases"],
)
def test_sequence_classifier_matches_transformers_and_round_trips(overrides):
    model = _torch_model("ModernBertForSequenceClassification", num_labels=3, **overrides)
    ids, mask = _batch()
    expected = _torch_run(model, ids, mask).logits.numpy()
    state = _state_dict(model)
    params, ignored = hf_to_flax(state)
    assert ignored == [] and set(params) == {"bert", "head", "classifier"}
    config = ModernBertConfig.from_dict(model.config.to_dict())
    logits = _Classifier(config, 3).apply({"params": params}, ids, mask)
    assert logits.shape == (3, 3) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=TOL)
    back = flax_to_hf(params)
    assert set(back) == set(state)
    for name, value in state.items():
        np.testing.assert_array_equal(back[name], value)
        assert back[name].dtype == np.float32 and back[name].flags.c_contiguous


def test_mean_pooling_ignores_padding_and_a_fully_padded_row_stays_finite():
    config = ModernBertConfig(**TINY, classifier_pooling="mean")
    ids, mask = _batch()
    model = _Classifier(config, 3)
    variables = model.init(jax.random.key(0), ids, mask)
    logits = model.apply(variables, ids, mask)
    np.testing.assert_allclose(model.apply(variables, *_batch(extra_pad=3)), logits, rtol=0, atol=TOL)
    mask[2] = 0
    assert np.isfinite(np.asarray(model.apply(variables, ids, mask))).all()


def test_config_round_trips_through_transformers():
    transformers = pytest.importorskip("transformers")
    config = ModernBertConfig(**TINY, norm_bias=True, classifier_pooling="mean")
    hf = transformers.ModernBertConfig(**config.to_hf_dict(), **TORCH_ONLY)
    assert ModernBertConfig.from_dict(hf.to_dict()) == config
    assert hf.sliding_window == config.sliding_window == 2
    assert hf.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    assert all(f in config.to_hf_dict() for f in SHAPE_FIELDS)
    assert (config.hidden_dropout_prob, config.pad_token_id, config.initializer_range) == (0.0, 0, 0.02)


@pytest.mark.parametrize(
    "d, message",
    [
        (dict(hidden_size=30), "hidden_size 30 is not a multiple of num_attention_heads 4"),
        (dict(hidden_size=36, num_attention_heads=12), "the head size 3 must be even"),
        (dict(local_attention=0), "local_attention=0 must be a positive integer"),
        (dict(mlp_dropout=1.0), "mlp_dropout=1.0 must be a number in [0, 1)"),
        (dict(classifier_pooling="max"), "classifier_pooling 'max' is not one of ('cls', 'mean')"),
        (dict(hidden_activation="swiglu"), "hidden_activation 'swiglu' is not supported"),
        (dict(layer_types=["full_attention"]), "layer_types=['full_attention'] must name one of"),
        (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
        (
            dict(rope_parameters={"full_attention": {"rope_type": "yarn", "rope_theta": 1.0}}),
            "rope_parameters.full_attention.rope_type 'yarn' is not supported",
        ),
    ],
)
def test_bad_configs_are_refused_in_one_line(d, message):
    with pytest.raises(UserError) as e:
        ModernBertConfig.from_dict({**TINY, **d})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_from_dict_reads_rope_parameters_over_the_older_keys():
    d = {**TINY, "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 7.0}}}
    config = ModernBertConfig.from_dict(d)
    assert (config.local_rope_theta, config.global_rope_theta) == (7.0, 1000.0)


def test_dropout_only_when_not_deterministic():
    config = ModernBertConfig(**TINY, attention_dropout=0.3, embedding_dropout=0.1, mlp_dropout=0.2)
    model = ModernBertEncoder(config)
    ids, mask = _batch()
    variables = model.init(jax.random.key(0), ids, mask)

    def run(deterministic, seed):
        rngs = {"dropout": jax.random.key(seed)}
        return model.apply(variables, ids, mask, deterministic=deterministic, rngs=rngs)[0]

    plain = model.apply(variables, ids, mask)[0]
    np.testing.assert_array_equal(run(True, 1), plain)
    np.testing.assert_array_equal(run(True, 2), plain)
    assert not np.allclose(run(False, 1), run(False, 2))
    assert not np.allclose(run(False, 1), plain)


def test_bfloat16_compute_keeps_float32_params():
    config = ModernBertConfig(**TINY, classifier_pooling="mean")
    ids, mask = _batch()
    model16 = _Classifier(config, 3, jnp.bfloat16)
    variables = model16.init(jax.random.key(0), ids, mask)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits16 = model16.apply(variables, ids, mask)
    logits32 = _Classifier(config, 3).apply(variables, ids, mask)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits32, rtol=0, atol=5e-2)
    encoder = {"params": variables["params"]["bert"]}
    seq16, pooled16 = ModernBertEncoder(config, jnp.bfloat16).apply(encoder, ids, mask)
    seq32, _ = ModernBertEncoder(config).apply(encoder, ids, mask)
    assert seq16.dtype == jnp.bfloat16 and pooled16.dtype == jnp.bfloat16
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(seq16, np.float32)[valid], np.asarray(seq32)[valid], atol=5e-2)


def test_gradients_reach_every_parameter_and_remat_gives_the_same():
    config = ModernBertConfig(
        **TINY, norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True
    )
    ids, mask = _batch()
    params = _Classifier(config, 3).init(jax.random.key(0), ids, mask)["params"]

    def loss(p, remat):  # the labels weighted apart, so no logit's gradient cancels another's
        return jnp.sum(
            _Classifier(config, 3, remat=remat).apply({"params": p}, ids, mask) * jnp.arange(1.0, 4.0)
        )

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)

    (loss, grads), (remat_loss, remat_grads) = (value_and_grad(params, r) for r in (False, True))
    flat = {"/".join(k): np.asarray(v) for k, v in _flatten(grads).items()}
    assert "bert/layers_0/attn_norm/scale" not in flat and "bert/layers_1/attn_norm/scale" in flat
    for name, g in flat.items():
        assert np.isfinite(g).all() and np.abs(g).max() > 0, name
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), remat_grads, grads)


def _flatten(tree):
    from flax import traverse_util

    return traverse_util.flatten_dict(tree)


LORA = PeftConfig(
    method="lora", lora_targets=("qkv", "attention_output", "intermediate", "output"), lora_rank=4
)


@pytest.mark.parametrize(
    "peft, added",
    [
        (LORA, ("attn/Wqkv_lora", "attn/Wo_lora", "mlp/Wi_lora", "mlp/Wo_lora")),
        (PeftConfig(method="adapter", adapter_size=4), ("attn/adapter", "mlp/adapter")),
    ],
    ids=["lora", "adapter"],
)
def test_lora_and_adapters_start_as_the_base_model(peft, added):
    config = ModernBertConfig(**TINY)
    ids, mask = _batch()
    base_model = ModernBertEncoder(config)
    base = base_model.init(jax.random.key(0), ids, mask)["params"]
    model = wrap(ModernBertEncoder(config), peft)
    params = model.init(jax.random.key(1), ids, mask)["params"]
    names = {"/".join(k) for k in _flatten(params)}
    for layer in range(3):
        for module in added:
            assert any(n.startswith(f"layers_{layer}/{module}/") for n in names), (layer, module)
    params = _merge(params, base)  # the base leaves, and the method's new ones
    out, pooled = model.apply({"params": params}, ids, mask)
    expected, _ = base_model.apply({"params": base}, ids, mask)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def _merge(params, base):
    """`params` (a tree with more leaves) with every leaf `base` has taken from `base`."""
    flat, flat_base = _flatten(params), _flatten(base)
    from flax import traverse_util

    return traverse_util.unflatten_dict({k: flat_base.get(k, v) for k, v in flat.items()})


def test_lora_adapts_the_fused_qkv_projection():
    config = ModernBertConfig(**TINY)
    ids, mask = _batch()
    peft = PeftConfig(method="lora", lora_targets=("qkv",), lora_rank=2)
    model = wrap(ModernBertEncoder(config), peft)
    params = model.init(jax.random.key(1), ids, mask)["params"]
    lora = params["layers_1"]["attn"]["Wqkv_lora"]
    assert lora["lora_b"].shape == (2, 3 * 32) and set(params["layers_1"]["attn"]) == {
        "Wqkv",
        "Wo",
        "Wqkv_lora",
    }
    before = model.apply({"params": params}, ids, mask)[0]
    params["layers_1"]["attn"]["Wqkv_lora"]["lora_b"] = jnp.full((2, 96), 0.05)
    adapted = model.apply({"params": params}, ids, mask)[0]
    assert not np.allclose(adapted, before)
    # merge_lora folds the path into the fused kernel: the plain encoder then computes the adapted function.
    merged = merge_lora(params, peft)
    assert set(merged["layers_1"]["attn"]) == {"Wqkv", "Wo"}
    np.testing.assert_allclose(
        ModernBertEncoder(config).apply({"params": merged}, ids, mask)[0], adapted, atol=1e-5
    )


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_prompt_and_prefix_tuning_run(method):
    config = ModernBertConfig(**TINY, classifier_pooling="mean")
    ids, mask = _batch()
    model = wrap(_Classifier(config, 3), PeftConfig(method=method, num_virtual_tokens=3))
    params = model.init(jax.random.key(1), ids, mask)["params"]
    names = {"/".join(k) for k in _flatten(params)}
    if method == "prompt":
        assert "bert/embeddings/prompt_embeddings" in names
        assert params["bert"]["embeddings"]["prompt_embeddings"].shape == (3, 32)
    else:
        for layer in range(3):
            assert params["bert"][f"layers_{layer}"]["attn"]["prefix_key"].shape == (3, 4, 8)
            assert f"bert/layers_{layer}/attn/prefix_value" in names
    logits = model.apply({"params": params}, ids, mask)
    assert logits.shape == (3, 3) and np.isfinite(np.asarray(logits)).all()
    seq, _ = wrap(ModernBertEncoder(config), PeftConfig(method=method, num_virtual_tokens=3)).apply(
        {"params": params["bert"]}, ids, mask
    )
    assert seq.shape == (3, 13, 32) and np.isfinite(np.asarray(seq)).all()


def test_prefix_keys_are_attended_by_every_query_in_local_layers():
    # A query far from every real key still attends to the prefix: with huge prefix values the output moves
    # at every position of every row, including position 12 of the 13-token row (window of 2 each side).
    config = ModernBertConfig(**{**TINY, "layer_types": ("sliding_attention",), "num_hidden_layers": 1})
    ids, mask = _batch()
    model = wrap(ModernBertEncoder(config), PeftConfig(method="prefix", num_virtual_tokens=2))
    params = model.init(jax.random.key(1), ids, mask)["params"]
    before = np.asarray(model.apply({"params": params}, ids, mask)[0])
    params["layers_0"]["attn"]["prefix_value"] = params["layers_0"]["attn"]["prefix_value"] + 100.0
    after = np.asarray(model.apply({"params": params}, ids, mask)[0])
    valid = mask.astype(bool)
    assert (np.abs(after - before).max(axis=-1)[valid] > 1e-3).all()


LAST_SLIDING = ("full_attention", "full_attention", "sliding_attention")


_FIRST_ONLY_PEFT = {
    "full": PeftConfig(),
    "lora": LORA,
    "adapter": PeftConfig(method="adapter", adapter_size=4),
    "prompt": PeftConfig(method="prompt", num_virtual_tokens=2),
    "prefix": PeftConfig(method="prefix", num_virtual_tokens=2),
}
# Each PEFT method with a global last layer, a local last layer once, remat once.
_FIRST_ONLY_CASES = [(m, None, False) for m in _FIRST_ONLY_PEFT] + [
    ("full", LAST_SLIDING, False),
    ("prefix", LAST_SLIDING, False),
    ("full", None, True),
]


@pytest.mark.parametrize(
    "method, layer_types, remat",
    _FIRST_ONLY_CASES,
    ids=[f"{m}-{'local' if t else 'global'}{'-remat' * r}" for m, t, r in _FIRST_ONLY_CASES],
)
def test_first_token_only_gives_the_full_pooled_output_and_gradients(method, layer_types, remat):
    """The last layer at the first position alone: the same pooled output ("cls" pooling) and gradients."""
    config = ModernBertConfig(**TINY, norm_bias=True, attention_bias=True, mlp_bias=True)
    if layer_types:
        config = dataclasses.replace(config, layer_types=layer_types)
    ids, mask = _batch()
    model = wrap(ModernBertEncoder(config, remat=remat), _FIRST_ONLY_PEFT[method])
    params = model.init(jax.random.key(0), ids, mask)["params"]
    # Perturb every leaf (LoRA's B and the adapters' up-projections start at zero): each reaches the output.
    leaves, tree = jax.tree.flatten(params)
    noise = jax.random.split(jax.random.key(1), len(leaves))
    params = tree.unflatten(
        [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, noise, strict=True)]
    )

    def pooled_and_first(p, first_only):
        seq, pooled = model.apply({"params": p}, ids, mask, first_token_only=first_only)
        return pooled, seq[:, :1]

    (pooled, first), (pooled_full, first_full) = (pooled_and_first(params, f) for f in (True, False))
    assert first.shape == (3, 1, TINY["hidden_size"])
    assert model.apply({"params": params}, ids, mask, first_token_only=True)[0].shape == first.shape
    np.testing.assert_allclose(pooled, pooled_full, rtol=0, atol=TOL)
    np.testing.assert_allclose(first, first_full, rtol=0, atol=TOL)

    def grads(first_only):
        return jax.grad(lambda p: (pooled_and_first(p, first_only)[0] ** 2).sum())(params)

    # Equal to float32 rounding of differently shaped matmuls, per leaf as a norm (see test_bert's twin).
    close = lambda a, b: np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b) + 1e-7  # noqa: E731
    assert all(jax.tree.leaves(jax.tree.map(close, grads(True), grads(False))))


def test_first_token_only_leaves_out_the_last_layers_other_positions_and_mean_pooling_ignores_it():
    """The traced matmul FLOPs fall by at least the last layer's queries, attention, `Wo` and feed-forward at
    every other position (counted from the jaxpr, as test_bert's twin); "mean" pooling computes them all."""
    config = ModernBertConfig(**TINY)
    ids = np.ones((4, 48), np.int32)
    model = ModernBertEncoder(config)
    params = model.init(jax.random.key(0), ids, ids)["params"]

    def flops(first_only, pooling="cls"):
        encoder = ModernBertEncoder(dataclasses.replace(config, classifier_pooling=pooling))
        pooled = lambda p: encoder.apply({"params": p}, ids, ids, first_token_only=first_only)[1]  # noqa: E731
        return dot_flops(jax.make_jaxpr(pooled)(params))

    hidden, ffn, length = config.hidden_size, config.intermediate_size, ids.shape[1]
    # Per position of the last layer, left out: its query's logits and mixture over every key, Wo, Wi (2 x
    # ffn wide: input and gate) and the feed-forward's Wo. Its keys and values (Wqkv) are still computed.
    per_position = 2 * (hidden * hidden + 3 * hidden * ffn) + 4 * length * hidden
    rows = ids.shape[0]
    assert flops(False) - flops(True) >= per_position * (ids.size - rows)
    assert flops(True, "mean") == flops(False, "mean") == flops(False)
