"""The train state and the pure per-device steps: `train_step` and `eval_step`.

Both are plain functions of arrays. `jaxft.training.parallel` runs them over devices; nothing here knows how
many devices there are, only the name of the axis to reduce over (`pmap`), or that there is none: with
`axis_name=None` a step sees the whole global batch and XLA partitions it (sharded `jit`). What differs
between tasks (the loss, what an evaluation returns) comes from a `jaxft.tasks.Task`, a static argument like
the model; without one the task is single-label classification. The training strategies (`jaxft.strategies`:
which parameters train, adversarial perturbations, R-Drop) are static arguments too; their defaults are plain
fine-tuning.
"""

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxft import backend
from jaxft.strategies import adversarial as adversarial_lib
from jaxft.strategies import peft as peft_lib
from jaxft.strategies.regularization import symmetric_kl
from jaxft.tasks import StepLoss, Task
from jaxft.tasks.classification import Classification
from jaxft.training.optim import l2_penalty

_CLASSIFICATION = Classification()
_NO_TASK = StepLoss()  # embedding and plain forward passes: no extra model inputs
_NO_PEFT = peft_lib.PeftConfig()
_NO_ADVERSARIAL = adversarial_lib.AdversarialConfig()
# Folded into a step's key for the task's own draws (mlm's masks): a stream apart from the dropout keys,
# which fold in device and micro-batch indices, far below this.
INPUT_STREAM = 0x4D4C4D


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs from the device: arrays only, no closures."""

    step: jax.Array  # optimizer updates done so far (int32 scalar)
    params: Any
    opt_state: Any
    key: jax.Array  # base PRNG key (uint32[2]); dropout keys are derived from it, never split off it
    nonfinite_steps: jax.Array  # steps whose loss or gradients were not finite (their update was skipped)


def create_train_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state at step 0 for `params`."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        key=jax.random.key_data(jax.random.key(seed)),
        nonfinite_steps=jnp.zeros((), jnp.int32),
    )


def step_key(key_data: jax.Array, step: jax.Array) -> jax.Array:
    """The key of optimizer step `step` from the state's base key data: `fold_in(base, step)`."""
    return jax.random.fold_in(jax.random.wrap_key_data(key_data), step)


def input_key(key_data: jax.Array, step: jax.Array) -> jax.Array:
    """The key a task draws its step's inputs with (`Task.train_inputs`: mlm's masks), the same on every
    device: `fold_in(step_key, INPUT_STREAM)`."""
    return jax.random.fold_in(step_key(key_data, step), INPUT_STREAM)


def _forward(
    model: nn.Module,
    params,
    batch: dict,
    key,
    deterministic: bool,
    perturbations=None,
    task: StepLoss = _NO_TASK,
):
    rngs = None if deterministic else {"dropout": key}
    variables = {"params": params}
    if perturbations is not None:
        variables["perturbations"] = perturbations
    return model.apply(
        variables,
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        deterministic=deterministic,
        rngs=rngs,
        **task.model_inputs(batch),
    )


def weighted_loss_sum(
    model: nn.Module,
    params,
    batch: dict,
    key,
    deterministic: bool,
    task: StepLoss = _CLASSIFICATION,
    perturbations=None,
    rdrop_alpha: float = 0.0,
    loss_terms: tuple = (),
) -> tuple[jax.Array, jax.Array]:
    """(Sum of the task's losses, sum of their weights) over this batch.

    The weights are the rows' (padding rows 0) for sequence tasks, and the labelled positions' for token
    tasks (padding and ignored positions 0), so neither padding nor ignored positions contribute; with class
    weights (`data.class_weights`) each row or position weighs its label's weight instead of 1. With
    `rdrop_alpha` > 0 (R-Drop, sequence tasks), a second pass with other dropout masks is made and the sum is
    of the two passes' mean loss plus `rdrop_alpha` times their symmetric KL divergence, each row's weighted
    as its loss is (`Task.row_weights`).

    Each of `loss_terms` is `term(params, batch, outputs) -> scalar`, a mean over this batch's weight (or a
    function of the parameters alone, like a penalty); it enters the sum multiplied by the batch's weight,
    so that after the step divides by the global weight it is the mean over the global batch, whatever the
    number of devices or micro-batches (a term that divides by the weight must allow for a device whose
    rows are all padding: weight 0). A term takes the arrays it needs (a teacher's logits, an anchor) from
    the batch, which a data transform can extend. (With class weights a batch's weight is the sum of its
    rows' class weights: a term that is one value for the whole global batch, like a penalty, still enters
    as itself; a mean over rows enters as the devices' means weighted by their class-weight sums.)
    """
    logits = _forward(model, params, batch, key, deterministic, perturbations, task)
    loss, weight = task.loss(logits, batch)
    if rdrop_alpha:
        other = _forward(model, params, batch, jax.random.fold_in(key, 1), deterministic, perturbations, task)
        rows = task.row_weights(batch)
        loss = (loss + task.loss(other, batch)[0]) / 2 + rdrop_alpha * symmetric_kl(logits, other, rows)
    for term in loss_terms:
        loss = loss + term(params, batch, logits) * weight
    return loss, weight


def loss_and_grads(
    params,
    batch: dict,
    key,
    *,
    model: nn.Module,
    axis_name: str | None,
    accum_steps: int = 1,
    deterministic: bool = False,
    task: StepLoss = _CLASSIFICATION,
    peft: peft_lib.PeftConfig = _NO_PEFT,
    adversarial: adversarial_lib.AdversarialConfig = _NO_ADVERSARIAL,
    rdrop_alpha: float = 0.0,
    loss_terms: tuple = (),
) -> tuple[jax.Array, dict, jax.Array]:
    """Mean loss and its gradient over every real example (or labelled position) of the global batch.

    Each device sums its losses, their weights and the gradients over `accum_steps` micro-batches; the sums
    and the weight are added across devices, and only then divided. So the result does not depend on how
    the batch is split over devices or micro-batches, nor on padding rows or ignored positions (weight 0).

    Args:
      params: model parameters.
      batch: this device's arrays (with `axis_name=None`: the global batch's), leading axis B (divisible by
        `accum_steps`).
      key: this device's dropout key for the step; micro-batch i uses `fold_in(key, i)`.
      model: the Flax module producing logits.
      axis_name: the data-parallel axis to reduce over; None when `batch` is the whole global batch.
      accum_steps: micro-batches per update (gradient accumulation).
      deterministic: turn dropout off.
      task: the loss (default: single-label classification).
      peft: which parameters train (the others get no gradient: zeros, never computed).
      adversarial: adversarial training on the embedding output (`jaxft.strategies.adversarial`).
      rdrop_alpha: R-Drop's KL weight (0: off).
      loss_terms: extra terms of the loss (see `weighted_loss_sum`).

    Returns:
      (mean loss, mean gradients, total weight: real examples, or labelled positions for token tasks),
      identical on every device.
    """
    micro = jax.tree.map(functools.partial(_micro_batches, accum_steps, strided=axis_name is None), batch)

    def micro_loss_and_grads(micro_batch, micro_key):
        def loss_fn(p, perturbations=None):
            return weighted_loss_sum(
                model, peft_lib.freeze(p, peft), micro_batch, micro_key, deterministic, task, perturbations,
                rdrop_alpha, loss_terms,
            )  # fmt: skip

        if adversarial.method == "none":
            return jax.value_and_grad(loss_fn, has_aux=True)(params)
        zeros = adversarial_lib.zero_perturbations(model, params, micro_batch)
        return adversarial_lib.loss_and_grads(
            loss_fn, params, zeros, adversarial, jax.random.fold_in(micro_key, 2)
        )

    def accumulate(carry, xs):
        index, micro_batch = xs
        (loss, count), grads = micro_loss_and_grads(micro_batch, jax.random.fold_in(key, index))
        return jax.tree.map(jnp.add, carry, (loss, count, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    if accum_steps == 1:
        (loss_sum, count, grad_sum), _ = accumulate(zeros, (0, jax.tree.map(lambda x: x[0], micro)))
    else:
        (loss_sum, count, grad_sum), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum_steps), micro))
    if axis_name is not None:
        loss_sum, grad_sum, count = jax.lax.psum((loss_sum, grad_sum, count), axis_name)
    denominator = jnp.maximum(count, 1.0)
    return loss_sum / denominator, jax.tree.map(lambda g: g / denominator, grad_sum), count


def _micro_batches(accum_steps: int, x: jax.Array, strided: bool) -> jax.Array:
    """[B, ...] -> [accum_steps, B / accum_steps, ...]: micro-batch i is the i-th block of rows, or with
    `strided` rows i, i + accum_steps, ... . A global batch, sharded over devices in blocks of rows, is split
    strided: each device then holds an equal part of every micro-batch, and splitting moves no data."""
    if strided:
        return x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
    return x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:])


def _guard_with_cond() -> bool:
    """Whether `train_step` skips a non-finite update with `lax.cond` (CPU) or a select (GPU, TPU).

    With `where(finite, new, old)` XLA:CPU copies the whole optimizer state every step (the old moments must
    outlive their in-place update; measured in bench/README.md). On a GPU the select fuses into the update,
    and a conditional can make the host wait for its predicate. One of `jaxft.backend`'s CPU forms.
    """
    return backend.cpu_forms()


def train_step(
    state: TrainState,
    batch: dict,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    axis_name: str | None,
    accum_steps: int = 1,
    l2_coefficient: float = 0.0,
    deterministic: bool = False,
    task: StepLoss = _CLASSIFICATION,
    peft: peft_lib.PeftConfig = _NO_PEFT,
    adversarial: adversarial_lib.AdversarialConfig = _NO_ADVERSARIAL,
    rdrop_alpha: float = 0.0,
    loss_terms: tuple = (),
) -> tuple[TrainState, dict]:
    """One optimizer update from this device's share of the global batch (see `loss_and_grads`).

    Args:
      state: the train state (donated by the caller).
      batch: this device's arrays (with `axis_name=None`: the global batch's), leading axis B (divisible by
        `accum_steps`).
      model: the Flax module producing logits.
      tx: the optimizer.
      axis_name: the data-parallel axis to reduce over; None when `batch` is the whole global batch.
      accum_steps: micro-batches per update (gradient accumulation).
      l2_coefficient: L2 penalty added to the loss (see `optim.l2_penalty`).
      deterministic: turn dropout off (parity tests).
      task: the loss, and the inputs it draws each step with `input_key` (`StepLoss.train_inputs`: a
        `Task`, or a recipe's own loss; default: single-label classification).
      peft, adversarial, rdrop_alpha: training strategies (see `loss_and_grads`).
      loss_terms: extra terms of the loss, computed inside the step (see `weighted_loss_sum`).

    Returns:
      The new state and metrics {"loss", "grad_norm", "examples"} (identical on every device; "examples" is
      the loss's total weight: labelled positions for token tasks).
    """
    # The task's inputs (mlm's masks) from the step's input key, drawn per row: the same on any device
    # count or micro-batching.
    batch = task.train_inputs(batch, input_key(state.key, state.step))
    # Different dropout masks per step and per device (and per micro-batch), all from one base key. The
    # global view has no device index: its masks are drawn for the whole batch at once.
    key = step_key(state.key, state.step)
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    loss, grads, count = loss_and_grads(
        state.params,
        batch,
        key,
        model=model,
        axis_name=axis_name,
        accum_steps=accum_steps,
        deterministic=deterministic,
        task=task,
        peft=peft,
        adversarial=adversarial,
        rdrop_alpha=rdrop_alpha,
        loss_terms=loss_terms,
    )
    if l2_coefficient:
        penalty, penalty_grads = jax.value_and_grad(l2_penalty)(state.params, l2_coefficient)
        loss, grads = loss + penalty, jax.tree.map(jnp.add, grads, penalty_grads)
    # A non-finite loss or gradient leaves parameters and optimizer state as they were, so no checkpoint
    # ever holds NaNs; the host decides from `nonfinite_steps` whether to stop.
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)  # the norm is finite only if every gradient is

    def update(grads):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state

    keep = lambda _: (state.params, state.opt_state)  # noqa: E731
    if _guard_with_cond():
        params, opt_state = jax.lax.cond(finite, update, keep, grads)
    else:
        params, opt_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), update(grads), keep(None))
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
    )
    return new_state, {"loss": loss, "grad_norm": grad_norm, "examples": count}


def eval_step(
    params, batch: dict, *, model: nn.Module, num_labels: int | None = None, task: Task = _CLASSIFICATION
) -> dict:
    """What one batch on one device contributes to an evaluation: the task's sums and per-example outputs.

    For classification: a confusion matrix, a loss sum and an example count. Per-example outputs (the
    `"per_example"` key: regression values, multi-label and token predictions) keep a leading row axis; the
    host places them by example index. No collective: the host sums the per-device outputs, so evaluation
    cannot deadlock and every real example (weight 1) is counted exactly once whatever the padding.

    Args:
      params: model parameters.
      batch: this device's arrays.
      model: the Flax module producing logits.
      num_labels: for classification, the number of classes (the logits' width; checked when given).
      task: what to return (default: single-label classification).
    """
    batch = task.eval_inputs(batch)
    logits = _forward(model, params, batch, None, True, task=task)
    if num_labels is not None and logits.shape[-1] != num_labels:
        raise ValueError(f"the model gives {logits.shape[-1]} logits, not num_labels={num_labels}")
    return task.eval_outputs(logits, batch)


def embed_step(params, batch: dict, *, model: nn.Module, pooling: str = "mean") -> jax.Array:
    """Pooled hidden states [B, hidden] of `model` (a `jaxft.models.heads.EncoderStates`) for one batch:
    "mean" averages the real tokens' vectors (special tokens included, as sentence-transformers does),
    "cls" takes the first token's."""
    hidden = _forward(model, params, batch, None, deterministic=True)
    if pooling == "cls":
        return hidden[:, 0]
    mask = batch["attention_mask"].astype(hidden.dtype)[..., None]
    return (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)


def predict_step(params, batch: dict, *, model: nn.Module, task: Task = _CLASSIFICATION) -> jax.Array:
    """The task's per-example outputs for one batch on one device (class probabilities for classification)."""
    return task.predict_outputs(_forward(model, params, batch, None, deterministic=True))
