"""Class weights of the loss (`data.class_weights`): resolved once on the host, applied in the tasks' losses.

Resolution (`single_label`, `pos_weights`) turns the config's value, read by `jaxft.config.class_weights`,
into one float per label of the label set, in label order:

- a mapping gives each label it names its weight and every other label 1.0;
- "balanced" for exclusive classes (classification, pet, relation; ner over the train split's word tags) is
  scikit-learn's `compute_class_weight("balanced", ...)` itself, n_samples / (n_classes * count(class)),
  on the train targets as trained on (after max_train_examples, k_shot and augmentation);
- "balanced" for multi-label targets is one pos_weight per label, n_negative / n_positive over the train
  examples: the value commonly given to PyTorch's `BCEWithLogitsLoss(pos_weight=)` for imbalance.

A label without a train example (or, multi-label, one on every train example) has no "balanced" weight:
that is a `UserError` naming data.class_weights, as is a weight for a label outside the label set.

Losses (pure functions of arrays, on the device): `softmax_cross_entropy` is PyTorch's
`CrossEntropyLoss(weight=w)`: each term weighs w[y] and the step divides the sum by the sum of those weights,
over the real rows (or labelled positions) of the global batch. With label smoothing it is PyTorch's
`CrossEntropyLoss(weight=w, label_smoothing=s)`, whose smoothing term weighs class c by w[c].
`sigmoid_cross_entropy` is `BCEWithLogitsLoss(pos_weight=p, reduction="none")`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sklearn.utils.class_weight

from jaxft import config as config_lib
from jaxft.errors import UserError

KEY = "config data.class_weights"


def single_label(spec, targets: np.ndarray, names: list[str]) -> tuple[float, ...]:
    """One weight per class for exclusive classes.

    Args:
      spec: `jaxft.config.class_weights`'s reading of data.class_weights ("balanced" or {label: weight}).
      targets: the train split's class ids (into `names`), any shape; every element is one train target.
      names: the label set.

    Returns:
      The weights in label order.

    Raises:
      UserError: a mapping names a label outside `names`; "balanced" meets a class without a train target.
    """
    if spec != config_lib.BALANCED:
        config_lib.check_class_weight_labels(spec, names)
        return tuple(float(spec.get(name, 1.0)) for name in names)
    y = np.asarray(targets, np.int64).ravel()
    counts = np.bincount(y, minlength=len(names))
    _refuse_absent(names, counts == 0, "has no train example")
    weights = sklearn.utils.class_weight.compute_class_weight("balanced", classes=np.arange(len(names)), y=y)
    return tuple(float(w) for w in weights)


def pos_weights(spec, multi_hot: np.ndarray, names: list[str]) -> tuple[float, ...]:
    """One positive weight per label for multi-label targets [N, L] (0/1): "balanced" is n_negative /
    n_positive over the N train examples. Raises `UserError` as `single_label` does, and for "balanced"
    when a label is on every train example (its weight would be 0)."""
    if spec != config_lib.BALANCED:
        config_lib.check_class_weight_labels(spec, names)
        return tuple(float(spec.get(name, 1.0)) for name in names)
    positive = (np.asarray(multi_hot) > 0.5).sum(0).astype(np.int64)
    negative = len(multi_hot) - positive
    _refuse_absent(names, positive == 0, "is on no train example")
    _refuse_absent(names, negative == 0, "is on every train example (its pos_weight would be 0)")
    return tuple(float(n) / float(p) for n, p in zip(negative, positive, strict=True))


def _refuse_absent(names: list[str], absent: np.ndarray, why: str) -> None:
    if absent.any():
        label = names[int(np.flatnonzero(absent)[0])]
        raise UserError(
            f"{KEY}='balanced': label {label!r} {why}, so its balanced weight is undefined; give the "
            "weights as label=weight instead"
        )


def softmax_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    class_weights: tuple[float, ...],
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted losses, sum of weights) of softmax cross-entropy with class weights.

    Args:
      logits: [..., C].
      labels: class ids [...] (valid everywhere: positions that do not count carry weight 0).
      weights: [...]: 1 for a term that counts, 0 for padding or an ignored position.
      class_weights: C floats.
      label_smoothing: s: PyTorch's smoothing, `(1 - s) * w[y] * nll + s / C * sum_c w[c] * -log p_c`.

    Returns:
      (sum, total): sum / total is `torch.nn.functional.cross_entropy(logits, labels, weight=w,
      label_smoothing=s)` over the terms of weight 1.
    """
    table = jnp.asarray(class_weights, jnp.float32)
    example = weights * table[labels]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels) * example
    if label_smoothing:
        smooth = -jnp.sum(jax.nn.log_softmax(logits, -1) * table, -1) * weights
        losses = (1 - label_smoothing) * losses + label_smoothing / logits.shape[-1] * smooth
    return jnp.sum(losses), jnp.sum(example)


def sigmoid_cross_entropy(logits: jax.Array, targets: jax.Array, pos_weight: tuple[float, ...]) -> jax.Array:
    """Binary cross-entropy per element with a positive weight per label (the last axis):
    `-(p * y * log s(x) + (1 - y) * log(1 - s(x)))`, in PyTorch's stable form."""
    p = jnp.asarray(pos_weight, jnp.float32)
    return (1 - targets) * logits + (1 + (p - 1) * targets) * jax.nn.softplus(-logits)


def describe(names: list[str], weights: tuple[float, ...], what: str = "class weight") -> tuple[str, dict]:
    """The eval report's line saying the loss is weighted, and its JSON key ("loss_class_weights")."""
    shown = ", ".join(f"{name}={weight:.6g}" for name, weight in zip(names, weights, strict=True))
    line = f"loss weighted by data.class_weights ({what} per label): {shown}"
    return line, {"loss_class_weights": dict(zip(names, weights, strict=True))}
