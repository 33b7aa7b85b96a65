"""Continual learning: the pieces (heads, loss terms, Fisher, replay buffer, forgetting metrics).

A sequence of tasks shares one encoder (`jaxft.models.bert.BertEncoder`) and gives each task its own
linear head; the parameter tree is `{"bert": encoder params, "heads": {head: {"kernel", "bias"}}}`. The loop
that trains a sequence lives in `jaxft.recipes.continual`; this module holds what it is built
from, each piece a pure function with its own test:

- heads: `init_head`, `head_logits`, and `grow_head` for class-incremental learning (new label columns
  appended, the old ones kept exactly);
- loss terms: `cross_entropy`, `kd_term` (LwF, Li & Hoiem 2016), `ewc_penalty` (Kirkpatrick et al. 2017);
- `fisher_diagonal`: the diagonal Fisher of the encoder from per-example gradients (`jax.vmap(jax.grad)`);
- `ReservoirBuffer`: a bounded, seeded replay memory of tokenised examples with their task;
- `adapter_subset` / `merge_trees`: one Houlsby adapter set per task, swapped into the encoder's tree;
- `forgetting_summary`: average accuracy and average forgetting (Chaudhry et al. 2018) of a matrix R.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxft.errors import UserError

METHODS = ("naive", "ewc", "replay", "kd", "adapter")


@dataclasses.dataclass(frozen=True)
class ContinualConfig:
    """How a task sequence is trained (the `bench/continual.py` flags of the same names).

    Attributes:
        method: one of `METHODS`.
        epochs: passes over each task's training set.
        batch_size: examples per step of the current task.
        eval_batch_size: examples per evaluation batch.
        learning_rate: peak AdamW rate for every method but "adapter".
        adapter_learning_rate: peak rate for "adapter" (only adapters and the head train).
        adapter_size: bottleneck width of each Houlsby adapter.
        ewc_lambda: weight of the EWC penalty `lambda/2 * sum F (theta - theta*)^2`. Large, because the
            encoder's Fisher sums to O(1) over all weights while fine-tuning moves each by ~1e-3: with
            lambda 1e3 the term stayed below 1e-4 in a MiniLM smoke run (a scale estimate, not tuned).
        fisher_examples: training examples of a task its Fisher is estimated on.
        fisher_chunk: examples per `vmap` call when computing the Fisher (memory: chunk x encoder size).
        replay_capacity: examples the replay buffer holds, over all earlier tasks.
        replay_batch_size: replayed examples added to every step.
        kd_temperature: distillation temperature T.
        kd_weight: weight of the distillation term (per old head).
        num_buckets: length buckets for batching (`jaxft.data.batching.bucket_lengths`).
        seed: initialisation, data order, dropout, Fisher subset and buffer draws.
    """

    method: str = "naive"
    epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 128
    learning_rate: float = 5e-5
    adapter_learning_rate: float = 1e-3
    adapter_size: int = 64
    ewc_lambda: float = 1e5
    fisher_examples: int = 256
    fisher_chunk: int = 8
    replay_capacity: int = 500
    replay_batch_size: int = 16
    kd_temperature: float = 2.0
    kd_weight: float = 1.0
    num_buckets: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"continual.method={self.method!r} must be one of {', '.join(METHODS)}")
        for key in ("epochs", "batch_size", "eval_batch_size", "adapter_size", "fisher_examples"):
            if getattr(self, key) < 1:
                raise UserError(f"continual.{key}={getattr(self, key)} must be at least 1")
        for key in ("fisher_chunk", "replay_capacity", "replay_batch_size", "num_buckets"):
            if getattr(self, key) < 1:
                raise UserError(f"continual.{key}={getattr(self, key)} must be at least 1")
        if self.kd_temperature <= 0:
            raise UserError(f"continual.kd_temperature={self.kd_temperature} must be positive")
        if self.ewc_lambda < 0 or self.kd_weight < 0:
            raise UserError("continual.ewc_lambda and continual.kd_weight must be non-negative")


# ---- heads ------------------------------------------------------------------------------------------------
def init_head(key: jax.Array, hidden_size: int, num_labels: int, stddev: float = 0.02) -> dict:
    """A linear head `pooled @ kernel + bias`: kernel `[hidden, num_labels]` ~ N(0, stddev), bias zero, as
    BERT's classifier is initialised."""
    kernel = stddev * jax.random.normal(key, (hidden_size, num_labels), jnp.float32)
    return {"kernel": kernel, "bias": jnp.zeros((num_labels,), jnp.float32)}


def head_logits(head: dict, pooled: jax.Array) -> jax.Array:
    """`[B, num_labels]` float32 logits of a head on the pooled output `[B, hidden]`."""
    return pooled.astype(jnp.float32) @ head["kernel"] + head["bias"]


def grow_head(head: dict, num_new: int, key: jax.Array, stddev: float = 0.02) -> dict:
    """The head with `num_new` label columns appended (class-incremental learning).

    The old columns of the kernel and the old bias entries are kept bit for bit; the new ones are
    initialised like `init_head`'s.
    """
    if num_new < 1:
        raise UserError(f"a growing label set must add at least one class, got {num_new}")
    new = init_head(key, head["kernel"].shape[0], num_new, stddev)
    return {
        "kernel": jnp.concatenate([head["kernel"], new["kernel"]], axis=1),
        "bias": jnp.concatenate([head["bias"], new["bias"]]),
    }


# ---- loss terms -------------------------------------------------------------------------------------------
def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Softmax cross-entropy averaged over the rows of weight 1 (padding rows have weight 0)."""
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def kd_term(new_logits, old_logits, temperature: float, weights) -> jax.Array:
    """LwF distillation `T^2 * KL(softmax(old/T) || softmax(new/T))`, averaged over real rows.

    The `T^2` keeps the gradient scale independent of T (Hinton et al. 2015). Zero when new == old.
    """
    log_old = jax.nn.log_softmax(old_logits / temperature)
    log_new = jax.nn.log_softmax(new_logits / temperature)
    kl = jnp.sum(jnp.exp(log_old) * (log_old - log_new), axis=-1)
    return temperature**2 * jnp.sum(kl * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def ewc_penalty(params, anchor, fisher, ewc_lambda: float) -> jax.Array:
    """`lambda/2 * sum_i F_i (theta_i - theta*_i)^2` over every leaf of `params` (the shared encoder)."""
    terms = jax.tree.map(lambda p, a, f: jnp.sum(f * jnp.square(p - a)), params, anchor, fisher)
    return 0.5 * ewc_lambda * sum(jax.tree.leaves(terms))


# ---- Fisher -----------------------------------------------------------------------------------------------
def example_nll(bert, head, input_ids, token_type_ids, attention_mask, *, encoder):
    """Negative log-likelihood of ONE example (`[L]` arrays) under the model's own prediction (argmax).

    The predicted class is a constant of the gradient (stop_gradient): the Fisher uses the model's
    distribution, not the label, so it needs no labels (the "own prediction" variant of Kirkpatrick et al.).
    """
    _, pooled = encoder.apply(
        {"params": bert}, input_ids[None], attention_mask[None], token_type_ids[None], deterministic=True
    )
    log_probs = jax.nn.log_softmax(head_logits(head, pooled)[0])
    return -log_probs[jax.lax.stop_gradient(jnp.argmax(log_probs))]


def _fisher_chunk_sum(bert, head, batch, *, encoder):
    """Sum over the chunk's real rows of the squared per-example gradients (one `vmap` of `grad`)."""
    grad_one = jax.grad(lambda b, i, t, m: example_nll(b, head, i, t, m, encoder=encoder))
    grads = jax.vmap(grad_one, in_axes=(None, 0, 0, 0))(
        bert, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    )
    weights = batch["weights"]
    return jax.tree.map(lambda g: jnp.tensordot(weights, jnp.square(g), axes=1), grads)


_FISHER_FNS: dict = {}


def fisher_diagonal(encoder, bert, head, batches) -> dict:
    """Diagonal Fisher of the encoder: mean over examples of squared per-example gradients.

    Args:
        encoder: the `BertEncoder` module.
        bert: its parameters (the point the Fisher is taken at).
        head: the task's head (fixed; only encoder gradients are kept).
        batches: fixed-shape batches (`jaxft.data.batching.make_batch`: input_ids, token_type_ids,
            attention_mask, weights); padding rows (weight 0) do not count. Every batch with the same shape
            reuses one compilation.

    Returns:
        A tree like `bert`: `F_i = mean_n (d log p(y_hat_n | x_n) / d theta_i)^2`.
    """
    if encoder not in _FISHER_FNS:
        _FISHER_FNS[encoder] = jax.jit(lambda b, h, x: _fisher_chunk_sum(b, h, x, encoder=encoder))
    fn = _FISHER_FNS[encoder]
    total, count = None, 0.0
    for batch in batches:
        arrays = {
            k: jnp.asarray(batch[k]) for k in ("input_ids", "token_type_ids", "attention_mask", "weights")
        }
        part = jax.block_until_ready(fn(bert, head, arrays))
        total = part if total is None else jax.tree.map(jnp.add, total, part)
        count += float(np.sum(batch["weights"]))
    if total is None or count == 0:
        raise UserError("continual.fisher_examples: no example to estimate the Fisher on")
    return jax.tree.map(lambda s: s / count, total)


# ---- replay -----------------------------------------------------------------------------------------------
class ReservoirBuffer:
    """A bounded replay memory filled by reservoir sampling (Vitter's Algorithm R), seeded.

    Every example offered so far has the same chance `capacity / seen` to be in the buffer, whatever task
    it came from: the n-th example (0-based) is kept when n < capacity, else it replaces slot j for
    j ~ U{0..n} when j < capacity. Items are tokenised rows (trimmed to their length) with their task.
    """

    def __init__(self, capacity: int, seed: int):
        if capacity < 1:
            raise UserError(f"continual.replay_capacity={capacity} must be at least 1")
        self.capacity = capacity
        self.seen = 0
        self.items: list[dict] = []
        self._rng = np.random.default_rng(seed)

    def offer(self, item: dict) -> None:
        """Offers one item (a dict with at least "task"); keeps it with probability capacity / seen."""
        if len(self.items) < self.capacity:
            self.items.append(item)
        else:
            slot = int(self._rng.integers(0, self.seen + 1))
            if slot < self.capacity:
                self.items[slot] = item
        self.seen += 1

    def add_task(self, task: str, features: dict, labels: np.ndarray) -> None:
        """Offers every example of a task (tokenised features of `jaxft.data.tokenize`), in order."""
        for i, length in enumerate(features["length"]):
            self.offer(
                {
                    "task": task,
                    "input_ids": features["input_ids"][i, :length].copy(),
                    "token_type_ids": features["token_type_ids"][i, :length].copy(),
                    "label": int(labels[i]),
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def sample_batch(self, size: int, rng: np.random.Generator, task_ids: dict, lengths: list[int]) -> dict:
        """A fixed-shape batch of `size` buffered examples (without replacement when the buffer allows).

        Args:
            size: rows of the batch.
            rng: the draw (seeded by the caller).
            task_ids: task name -> the integer the batch's "task" row holds (the head's index).
            lengths: the allowed sequence lengths; the batch takes the smallest that fits its longest row.

        Returns:
            input_ids, token_type_ids, attention_mask `[size, L]`, labels, task (int32), weights (all 1).
        """
        picks = rng.choice(len(self.items), size, replace=len(self.items) < size)
        rows = [self.items[i] for i in picks]
        longest = max(len(r["input_ids"]) for r in rows)
        width = next(length for length in lengths if length >= longest)
        batch = {
            "input_ids": np.zeros((size, width), np.int32),
            "token_type_ids": np.zeros((size, width), np.int32),
            "attention_mask": np.zeros((size, width), np.int32),
            "labels": np.array([r["label"] for r in rows], np.int32),
            "task": np.array([task_ids[r["task"]] for r in rows], np.int32),
            "weights": np.ones(size, np.float32),
        }
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            batch["input_ids"][i, :n] = r["input_ids"]
            batch["token_type_ids"][i, :n] = r["token_type_ids"]
            batch["attention_mask"][i, :n] = 1
        return batch


# ---- per-task adapters ------------------------------------------------------------------------------------
def adapter_subset(bert: dict) -> dict:
    """Only the Houlsby adapter leaves (`.../adapter/...`) of an encoder tree, nested as in the tree."""
    flat = traverse_util.flatten_dict(bert)
    return traverse_util.unflatten_dict({k: v for k, v in flat.items() if "adapter" in k})


def merge_trees(base: dict, overrides: dict) -> dict:
    """`base` with every leaf of `overrides` put in (new paths are added). Pure; traceable under jit."""
    flat = dict(traverse_util.flatten_dict(base))
    flat.update(traverse_util.flatten_dict(overrides))
    return traverse_util.unflatten_dict(flat)


# ---- metrics ----------------------------------------------------------------------------------------------
def forgetting_summary(matrix) -> dict:
    """Average accuracy and forgetting of an accuracy matrix R (Chaudhry et al. 2018, "Riemannian walk").

    Args:
        matrix: `R[i][j]` = accuracy on task j after training task i, for j <= i (entries above the
            diagonal are ignored; None or NaN there is fine).

    Returns:
        "average_accuracy": mean_j R[T-1][j] over all T tasks; "forgetting": for every j < T-1,
        max_{j <= l < T-1} R[l][j] - R[T-1][j]; "average_forgetting": their mean (None for one task).
    """
    r = np.array([[np.nan if v is None else v for v in row] for row in matrix], np.float64)
    tasks = r.shape[0]
    if r.shape != (tasks, tasks) or tasks == 0:
        raise ValueError(f"R must be square and non-empty, got shape {r.shape}")
    last = r[-1]
    forgetting = [float(np.max(r[j : tasks - 1, j]) - last[j]) for j in range(tasks - 1)]
    return {
        "average_accuracy": float(np.mean(last)),
        "forgetting": forgetting,
        "average_forgetting": float(np.mean(forgetting)) if forgetting else None,
    }


def matrix_markdown(names: list[str], matrix) -> str:
    """R as a markdown table: one row per "after task i", one column per task j (blank above the diagonal)."""
    lines = ["| after \\ on | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, row in enumerate(matrix):
        cells = [
            "" if j > i or row[j] is None or math.isnan(row[j]) else f"{row[j]:.4f}"
            for j in range(len(names))
        ]
        lines.append(f"| {names[i]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
