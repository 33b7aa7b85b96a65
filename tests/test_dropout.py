"""Dropout from 16-bit draws (jaxft.models.dropout): the exact mask, its rate, scaling, and sharding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxft.models.dropout import Dropout, dropout, keep_mask, random_bits


@pytest.mark.parametrize("shape", [(), (7,), (3, 5, 8), (2, 3, 4, 65)])
def test_random_bits_are_jax_random_bits_bit_for_bit(shape):
    typed, raw = jax.random.fold_in(jax.random.key(11), 4), jax.random.PRNGKey(11)
    for rng in (typed, raw):
        expected = np.asarray(jax.random.bits(rng, shape, jnp.uint32))
        np.testing.assert_array_equal(np.asarray(random_bits(rng, shape)), expected)
        np.testing.assert_array_equal(
            np.asarray(jax.jit(random_bits, static_argnums=1)(rng, shape)), expected
        )
    keys = jax.random.split(typed, 3)  # under vmap, as a lifted module would draw
    batched = jax.vmap(lambda k: random_bits(k, shape))(keys)
    np.testing.assert_array_equal(
        np.asarray(batched), np.asarray(jax.vmap(lambda k: jax.random.bits(k, shape))(keys))
    )


def test_random_bits_of_other_key_implementations_come_from_jax():
    rng = jax.random.key(2, impl="rbg")
    np.testing.assert_array_equal(
        np.asarray(random_bits(rng, (4, 6))), np.asarray(jax.random.bits(rng, (4, 6)))
    )


@pytest.mark.parametrize("shape", [(3, 5, 8), (4, 7), (9,)])
def test_mask_is_each_32_bit_word_split_into_two_16_bit_draws(shape):
    # Reference in numpy: the same threefry words, each read as two little-endian 16-bit halves (low half
    # first), cut to the last axis' length, dropped below round(rate * 65536).
    rng, rate = jax.random.key(3), 0.3
    *lead, last = shape
    words = np.asarray(jax.random.bits(rng, (*lead, (last + 1) // 2), jnp.uint32))
    halves = np.stack([words & 0xFFFF, words >> 16], axis=-1).reshape(*lead, -1)[..., :last]
    mask, keep_prob = keep_mask(rng, rate, shape)
    np.testing.assert_array_equal(np.asarray(mask), halves >= round(rate * 65536))
    assert keep_prob == 1 - round(rate * 65536) / 65536


def test_dropped_fraction_is_the_rounded_rate():
    mask, keep_prob = keep_mask(jax.random.key(0), 0.1, (64, 12, 128, 128))
    assert keep_prob == 1 - 6554 / 65536
    n, dropped = mask.size, int((~mask).sum())
    sigma = np.sqrt(n * 0.1 * 0.9)
    assert abs(dropped - n * (1 - keep_prob)) < 5 * sigma  # a fixed key: this draw, not a flaky statistic


def test_kept_elements_are_scaled_by_the_inverse_keep_probability():
    x = jax.random.normal(jax.random.key(1), (6, 33))
    rng, rate = jax.random.key(2), 0.3  # 0.3 is not a multiple of 2**-16
    mask, keep_prob = keep_mask(rng, rate, x.shape)
    out = np.asarray(dropout(rng, rate, x))
    np.testing.assert_array_equal(out[~np.asarray(mask)], 0.0)
    np.testing.assert_allclose(out[np.asarray(mask)], np.asarray(x)[np.asarray(mask)] / keep_prob, rtol=1e-6)
    assert dropout(rng, rate, jnp.bfloat16(2.0)).dtype == jnp.bfloat16  # a scalar keeps its dtype


def test_bfloat16_values_are_scaled_in_float32_and_rounded_once():
    x = jax.random.normal(jax.random.key(1), (64, 64)).astype(jnp.bfloat16)
    rng, rate = jax.random.key(2), 0.1
    mask, keep_prob = keep_mask(rng, rate, x.shape)
    out = dropout(rng, rate, x)
    assert out.dtype == jnp.bfloat16
    # One rounding of the exact value: within half a bf16 ulp of it. (Not equal to numpy's bf16 of the
    # float32 quotient bit for bit: the float32 product on the way may sit on the other side of a bf16
    # tie, and `x` itself may differ in its last bits on another CPU.) A bf16 scale (1/0.9 -> 1.109375)
    # is off by more for ~1,000 of the ~3,700 kept values.
    kept = np.asarray(mask)
    exact = np.asarray(x, np.float64)[kept] / keep_prob
    half_ulp = 2.0 ** (np.floor(np.log2(np.abs(exact))) - 8)  # bf16: 8 significant bits
    error = np.abs(np.asarray(out, np.float64)[kept] - exact)
    assert np.all(error <= half_ulp + 2**-22 * np.abs(exact)), error.max()  # + the float32 product's


def test_rate_one_zeros_everything_and_the_module_passes_through_when_off():
    x = jnp.arange(1.0, 13.0).reshape(3, 4)
    np.testing.assert_array_equal(dropout(jax.random.key(0), 1.0, x), 0.0)
    rngs = {"dropout": jax.random.key(0)}
    for rate, deterministic in [(0.5, True), (0.0, False)]:
        out = Dropout(rate).apply({}, x, deterministic=deterministic, rngs=rngs)
        np.testing.assert_array_equal(out, x)
    on = Dropout(0.5).apply({}, x, deterministic=False, rngs=rngs)
    assert 0 < int((on == 0).sum()) < x.size


def test_module_draws_from_its_own_dropout_stream():
    # As nn.Dropout: the key is the "dropout" stream folded with the module's path, so two layers differ.
    class Two(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Dropout(0.5)(x, False), Dropout(0.5)(x, False)

    a, b = Two().apply({}, jnp.ones((8, 16)), rngs={"dropout": jax.random.key(0)})
    assert not np.array_equal(a, b)


def test_a_batch_sharded_over_devices_gets_the_unsharded_mask():
    devices = jax.devices()
    assert len(devices) == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    x = jax.random.normal(jax.random.key(1), (16, 10, 24))
    rng = jax.random.key(5)
    expected = dropout(rng, 0.1, x)
    rows = NamedSharding(mesh, P("data"))
    sharded = jax.jit(lambda x: dropout(rng, 0.1, x), out_shardings=rows)(jax.device_put(x, rows))
    assert sharded.sharding.is_equivalent_to(rows, x.ndim)
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(expected))
