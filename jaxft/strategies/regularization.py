"""Regularisation beyond weight decay and dropout: R-Drop and layer-wise learning-rate decay.

(Label smoothing lives in the classification task's loss: `jaxft.tasks.classification`.)

- R-Drop (Liang et al. 2021): two forward passes with different dropout masks; the loss is the mean of their
  cross-entropies plus `alpha` times the symmetric KL divergence between their predicted distributions,
  `(KL(p1 || p2) + KL(p2 || p1)) / 2`, summed over the real rows like the task loss.
- Layer-wise learning-rate decay (LLRD; Clark et al. 2020, Sun et al. 2019): the learning rate of the task
  head and pooler is the peak rate; encoder layer i of n (0-based) gets `decay ** (n - i)` of it and the
  embeddings `decay ** (n + 1)`. Implemented as a scaling of the optimizer's final updates, which for AdamW
  (whose decoupled weight decay is also multiplied by the rate) is the same as a per-layer learning rate.
"""

import re

import jax
import jax.numpy as jnp
import optax

_LAYER = re.compile(
    r"layers?_(\d+)"
)  # a block of the encoder: `layer_3` (BERT, DeBERTa), `layers_3` (ModernBERT)


def symmetric_kl(logits_a: jax.Array, logits_b: jax.Array, weights: jax.Array) -> jax.Array:
    """`sum_rows weight * (KL(a || b) + KL(b || a)) / 2` for [B, C] logits (float32)."""
    log_a, log_b = jax.nn.log_softmax(logits_a, -1), jax.nn.log_softmax(logits_b, -1)
    kl_ab = jnp.sum(jnp.exp(log_a) * (log_a - log_b), -1)
    kl_ba = jnp.sum(jnp.exp(log_b) * (log_b - log_a), -1)
    return jnp.sum(weights * (kl_ab + kl_ba) / 2)


def layer_scale(path: tuple[str, ...], num_layers: int, decay: float) -> float:
    """The learning-rate multiplier of the parameter at `path` under layer-wise decay."""
    if "embeddings" in path:
        return decay ** (num_layers + 1)
    for name in path:
        match = _LAYER.fullmatch(name)
        if match:
            return decay ** (num_layers - int(match.group(1)))
    return 1.0  # task head, pooler, MLM head


def _names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in path)


def num_layers(tree) -> int:
    """How many `layer_{i}` (or `layers_{i}`) blocks a parameter tree has."""
    found = [
        int(m.group(1))
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
        for m in (_LAYER.fullmatch(n) for n in _names(path))
        if m
    ]
    return max(found, default=-1) + 1


def scale_by_layer(decay: float) -> optax.GradientTransformation:
    """Multiplies each update by `layer_scale` of its parameter (stateless; depth read from the tree)."""

    def update_fn(updates, state, params=None):
        del params
        depth = num_layers(updates)
        scale = lambda path, u: u * layer_scale(_names(path), depth, decay)  # noqa: E731
        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
