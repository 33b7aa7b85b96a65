"""Dropout from 16-bit random draws: half the threefry work of `flax.linen.Dropout`.

`jax.random.bernoulli` (which `nn.Dropout` uses) spends one 32-bit threefry word per element; through JAX's
CPU lowering threefry was a large part of a CPU train step (bench/README.md, "Where the CPU step goes"). Here
each 32-bit word is split into two 16-bit draws, one per element. An element is dropped when its draw is below
`round(rate * 2**16)`, so the drop probability is `rate` rounded to a multiple of 2**-16 (0.1 becomes 6554 /
65536 = 0.1000061), and kept elements are scaled by the inverse of that exact keep probability: the
expectation is unchanged. The scaling is done in float32 and rounded once, also for bfloat16 activations
(`nn.Dropout` divides bfloat16 inputs by the keep probability rounded to bfloat16, 0.9 -> 0.8984375: every
kept value 0.17% too large).

The 32-bit words are `jax.random.bits(rng, shape, jnp.uint32)` bit for bit, but computed by `random_bits`: JAX
lowers threefry on CPU as a 5-trip `while` loop over whole arrays, which XLA cannot fuse; written out round by
round it is one elementwise fusion (the two timed in bench/README.md).

The draws keep every leading axis of the masked array (only the last is halved), so a batch sharded over
devices draws its mask where its rows live, as `jax.random.bits` does for any shape.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxft import backend

_LEVELS = 1 << 16  # values of a 16-bit draw
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))  # threefry-2x32's rotation constants, even and odd rounds


def _threefry2x32(k1, k2, x1, x2):
    """The threefry-2x32 hash with 20 rounds (Salmon et al., 2011), as `jax.random` computes it."""
    keys = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + keys[0], x2 + keys[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = ((x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r))) ^ x1
        x1 = x1 + keys[(i + 1) % 3]
        x2 = x2 + keys[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def random_bits(rng, shape: tuple[int, ...]) -> jax.Array:
    """`jax.random.bits(rng, shape, jnp.uint32)`, bit for bit, without JAX's CPU loop over whole arrays.

    For a threefry key (JAX's default) under `jax_threefry_partitionable` (its default) each word is the
    hash of the element's flat index, its two output halves xor-ed, as JAX computes it; the index is built
    from one iota per axis, so a sharded array hashes its own rows. Other keys, and arrays of 2**32 words
    or more, go to `jax.random.bits` itself.
    """
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)  # a raw key: JAX's default implementation, as jax.random reads it
    size = math.prod(shape)
    if (
        not backend.cpu_forms()  # elsewhere JAX's own lowering is as fast
        or str(jax.random.key_impl(rng)) != "threefry2x32"
        or size >= 1 << 32
        or not getattr(jax.config, "jax_threefry_partitionable", True)  # the only layout if the flag goes
    ):
        return jax.random.bits(rng, shape, jnp.uint32)
    strides = [math.prod(shape[axis + 1 :]) for axis in range(len(shape))]
    iotas = (jax.lax.broadcasted_iota(jnp.uint32, shape, a) * np.uint32(s) for a, s in enumerate(strides))
    index = sum(iotas, jnp.zeros(shape, jnp.uint32))
    key = jax.random.key_data(rng)
    high, low = _threefry2x32(key[0], key[1], jnp.zeros(shape, jnp.uint32), index)
    return high ^ low


def keep_mask(rng, rate: float, shape: tuple[int, ...]) -> tuple[jax.Array, float]:
    """A boolean mask of `shape`, True where an element is kept, and the probability of keeping one.

    Args:
      rng: PRNG key.
      rate: probability of dropping an element, in [0, 1].
      shape: the masked array's shape (at least one axis).

    Returns:
      (mask, keep probability), the probability after rounding `rate` to a multiple of 2**-16.
    """
    threshold = round(rate * _LEVELS)
    if threshold >= _LEVELS:
        return jnp.zeros(shape, bool), 0.0
    *lead, last = shape
    words = random_bits(rng, (*lead, (last + 1) // 2))
    draws = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(*lead, -1)[..., :last]
    return draws >= jnp.uint16(threshold), 1.0 - threshold / _LEVELS


def dropout(rng, rate: float, x: jax.Array) -> jax.Array:
    """`x` with each element zeroed with probability `rate` (rounded as `keep_mask` says), the rest scaled
    by the inverse keep probability."""
    keep, keep_prob = keep_mask(rng, rate, x.shape or (1,))
    if keep_prob == 0.0:
        return jnp.zeros_like(x)
    # Scaled in float32 and rounded once: a bfloat16 scale (1/0.9 -> 1.109375) would bias every kept value.
    scaled = (x.astype(jnp.float32) * (1.0 / keep_prob)).astype(x.dtype)
    return jnp.where(keep.reshape(x.shape), scaled, jnp.zeros((), x.dtype))


class Dropout(nn.Module):
    """`flax.linen.Dropout` (rate, `deterministic`, the "dropout" RNG stream) with 16-bit draws."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        return dropout(self.make_rng("dropout"), self.rate, x)
