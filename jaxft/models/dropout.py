"""Dropout from 16-bit random draws: half the threefry work of `flax.linen.Dropout`.

`jax.random.bernoulli` (which `nn.Dropout` uses) spends one 32-bit threefry word per element; threefry is
~10% of a CPU train step (bench/README.md, "Where the CPU step goes"). Here each 32-bit word is split into two
16-bit draws, one per element. An element is dropped when its draw is below `round(rate * 2**16)`, so the
drop probability is `rate` rounded to a multiple of 2**-16 (0.1 becomes 6554 / 65536 = 0.1000061), and kept
elements are scaled by the inverse of that exact keep probability: the expectation is unchanged. The scaling
is done in float32 and rounded once, also for bfloat16 activations (`nn.Dropout` divides bfloat16 inputs by
the keep probability rounded to bfloat16, 0.9 -> 0.8984375: every kept value 0.17% too large).

The draws keep every leading axis of the masked array (only the last is halved), so a batch sharded over
devices draws its mask where its rows live, as `jax.random.bits` does for any shape.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

_LEVELS = 1 << 16  # values of a 16-bit draw


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
    words = jax.random.bits(rng, (*lead, (last + 1) // 2), jnp.uint32)
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
