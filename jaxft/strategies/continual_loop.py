"""Continual learning: training a task sequence with one method and filling the forgetting matrix.

`run_sequence(tasks, config, ...)` trains the tasks in order on one shared encoder with one head per task
(`jaxft.strategies.continual` holds the pieces) and, after each task i, evaluates every task j <= i:
`R[i][j]` = accuracy on task j's evaluation split. Methods (`ContinualConfig.method`):

- "naive": fine-tune everything on each task in turn; earlier heads are left as they are.
- "ewc": adds `lambda/2 * sum F (theta - theta*)^2` over the encoder. Online EWC with gamma = 1: after each
  task its Fisher is ADDED to the running sum and the anchor theta* moves to the encoder after that task
  (one penalty, not one per task; Schwarz et al. 2018).
- "replay": a reservoir buffer of earlier tasks' tokenised examples; every step adds a replay batch, each
  row scored by its own task's head (those heads train too).
- "kd": LwF. Before task t, the model's logits of every old head on task t's training inputs are recorded
  (deterministic, no dropout); each step adds `kd_weight * T^2 * KL(old || new)` per old head, old heads
  training too.
- "adapter": the pretrained encoder is frozen; each task gets a fresh Houlsby adapter set and head, the
  only parameters that train; earlier tasks' adapters and heads are never touched, so their predictions
  do not change at all.

Class-incremental learning is the same loop over `class_incremental_tasks`: stages that share one head,
which grows by the new classes before each stage (`grow_head`); each stage's evaluation split holds its own
classes, so a row of R split by stage, weighted by split size, gives the accuracy on all classes seen.

The step is one jitted pure function on a single device (continual learning here is a small-data setting;
`jaxft.parallel` is not used). On CPU the loop blocks on every step's output.
"""

import dataclasses
import functools
import logging
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from sklearn.metrics import accuracy_score

from jaxft import optim
from jaxft.data import batching
from jaxft.errors import UserError
from jaxft.models.bert import BertConfig, BertEncoder
from jaxft.models.convert import merge_pretrained
from jaxft.strategies import continual as cl
from jaxft.strategies.peft import PeftConfig, wrap

_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


@dataclasses.dataclass
class TaskData:
    """One task (or class-incremental stage) of a sequence.

    Attributes:
        name: shown in R and logs.
        head: the head it trains and is scored by (stages of one class-incremental task share it).
        num_labels: the head's width while training this task.
        train: tokenised features (`jaxft.data.tokenize.tokenize`) with "labels" (int32 [N]) added.
        eval: the same for its evaluation split.
    """

    name: str
    head: str
    num_labels: int
    train: dict
    eval: dict


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """The static part of a training step: which heads and loss terms it has."""

    head: str
    replay_heads: tuple[str, ...] = ()
    kd_heads: tuple[str, ...] = ()
    kd_temperature: float = 2.0
    kd_weight: float = 1.0
    ewc_lambda: float = 0.0


def _pooled(encoder, bert, batch, key):
    deterministic = key is None
    rngs = None if deterministic else {"dropout": key}
    _, pooled = encoder.apply(
        {"params": bert}, *(batch[k] for k in _INPUTS), deterministic=deterministic, rngs=rngs
    )
    return pooled


def loss_fn(trainable, frozen, batch, extras, key, *, encoder, spec: StepSpec):
    """Task cross-entropy plus the method's terms; returns (loss, per-term metrics).

    `extras` holds what the method needs: "replay" (a buffer batch), "kd" ({old head: recorded logits of
    this batch}), "ewc" ({"anchor", "fisher"} trees like the encoder's). Absent keys: no term.
    """
    params = cl.merge_trees(frozen, trainable)
    heads = params["heads"]
    pooled = _pooled(encoder, params["bert"], batch, jax.random.fold_in(key, 0))
    loss = cl.cross_entropy(cl.head_logits(heads[spec.head], pooled), batch["labels"], batch["weights"])
    metrics = {"ce": loss}
    if "replay" in extras:
        replay = extras["replay"]
        replay_pooled = _pooled(encoder, params["bert"], replay, jax.random.fold_in(key, 1))
        total = 0.0
        for index, name in enumerate(spec.replay_heads):
            mine = replay["task"] == index  # each row is scored by its own task's head only
            labels = jnp.where(mine, replay["labels"], 0)
            logits = cl.head_logits(heads[name], replay_pooled)
            nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
            total = total + jnp.sum(nll * replay["weights"] * mine)
        metrics["replay"] = total / jnp.maximum(jnp.sum(replay["weights"]), 1.0)
        loss = loss + metrics["replay"]
    if "kd" in extras:
        kd = 0.0
        for name in spec.kd_heads:
            old = extras["kd"][name]
            # A grown head (class-incremental) is distilled on its old columns only.
            new = cl.head_logits(heads[name], pooled)[:, : old.shape[1]]
            kd = kd + cl.kd_term(new, old, spec.kd_temperature, batch["weights"])
        metrics["kd"] = kd
        loss = loss + spec.kd_weight * kd
    if "ewc" in extras:
        ewc = extras["ewc"]
        metrics["ewc"] = cl.ewc_penalty(params["bert"], ewc["anchor"], ewc["fisher"], spec.ewc_lambda)
        loss = loss + metrics["ewc"]
    return loss, metrics


def train_step(trainable, opt_state, frozen, batch, extras, key, *, encoder, tx, spec: StepSpec):
    """One optimizer update of `trainable` (everything in `frozen` stays as it is)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, metrics), grads = grad_fn(trainable, frozen, batch, extras, key, encoder=encoder, spec=spec)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, {**metrics, "loss": loss}


@functools.partial(jax.jit, static_argnames="encoder")
def eval_logits(bert, head, batch, *, encoder):
    """Deterministic logits of one head on a batch."""
    return cl.head_logits(head, _pooled(encoder, bert, batch, None))


def _device_batch(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items() if k != "index"}


def accuracy(encoder, bert, head, split: dict, buckets: list[int], batch_size: int) -> float:
    """Accuracy (scikit-learn) of a head on every example of a split, in fixed-shape batches."""
    predictions = np.zeros(len(split["labels"]), np.int64)
    for seq_len, indices in batching.eval_batch_plan(split["length"], buckets, batch_size):
        batch = batching.make_batch(split, split["labels"], indices, seq_len, batch_size)
        logits = np.asarray(eval_logits(bert, head, _device_batch(batch), encoder=encoder))
        predictions[indices] = np.argmax(logits[: len(indices)], axis=-1)
    return float(accuracy_score(split["labels"], predictions))


def record_logits(encoder, bert, head, split: dict, buckets: list[int], batch_size: int) -> np.ndarray:
    """A head's logits on every example of a split (`[N, num_labels]`), for distillation."""
    out = np.zeros((len(split["labels"]), head["bias"].shape[0]), np.float32)
    for seq_len, indices in batching.eval_batch_plan(split["length"], buckets, batch_size):
        batch = batching.make_batch(split, None, indices, seq_len, batch_size)
        out[indices] = np.asarray(eval_logits(bert, head, _device_batch(batch), encoder=encoder))[
            : len(indices)
        ]
    return out


def _fisher_batches(split: dict, config: cl.ContinualConfig, buckets: list[int]):
    n = min(config.fisher_examples, len(split["labels"]))
    chosen = np.sort(np.random.default_rng(config.seed).choice(len(split["labels"]), n, replace=False))
    # One width for every chunk (the bucket of the longest chosen example): one compilation.
    width = next(b for b in buckets if b >= int(split["length"][chosen].max()))
    for start in range(0, n, config.fisher_chunk):
        indices = chosen[start : start + config.fisher_chunk]
        yield batching.make_batch(split, None, indices, width, config.fisher_chunk)


def class_incremental_tasks(name: str, train: dict, eval_split: dict, stages: list[list[int]]) -> list:
    """Stages of one task whose label set grows: stage s trains on (and is evaluated on) its own classes.

    Args:
        name: the task (and head) name.
        train: tokenised features with "labels" (class ids of the full label set).
        eval_split: the same for evaluation.
        stages: the classes each stage adds, e.g. `[[0, 1], [2]]`; together each class exactly once.

    Returns:
        `TaskData` stages sharing the head `name`, labels renumbered in stage order (the head's columns).
    """
    order = [c for stage in stages for c in stage]
    if sorted(order) != sorted(set(order)) or not all(stages):
        raise UserError(f"class-incremental stages {stages} must be non-empty and list each class once")
    column = {c: i for i, c in enumerate(order)}

    def part(split, classes):
        keep = np.isin(split["labels"], classes)
        out = {k: v[keep] for k, v in split.items()}
        out["labels"] = np.array([column[int(c)] for c in out["labels"]], np.int32)
        return out

    tasks, seen = [], 0
    for s, classes in enumerate(stages):
        seen += len(classes)
        tasks.append(
            TaskData(f"{name}/stage{s}", name, seen, part(train, classes), part(eval_split, classes))
        )
    return tasks


def run_sequence(
    tasks: list[TaskData],
    config: cl.ContinualConfig,
    bert_config: BertConfig,
    optimizer: ml_collections.ConfigDict,
    pretrained: dict | None = None,
    log=logging.info,
) -> dict:
    """Trains `tasks` in order with `config.method` and evaluates every earlier task after each one.

    Args:
        tasks: the sequence; tasks that share a head are stages of a class-incremental task.
        config: method and hyperparameters.
        bert_config: the encoder architecture.
        optimizer: the `optimizer` section of a jaxft config (`configs/default.py`); its learning rate is
            replaced by `config.learning_rate` (or `adapter_learning_rate`). A fresh optimizer per task.
        pretrained: `{"bert": ...}` from `jaxft.models.convert.hf_to_flax`, or None for a random encoder.
        log: one line per task.

    Returns:
        "tasks" (names), "R" (lists, None above the diagonal), the `forgetting_summary` keys,
        "seen_accuracy" (row i of R weighted by evaluation sizes: accuracy on everything seen so far),
        "final_metrics" (the loss terms of each task's last step), "params" (the final tree; for
        "adapter" also "adapters": {head: adapter set}).
    """
    method = config.method
    heads_in_order = list(dict.fromkeys(t.head for t in tasks))
    if method == "adapter" and len(heads_in_order) != len(tasks):
        raise UserError("continual.method='adapter' needs one head per task (not class-incremental stages)")
    peft = (
        PeftConfig(method="adapter", adapter_size=config.adapter_size)
        if method == "adapter"
        else PeftConfig()
    )
    encoder = wrap(BertEncoder(bert_config), peft)
    key = jax.random.PRNGKey(config.seed)
    width = max(t.train["input_ids"].shape[1] for t in tasks)
    buckets = batching.bucket_lengths(width, config.num_buckets)
    dummy = jnp.zeros((1, min(width, 8)), jnp.int32)
    bert = encoder.init(jax.random.fold_in(key, 1), dummy, jnp.ones_like(dummy))["params"]
    if pretrained is not None:
        bert = merge_pretrained({"bert": bert}, {"bert": pretrained["bert"]}, log=log)["bert"]
    params = {"bert": bert, "heads": {}}
    adapters, ewc, kd_logits, step_fns = {}, None, {}, {}
    buffer = cl.ReservoirBuffer(config.replay_capacity, config.seed) if method == "replay" else None
    replay_rng = np.random.default_rng([config.seed, 1])
    matrix = [[None] * len(tasks) for _ in tasks]
    final_metrics = []
    for i, task in enumerate(tasks):
        start = time.time()
        heads = params["heads"]
        existing = [h for h in heads_in_order if h in heads]  # heads trained before this task
        if method == "kd" and existing:
            # LwF: the previous model's responses on the new task's inputs, taken before any update (and
            # before a class-incremental head grows, so the old columns are what is distilled).
            kd_logits = {
                h: record_logits(
                    encoder, params["bert"], heads[h], task.train, buckets, config.eval_batch_size
                )
                for h in existing
            }
        head_key = jax.random.fold_in(key, 100 + i)
        if task.head not in heads:
            heads[task.head] = cl.init_head(head_key, bert_config.hidden_size, task.num_labels)
        elif task.num_labels > heads[task.head]["bias"].shape[0]:
            new_classes = task.num_labels - heads[task.head]["bias"].shape[0]
            heads[task.head] = cl.grow_head(heads[task.head], new_classes, head_key)
        extras_static = {"ewc": ewc} if method == "ewc" and ewc is not None else {}
        # Which parameters train now; the rest is passed as frozen and never updated.
        if method == "adapter":
            fresh = encoder.init(jax.random.fold_in(key, 200 + i), dummy, jnp.ones_like(dummy))["params"]
            trainable = {"bert": cl.adapter_subset(fresh), "heads": {task.head: heads[task.head]}}
            frozen = {"bert": params["bert"], "heads": {}}
        else:
            trained_heads = set(existing) | {task.head} if method in ("replay", "kd") else {task.head}
            trainable = {"bert": params["bert"], "heads": {h: heads[h] for h in trained_heads}}
            frozen = {"bert": {}, "heads": {h: v for h, v in heads.items() if h not in trained_heads}}
        replay_heads = (
            tuple(h for h in heads_in_order if h in heads) if buffer is not None and len(buffer) else ()
        )
        spec = StepSpec(
            head=task.head,
            replay_heads=replay_heads,
            kd_heads=tuple(existing) if method == "kd" else (),
            kd_temperature=config.kd_temperature,
            kd_weight=config.kd_weight,
            ewc_lambda=config.ewc_lambda,
        )
        plans = [
            batching.train_batch_plan(
                task.train["length"], buckets, config.batch_size, seed=config.seed + i, epoch=e
            )
            for e in range(config.epochs)
        ]
        total_steps = sum(len(p) for p in plans)
        opt = ml_collections.ConfigDict(optimizer.to_dict())
        opt.learning_rate = config.adapter_learning_rate if method == "adapter" else config.learning_rate
        tx = optim.create_optimizer(opt, total_steps)
        opt_state = tx.init(trainable)
        cache_key = (spec, total_steps)  # the optimizer's schedule depends on the number of steps
        if cache_key not in step_fns:
            step_fns[cache_key] = jax.jit(functools.partial(train_step, encoder=encoder, tx=tx, spec=spec))
        step_fn = step_fns[cache_key]
        metrics, step = {}, 0
        for plan in plans:
            for seq_len, indices in plan:
                batch = batching.make_batch(
                    task.train, task.train["labels"], indices, seq_len, config.batch_size
                )
                extras = dict(extras_static)
                if spec.replay_heads:
                    ids = {h: n for n, h in enumerate(spec.replay_heads)}
                    extras["replay"] = buffer.sample_batch(config.replay_batch_size, replay_rng, ids, buckets)
                if spec.kd_heads:
                    rows = np.where(batch["index"] >= 0, batch["index"], 0)
                    extras["kd"] = {h: kd_logits[h][rows] for h in spec.kd_heads}
                extras = jax.tree.map(jnp.asarray, extras)
                trainable, opt_state, metrics = step_fn(
                    trainable,
                    opt_state,
                    frozen,
                    _device_batch(batch),
                    extras,
                    jax.random.fold_in(key, 10_000 * i + step),
                )
                metrics = jax.block_until_ready(metrics)  # CPU: never let steps pile up
                step += 1
        if method == "adapter":
            adapters[task.head] = trainable["bert"]
            heads[task.head] = trainable["heads"][task.head]
        else:
            params = cl.merge_trees(frozen, trainable)
        final_metrics.append({k: float(v) for k, v in metrics.items()})
        if method == "ewc":
            fisher = cl.fisher_diagonal(
                encoder,
                params["bert"],
                params["heads"][task.head],
                _fisher_batches(task.train, config, buckets),
            )
            total = fisher if ewc is None else jax.tree.map(jnp.add, ewc["fisher"], fisher)
            ewc = {"anchor": params["bert"], "fisher": total}
        if buffer is not None:
            buffer.add_task(task.head, task.train, task.train["labels"])
        for j in range(i + 1):
            bert_j = (
                cl.merge_trees(params["bert"], adapters[tasks[j].head])
                if method == "adapter"
                else params["bert"]
            )
            matrix[i][j] = accuracy(
                encoder,
                bert_j,
                params["heads"][tasks[j].head],
                tasks[j].eval,
                buckets,
                config.eval_batch_size,
            )
        log(
            f"{method}: after {task.name} ({step} steps, {time.time() - start:.0f} s): "
            + ", ".join(f"{tasks[j].name}={matrix[i][j]:.4f}" for j in range(i + 1))
            + " | last step "
            + ", ".join(f"{k}={v:.4g}" for k, v in final_metrics[-1].items())
        )
    sizes = np.array([len(t.eval["labels"]) for t in tasks], np.float64)
    seen = [
        float(np.dot(sizes[: i + 1], matrix[i][: i + 1]) / sizes[: i + 1].sum()) for i in range(len(tasks))
    ]
    result = {
        "tasks": [t.name for t in tasks],
        "R": matrix,
        **cl.forgetting_summary(matrix),
        "seen_accuracy": seen,
        "final_metrics": final_metrics,
        "params": params,
    }
    if method == "adapter":
        result["adapters"] = adapters
    return result
