"""Adversarial training on the embedding output: FGM, PGD and FreeLB.

The encoder marks its embedding output with Flax's `perturb` (`BertEncoder`, "embedding_output"), so a
perturbation `delta` [B, L, H] is added there by passing it as the "perturbations" collection, and the
gradient with respect to it is the gradient with respect to the embeddings. Each example's perturbation is
bounded in L2 norm by `epsilon` (norms over its positions and features). All passes of one step share the
dropout key, as FreeLB does, so that the perturbation is the only difference between them.

- FGM (Miyato et al. 2017): one step `delta = epsilon * g / ||g||` from the clean gradient `g`.
- PGD (Madry et al. 2018): K steps `delta <- proj_epsilon(delta + step_size * g / ||g||)` from 0.
- FreeLB (Zhu et al. 2020): K ascent steps from a random start in the ball; the parameter gradients of all K
  perturbed passes are averaged ("free" adversarial training: no separate clean pass).

FGM and PGD train on the mean of the clean and the adversarial loss. Means are taken as
`first + sum(x_i - first) / n`, which is exactly `first` when the passes agree: with `epsilon = 0` every
method reproduces plain training (the losses bit for bit; the parameters to float rounding, since XLA
compiles the step that also differentiates the embedding output with other fusions).
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from jaxft import config as config_lib

METHODS = config_lib.ADVERSARIAL_METHODS


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
    """The `adversarial` section of a config (hashable: a static argument of the train step)."""

    method: str = "none"
    epsilon: float = 1.0
    step_size: float = 0.3
    steps: int = 3


def from_config(config: ml_collections.ConfigDict) -> AdversarialConfig:
    """The `adversarial` section, of a config that `jaxft.config.check` has checked."""
    section = config.adversarial
    return AdversarialConfig(
        section.method, float(section.epsilon), float(section.step_size), int(section.steps)
    )


def zero_perturbations(model, params, batch: dict):
    """Zeros shaped like every perturbation point of `model` for `batch` (traced shapes only, no compute)."""

    def shapes():
        _, variables = model.apply(
            {"params": params},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=True,
            mutable=["perturbations"],
        )
        return variables["perturbations"]

    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(shapes))


def _per_example_norm(x: jax.Array) -> jax.Array:
    """L2 norm of each example's slice, shaped to broadcast against `x`."""
    squares = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=tuple(range(1, x.ndim)), keepdims=True)
    return jnp.sqrt(squares)


def project(delta, epsilon: float):
    """Each example's perturbation scaled into the L2 ball of radius `epsilon`."""

    def one(d):
        norm = _per_example_norm(d)
        return (d * jnp.minimum(1.0, epsilon / jnp.maximum(norm, 1e-12))).astype(d.dtype)

    return jax.tree.map(one, delta)


def _ascend(delta, grad, step: float, epsilon: float):
    """One normalised ascent step, projected back into the ball."""
    moved = jax.tree.map(lambda d, g: d + step * g / jnp.maximum(_per_example_norm(g), 1e-12), delta, grad)
    return project(moved, epsilon)


def exact_mean(values: list):
    """The mean of trees, as `first + sum(v - first) / n`: exactly `first` when all are equal."""
    first, n = values[0], len(values)
    rest = values[1:]
    if not rest:
        return first
    return jax.tree.map(lambda f, *r: f + sum(x - f for x in r) / n, first, *rest)


def loss_and_grads(loss_fn, params, zeros, adversarial: AdversarialConfig, key):
    """((loss sum, weight), parameter gradients) of one micro-batch under `adversarial`.

    Args:
      loss_fn: `loss_fn(params, perturbations) -> (loss sum, weight)` of the micro-batch.
      params: model parameters.
      zeros: zero perturbations (`zero_perturbations`).
      adversarial: the method and its bounds.
      key: PRNG key for FreeLB's random start.
    """
    both = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    on_params = jax.value_and_grad(loss_fn, argnums=0, has_aux=True)
    on_delta = jax.grad(lambda p, d: loss_fn(p, d)[0], argnums=1)
    eps, alpha, k = adversarial.epsilon, adversarial.step_size, adversarial.steps
    if adversarial.method == "freelb":
        leaves, tree = jax.tree.flatten(zeros)
        keys = jax.random.split(key, len(leaves))
        noise = [
            jax.random.uniform(kk, x.shape, jnp.float32, -1.0, 1.0).astype(x.dtype)
            for kk, x in zip(keys, leaves, strict=True)
        ]
        delta = project(jax.tree.unflatten(tree, noise), eps)
        losses, grads = [], []
        for _ in range(k):
            (loss, count), (g_params, g_delta) = both(params, delta)
            losses.append(loss)
            grads.append(g_params)
            delta = _ascend(delta, g_delta, alpha, eps)
        return (exact_mean(losses), count), exact_mean(grads)
    (loss0, count), (g0, g_delta) = both(params, zeros)
    if adversarial.method == "fgm":
        delta = _ascend(zeros, g_delta, eps, eps)  # one step of length epsilon from 0
    else:  # pgd
        delta = _ascend(zeros, g_delta, alpha, eps)
        for _ in range(k - 1):
            delta = _ascend(delta, on_delta(params, delta), alpha, eps)
    (loss1, _), g1 = on_params(params, delta)
    return (exact_mean([loss0, loss1]), count), exact_mean([g0, g1])
