"""The bf16 Dense of `jaxft.models.matmul`: its values and gradients, and the form XLA:CPU compiles it to."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft.models import matmul
from jaxft.models.bert import BertConfig
from jaxft.models.heads import SequenceClassifier

BF16 = jnp.bfloat16


def _bf16_as_f32(x):
    return np.asarray(jnp.asarray(x, BF16), np.float32)


def _inputs(shape, features, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(k[0], shape).astype(BF16)
    kernel = 0.05 * jax.random.normal(k[1], (shape[-1], features))
    bias = 0.1 * jax.random.normal(k[2], (features,))
    g = jax.random.normal(k[3], (*shape[:-1], features)).astype(BF16)
    return x, kernel, bias, g


@pytest.mark.parametrize("shape", [(64, 48), (4, 16, 48), (4, 1, 48)])
def test_mixed_dense_values_and_gradients_are_float32_sums_of_bf16_products(shape):
    x, kernel, bias, g = _inputs(shape, 40)
    y, vjp = jax.vjp(jax.jit(matmul._mixed_dense), x, kernel, bias)
    dx, dkernel, dbias = vjp(g)

    x2 = np.asarray(x, np.float32).reshape(-1, shape[-1])
    k16 = _bf16_as_f32(kernel)
    g2 = np.asarray(g, np.float32).reshape(-1, 40)
    assert y.dtype == BF16 and dx.dtype == BF16
    assert dkernel.dtype == jnp.float32 and dbias.dtype == jnp.float32
    # Each result rounded to bf16 once, from a float32 sum: within one bf16 rounding of the exact value.
    expected_y = (x2.astype(np.float64) @ k16 + np.asarray(bias)).reshape(*shape[:-1], 40)
    np.testing.assert_allclose(np.asarray(y, np.float32), expected_y, rtol=2**-8, atol=1e-6)
    expected_dx = (g2.astype(np.float64) @ k16.T).reshape(shape)
    np.testing.assert_allclose(np.asarray(dx, np.float32), expected_dx, rtol=2**-8, atol=1e-6)
    np.testing.assert_allclose(dkernel, x2.T.astype(np.float64) @ g2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dbias, g2.astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)


def test_mixed_dense_matches_flax_dense_parameters_and_outputs():
    x = jax.random.normal(jax.random.key(1), (4, 16, 48))
    flax_dense = nn.Dense(40, dtype=BF16, param_dtype=jnp.float32)
    mixed = matmul.MixedDense(40, dtype=BF16, param_dtype=jnp.float32)
    variables = flax_dense.init(jax.random.key(2), x)
    variables = jax.tree.map(lambda v: v + 0.1, variables)  # a non-zero bias
    assert jax.tree.structure(mixed.init(jax.random.key(2), x)) == jax.tree.structure(variables)
    ours = np.asarray(mixed.apply(variables, x), np.float32)
    theirs = np.asarray(flax_dense.apply(variables, x), np.float32)
    reference = np.asarray(x, np.float32) @ np.asarray(variables["params"]["kernel"])
    reference += np.asarray(variables["params"]["bias"])
    # Both are bf16 computations of the float32 layer; ours rounds once where Flax rounds twice.
    np.testing.assert_allclose(ours, reference, rtol=0, atol=0.05)
    np.testing.assert_allclose(theirs, reference, rtol=0, atol=0.05)
    assert np.abs(ours - reference).mean() <= np.abs(theirs - reference).mean()

    no_bias = {"params": {"kernel": variables["params"]["kernel"]}}
    assert jax.tree.structure(matmul.MixedDense(40, use_bias=False).init(jax.random.key(2), x)) == (
        jax.tree.structure(no_bias)
    )
    without = matmul.MixedDense(40, use_bias=False, dtype=BF16).apply(no_bias, x)
    unbiased = reference - np.asarray(variables["params"]["bias"])
    np.testing.assert_allclose(np.asarray(without, np.float32), unbiased, rtol=0, atol=0.05)


def test_dense_picks_the_mixed_layer_for_bf16_on_cpu_only():
    init = nn.initializers.normal(0.02)
    assert type(matmul.dense(8, jnp.float32, init, "d")) is nn.Dense
    expected = matmul.MixedDense if jax.default_backend() == "cpu" else nn.Dense
    assert type(matmul.dense(8, BF16, init, "d")) is expected
    assert type(matmul.dense(8, jnp.float16, init, "d")) is nn.Dense


def _dot_operand_types(hlo: str) -> list[tuple[str, ...]]:
    """The element types of every dot's operands in compiled HLO text."""
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
    types.update(re.findall(r"([\w.\-]+): (\w+)\[", hlo))  # fused computations' parameters
    operands = re.findall(r"\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)", hlo)
    return [tuple(types[name] for name in pair) for pair in operands]


ON_CPU = jax.default_backend() == "cpu"


@pytest.mark.skipif(not ON_CPU, reason="the form is XLA:CPU's; other backends keep Flax's Dense")
def test_a_bf16_layer_compiles_to_bf16_products_on_cpu():
    """Forward and both backward products stay bf16 (the fast path); Flax's bf16 Dense gets float32 dots."""

    def grads(layer):
        x = jnp.ones((4, 32, 64), jnp.float32)
        variables = layer.init(jax.random.key(0), x)
        loss = lambda v, x: jnp.sum(layer.apply(v, x).astype(jnp.float32) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(variables, x).compile().as_text()

    ours = _dot_operand_types(grads(matmul.MixedDense(96, dtype=BF16)))
    assert len(ours) == 3 and all(pair == ("bf16", "bf16") for pair in ours), ours
    flax_dots = _dot_operand_types(grads(nn.Dense(96, dtype=BF16)))
    assert flax_dots and all(pair == ("f32", "f32") for pair in flax_dots), flax_dots


def test_bf16_classifier_gradients_follow_float32():
    config = BertConfig(
        vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    ids = jax.random.randint(jax.random.key(0), (4, 24), 1, 99)
    mask = jnp.ones_like(ids)
    labels = jnp.array([0, 1, 2, 1])

    def grads(dtype, params):
        model = SequenceClassifier(config, num_labels=3, dtype=dtype)

        def loss(p):
            logits = model.apply({"params": p}, ids, mask)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

        return jax.jit(jax.grad(loss))(params)

    params = SequenceClassifier(config, num_labels=3).init(jax.random.key(1), ids, mask)["params"]
    g16, g32 = grads(BF16, params), grads(jnp.float32, params)
    assert jax.tree.structure(g16) == jax.tree.structure(g32)
    # The key bias's exact gradient is 0 (a per-query constant under the softmax): its float32 value is
    # rounding noise, so each leaf is judged against its own norm plus a floor from the largest leaf.
    scale = max(float(jnp.linalg.norm(b)) for b in jax.tree.leaves(g32))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g16), jax.tree.leaves(g32), strict=True):
        assert a.dtype == jnp.float32, jax.tree_util.keystr(path)
        err = float(jnp.linalg.norm(a - b))
        assert err <= 0.05 * float(jnp.linalg.norm(b)) + 1e-3 * scale, (jax.tree_util.keystr(path), err)
