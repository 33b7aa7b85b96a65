"""The optimizer, built from optax parts: clipping, then AdamW or SGD, on a warm-up + decay schedule.

Weight decay (and the optional L2 penalty) skip biases and LayerNorm parameters, as in BERT's original
recipe and Hugging Face's `Trainer`; `decay_mask` is the single place that decides.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxft.strategies import peft as peft_lib
from jaxft.strategies.regularization import scale_by_layer


def warmup_steps(opt: ml_collections.ConfigDict, total_steps: int) -> int:
    """Warm-up length in steps: `warmup_steps` if set, else `warmup_ratio` of `total_steps` (rounded up)."""
    if opt.warmup_steps > 0:
        return int(opt.warmup_steps)
    return int(-(-opt.warmup_ratio * total_steps // 1))


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to the peak, then linear decay to 0 at `total_steps` (or constant).

    Equal to transformers' `get_linear_schedule_with_warmup`: the rate used at update k (0-based) is
    `lr * k / warmup` during warm-up and `lr * (total - k) / (total - warmup)` after it.

    Args:
      opt: the `optimizer` section of the config.
      total_steps: number of optimizer updates in the run.

    Returns:
      An optax schedule mapping the update count to a learning rate.
    """
    peak, warmup = opt.learning_rate, warmup_steps(opt, total_steps)
    after = (
        optax.constant_schedule(peak)
        if opt.schedule == "constant"
        else optax.linear_schedule(peak, 0.0, max(total_steps - warmup, 1))
    )
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params) -> dict:
    """True for parameters that weight decay applies to: everything but biases and LayerNorm parameters (in
    every family's names: `LayerNorm`, `layer_norm`, ModernBERT's `norm`, `attn_norm`, `final_norm`, ...)."""

    def is_norm(name: str) -> bool:
        return "LayerNorm" in name or "layer_norm" in name or name.endswith("norm")

    def decays(path, _):
        names = [getattr(key, "key", str(key)) for key in path]
        return names[-1] != "bias" and not any(map(is_norm, names))

    return jax.tree_util.tree_map_with_path(decays, params)


def l2_penalty(params, coefficient: float) -> jax.Array:
    """`coefficient * 0.5 * ||w||^2` over the decayed parameters: an L2 term that goes into the loss."""
    if coefficient == 0:
        return jnp.zeros((), jnp.float32)
    leaves = jax.tree.leaves(
        jax.tree.map(lambda p, m: jnp.sum(jnp.square(p)) if m else 0.0, params, decay_mask(params))
    )
    return coefficient * 0.5 * sum(leaves)


def create_optimizer(
    opt: ml_collections.ConfigDict, total_steps: int, peft: peft_lib.PeftConfig | None = None
) -> optax.GradientTransformation:
    """Builds the optimizer named by `opt.name` on the schedule of `learning_rate_schedule`.

    Args:
      opt: the `optimizer` section of the config.
      total_steps: number of optimizer updates in the run (the schedule decays to 0 there).
      peft: which parameters train; the others get no update and no optimizer state.

    Returns:
      `clip_by_global_norm` (when `max_grad_norm` > 0) chained with AdamW (decoupled, masked weight decay) or
      SGD with momentum (masked weight decay added to the gradient), then layer-wise learning-rate decay
      (when `layer_decay` < 1); under PEFT all of it applies to the trained parameters only (their gradient
      norm is the one clipped).

    Example:
      >>> tx = create_optimizer(get_config().optimizer, total_steps=1000)
      >>> opt_state = tx.init(params)
    """
    schedule = learning_rate_schedule(opt, total_steps)
    parts = [optax.clip_by_global_norm(opt.max_grad_norm)] if opt.max_grad_norm > 0 else []
    if opt.name == "adamw":
        parts.append(
            optax.adamw(
                schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask
            )
        )
    else:
        if opt.weight_decay > 0:
            parts.append(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask))
        parts.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
    if opt.layer_decay != 1.0:
        parts.append(scale_by_layer(opt.layer_decay))
    tx = optax.chain(*parts)
    if peft is None or peft.method == "none":
        return tx
    return optax.multi_transform(
        {"train": tx, "frozen": optax.set_to_zero()}, peft_lib.optimizer_labels(peft)
    )
