"""Continual learning: a task sequence as a sequence of runs of the one trainer, and its forgetting matrix.

`run_sequence(tasks, config, ...)` trains the tasks in order, each stage a `jaxft.training.trainer.fit` run
that starts from the parameters the last one ended with: one shared encoder and one head per task
(`MultiHeadClassifier`; `jaxft.strategies.continual` holds the pieces). Nothing here steps a model: each
method is what the trainer takes from a caller.

- "naive": the task's cross-entropy; earlier heads are frozen (the optimizer leaves them as they are).
- "ewc": a loss term `lambda/2 * sum F (theta - theta*)^2` over the encoder. Online EWC with gamma = 1:
  after each task its Fisher is ADDED to the running sum and the anchor theta* moves to the encoder after
  that task (Schwarz et al. 2018). Anchor and Fisher travel in the parameter tree under "ewc", frozen.
- "replay": a data transform adding a batch drawn from a reservoir buffer of earlier tasks' examples; each
  replayed row is scored by its own task's head (those heads train too), and the replayed rows together
  weigh as much as the current task's rows.
- "kd": LwF. Before task t, every old head's logits on task t's training inputs are recorded (no dropout);
  a data transform puts each batch's rows of them in the batch, and a loss term adds
  `kd_weight * T^2 * KL(old || new)` per old head, old heads training too.
- "adapter": the pretrained encoder is frozen; each task trains a fresh Houlsby adapter set and its head;
  earlier tasks' adapters and heads are kept aside, so their predictions do not change at all.

After each stage an evaluation hook fills row i of R: `R[i][j]` = accuracy on task j's evaluation split.
Class-incremental learning is the same sequence over `class_incremental_tasks`: stages that share one
head, which grows by the new classes before each stage (`grow_head`).
"""

import dataclasses
import functools
import logging
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import serialization
from sklearn.metrics import accuracy_score

from jaxft.data import batching
from jaxft.errors import UserError
from jaxft.models.bert import BertConfig, BertEncoder
from jaxft.models.convert import merge_pretrained
from jaxft.strategies import continual as cl
from jaxft.strategies.peft import PeftConfig, wrap
from jaxft.tasks import StepLoss
from jaxft.training import optim, parallel, trainer

_TOKEN_ARRAYS = frozenset({"input_ids", "token_type_ids", "attention_mask"})  # [B, L], padded with 0


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


class MultiHeadClassifier(nn.Module):
    """The shared encoder's pooled output through every head: `{head: logits [B, width]}`.

    Parameters: `{"bert": encoder, "heads": {head: {"kernel", "bias"}}}` (`continual.init_head`); the
    caller builds them, so `heads` lists the names only.
    """

    config: BertConfig
    heads: tuple[str, ...]

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, deterministic: bool = True):
        _, pooled = BertEncoder(self.config, name="bert")(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic
        )
        heads = self.param("heads", lambda _: {})
        return {name: cl.head_logits(heads[name], pooled) for name in self.heads}


@dataclasses.dataclass(frozen=True)
class OwnHeadCrossEntropy(StepLoss):
    """Cross-entropy of each row under its own task's head (`batch["task"]` indexes `heads`)."""

    heads: tuple[str, ...]

    def loss(self, outputs: dict, batch: dict) -> tuple[jax.Array, jax.Array]:
        total = 0.0
        for index, name in enumerate(self.heads):
            mine = (batch["task"] == index).astype(jnp.float32)
            labels = jnp.where(mine > 0, batch["labels"], 0)  # other rows' labels may exceed this head
            log_probs = jax.nn.log_softmax(outputs[name])
            nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
            total = total + jnp.sum(nll * batch["weights"] * mine)
        return total, jnp.sum(batch["weights"])


def ewc_term(params, batch, outputs, *, ewc_lambda: float) -> jax.Array:
    """The EWC penalty of the encoder against the anchor and Fisher in `params["ewc"]` (not trained)."""
    anchor, fisher = jax.lax.stop_gradient((params["ewc"]["anchor"], params["ewc"]["fisher"]))
    return cl.ewc_penalty(params["bert"], anchor, fisher, ewc_lambda)


def kd_term(params, batch, outputs, *, heads: tuple[str, ...], temperature: float, weight: float):
    """LwF: each old head's outputs distilled towards the logits it gave before this task (`batch["kd_*"]`;
    a grown head on its old columns only)."""
    total = 0.0
    for name in heads:
        old = batch[f"kd_{name}"]
        total = total + cl.kd_term(outputs[name][:, : old.shape[1]], old, temperature, batch["weights"])
    return weight * total


@functools.partial(jax.jit, static_argnames="encoder")
def eval_logits(bert, head, batch, *, encoder):
    """Deterministic logits of one head on a batch."""
    inputs = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]  # the encoder's order
    _, pooled = encoder.apply({"params": bert}, *inputs, deterministic=True)
    return cl.head_logits(head, pooled)


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
        logits = eval_logits(bert, head, _device_batch(batch), encoder=encoder)
        out[indices] = np.asarray(logits)[: len(indices)]
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


def _pad_width(batch: dict, width: int) -> dict:
    """A batch's token arrays padded with zeros (attention 0) to `width` positions."""
    return {
        k: np.pad(v, ((0, 0), (0, width - v.shape[1]))) if k in _TOKEN_ARRAYS else v for k, v in batch.items()
    }


@dataclasses.dataclass
class _Stage:
    """What one stage's batches carry besides the task's rows (the data transform's inputs)."""

    head_index: int
    buffer: cl.ReservoirBuffer | None = None
    replay_ids: dict | None = None
    replay_rng: np.random.Generator | None = None
    replay_size: int = 0
    buckets: list | None = None
    kd_logits: dict | None = None
    last: dict | None = None  # the last batch it made

    def transform(self, batch: dict) -> dict:
        rows = len(batch["weights"])
        batch = {**batch, "task": np.full(rows, self.head_index, np.int32)}
        if self.kd_logits:
            index = np.where(batch["index"] >= 0, batch["index"], 0)
            batch.update({f"kd_{h}": logits[index] for h, logits in self.kd_logits.items()})
        batch.pop("index")
        if self.replay_ids:
            replay = self.buffer.sample_batch(
                self.replay_size, self.replay_rng, self.replay_ids, self.buckets
            )
            # The replayed rows together weigh as much as the current task's rows of this batch.
            replay["weights"] = replay["weights"] * (batch["weights"].sum() / self.replay_size)
            width = max(batch["input_ids"].shape[1], replay["input_ids"].shape[1])
            batch, replay = _pad_width(batch, width), _pad_width(replay, width)
            extra = {k: np.zeros((self.replay_size, *v.shape[1:]), v.dtype) for k, v in batch.items()}
            extra.update({k: replay[k] for k in replay if k in batch})
            batch = {k: np.concatenate([batch[k], extra[k]]) for k in batch}
        self.last = batch
        return batch


def _devices(*sizes: int) -> list:
    """This process's devices, as many as divide every one of `sizes` (rows are split evenly)."""
    devices = jax.local_devices()
    return devices[: max(n for n in range(1, len(devices) + 1) if all(s % n == 0 for s in sizes))]


def _save_stage(workdir: str | None, index: int, name: str, params: dict, row: list) -> None:
    """The stage's parameters and its row of R, in its own directory under the sequence's workdir."""
    if workdir is None:
        return
    stage_dir = os.path.join(workdir, f"stage{index}_{name.replace('/', '_')}")
    os.makedirs(stage_dir, exist_ok=True)
    with open(os.path.join(stage_dir, "params.msgpack"), "wb") as f:
        f.write(serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
    with open(os.path.join(stage_dir, "accuracy.txt"), "w", encoding="utf-8") as f:
        f.write(" ".join(f"{v:.6f}" for v in row) + "\n")


@dataclasses.dataclass
class _Sequence:
    """A sequence's setup (fixed) and its running state (carried from stage to stage)."""

    tasks: list[TaskData]
    config: cl.ContinualConfig
    bert_config: BertConfig
    optimizer: ml_collections.ConfigDict
    peft: PeftConfig
    encoder: nn.Module
    key: jax.Array
    buckets: list[int]
    dummy: jax.Array  # the input shape parameters are initialised with
    heads_in_order: list[str]
    # Running state: the tree after the last stage (for "adapter": the frozen encoder and every head),
    # each task's adapters, EWC's anchor and summed Fisher, the replay buffer and its sampler, R.
    params: dict
    adapters: dict
    ewc: dict | None
    buffer: cl.ReservoirBuffer | None
    replay_rng: np.random.Generator
    matrix: list
    final_metrics: list


def _start_sequence(tasks, config, bert_config, optimizer, pretrained, log) -> _Sequence:
    """The encoder (pretrained or random, with adapter slots for "adapter"), no heads, an empty R."""
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
    return _Sequence(
        tasks=tasks,
        config=config,
        bert_config=bert_config,
        optimizer=optimizer,
        peft=peft,
        encoder=encoder,
        key=key,
        buckets=buckets,
        dummy=dummy,
        heads_in_order=heads_in_order,
        params={"bert": bert, "heads": {}},
        adapters={},
        ewc=None,
        buffer=cl.ReservoirBuffer(config.replay_capacity, config.seed) if method == "replay" else None,
        replay_rng=np.random.default_rng([config.seed, 1]),
        matrix=[[None] * len(tasks) for _ in tasks],
        final_metrics=[],
    )


def _record_kd_logits(seq: _Sequence, task: TaskData, existing: list[str]) -> dict:
    """LwF: the previous model's responses on the new task's inputs, taken before any update (and before a
    class-incremental head grows, so the old columns are what is distilled)."""
    heads = seq.params["heads"]
    return {
        h: record_logits(
            seq.encoder, seq.params["bert"], heads[h], task.train, seq.buckets, seq.config.eval_batch_size
        )
        for h in existing
    }


def _add_head(seq: _Sequence, i: int, task: TaskData) -> None:
    """A new task's head, or a class-incremental head grown by this stage's classes (key folded 100 + i)."""
    heads = seq.params["heads"]
    head_key = jax.random.fold_in(seq.key, 100 + i)
    if task.head not in heads:
        heads[task.head] = cl.init_head(head_key, seq.bert_config.hidden_size, task.num_labels)
    elif task.num_labels > heads[task.head]["bias"].shape[0]:
        new_classes = task.num_labels - heads[task.head]["bias"].shape[0]
        heads[task.head] = cl.grow_head(heads[task.head], new_classes, head_key)


def _stage_tree(seq: _Sequence, i: int, task: TaskData, existing: list[str]):
    """This stage's tree and which of its parts train (`trains(path)`); the optimizer leaves the rest exactly
    as it is. "adapter" gets a fresh adapter set (key folded 200 + i); "ewc" carries its anchor and Fisher."""
    method, heads = seq.config.method, seq.params["heads"]
    if method == "adapter":
        fresh = seq.encoder.init(jax.random.fold_in(seq.key, 200 + i), seq.dummy, jnp.ones_like(seq.dummy))
        tree = {
            "bert": cl.merge_trees(seq.params["bert"], cl.adapter_subset(fresh["params"])),
            "heads": dict(heads),
        }
        trained_heads = {task.head}
    else:
        trained_heads = set(existing) | {task.head} if method in ("replay", "kd") else {task.head}
        tree = {"bert": seq.params["bert"], "heads": dict(heads)}

    def trains(path):
        if path[0] == "heads":
            return path[1] in trained_heads
        return path[0] == "bert" and (method != "adapter" or "adapter" in path)  # not "ewc"

    if method == "ewc" and seq.ewc is not None:
        tree["ewc"] = seq.ewc
    return tree, trains


def _stage_inputs(seq: _Sequence, i: int, task: TaskData, tree: dict, existing: list[str], kd_logits):
    """The stage's data transform (`_Stage`), its loss terms (EWC, KD) and its batches (every epoch's)."""
    config, buffer = seq.config, seq.buffer
    stage_heads = tuple(h for h in seq.heads_in_order if h in seq.params["heads"])
    replay_heads = stage_heads if buffer is not None and len(buffer) else ()
    stage = _Stage(
        head_index=stage_heads.index(task.head),
        buffer=buffer,
        replay_ids={h: n for n, h in enumerate(replay_heads)} if replay_heads else None,
        replay_rng=seq.replay_rng,
        replay_size=config.replay_batch_size,
        buckets=seq.buckets,
        kd_logits=kd_logits,
    )
    terms = []
    if "ewc" in tree:
        terms.append(functools.partial(ewc_term, ewc_lambda=config.ewc_lambda))
    if stage.kd_logits:
        kd = functools.partial(
            kd_term, heads=tuple(existing), temperature=config.kd_temperature, weight=config.kd_weight
        )
        terms.append(kd)
    plans = [
        batching.train_batch_plan(
            task.train["length"], seq.buckets, config.batch_size, seed=config.seed + i, epoch=e
        )
        for e in range(config.epochs)
    ]
    batches = [
        batching.make_batch(task.train, task.train["labels"], indices, seq_len, config.batch_size)
        for plan in plans
        for seq_len, indices in plan
    ]
    return stage, tuple(terms), batches


def _fit_stage(seq: _Sequence, i: int, tree: dict, trains, stage: _Stage, terms: tuple, batches: list):
    """The stage as one `trainer.fit` run with a fresh optimizer over the trained parts.

    Returns:
        The final parameters, row i of R (from the evaluation hook at the last step) and the stage's
        `_last_terms`.
    """
    config, method, tasks = seq.config, seq.config.method, seq.tasks
    stage_heads = tuple(h for h in seq.heads_in_order if h in seq.params["heads"])
    opt = ml_collections.ConfigDict(seq.optimizer.to_dict())
    opt.learning_rate = config.adapter_learning_rate if method == "adapter" else config.learning_rate
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: "train" if trains(tuple(k.key for k in path)) else "frozen", tree
    )
    tx = optax.multi_transform(
        {"train": optim.create_optimizer(opt, len(batches)), "frozen": optax.set_to_zero()}, labels
    )
    model = wrap(MultiHeadClassifier(seq.bert_config, stage_heads), seq.peft)
    task_loss = OwnHeadCrossEntropy(stage_heads)
    recorded = trainer.RecordLoss()
    row = []

    def forgetting_row(run, step, metrics):
        """The evaluation hook: row i of R, with the parameters of the stage's last step."""
        done = run.parallelism.to_host(run.state.params)
        for j in range(i + 1):
            bert_j = done["bert"]  # (adapter: this task's adapters; an earlier task's are swapped in)
            if method == "adapter" and j < i:
                bert_j = cl.merge_trees(done["bert"], seq.adapters[tasks[j].head])
            head = done["heads"][tasks[j].head]
            row.append(
                accuracy(seq.encoder, bert_j, head, tasks[j].eval, seq.buckets, config.eval_batch_size)
            )

    rows = config.batch_size + (config.replay_batch_size if stage.replay_ids else 0)
    state = trainer.fit(
        tree,
        tx,
        batches,
        len(batches),
        model=model,
        task=task_loss,
        seed=config.seed + i,
        hooks=[recorded, trainer.Every(0, forgetting_row)],
        parallelism=parallel.create("pmap", _devices(config.batch_size, rows)),
        loss_terms=terms,
        transform=stage.transform,
    )
    return state.params, row, _last_terms(model, task_loss, stage, terms, state.params, recorded.losses[-1])


def _after_stage(seq: _Sequence, i: int, task: TaskData, final: dict, row: list, workdir) -> None:
    """The sequence's state after stage i: its parameters (for "adapter": the task's adapters and head
    only), row i of R, the EWC anchor and summed Fisher, the replay buffer, the stage's directory."""
    config, method = seq.config, seq.config.method
    done = jax.tree.map(jnp.asarray, final)
    done.pop("ewc", None)
    if method == "adapter":
        seq.adapters[task.head] = cl.adapter_subset(done["bert"])
        seq.params["heads"][task.head] = done["heads"][task.head]
    else:
        seq.params = done
    seq.matrix[i][: i + 1] = row
    if method == "ewc":
        params = seq.params
        fisher = cl.fisher_diagonal(
            seq.encoder,
            params["bert"],
            params["heads"][task.head],
            _fisher_batches(task.train, config, seq.buckets),
        )
        total = fisher if seq.ewc is None else jax.tree.map(jnp.add, seq.ewc["fisher"], fisher)
        seq.ewc = {"anchor": params["bert"], "fisher": total}
    if seq.buffer is not None:
        seq.buffer.add_task(task.head, task.train, task.train["labels"])
    _save_stage(workdir, i, task.name, seq.params if method != "adapter" else done, row)


def run_sequence(
    tasks: list[TaskData],
    config: cl.ContinualConfig,
    bert_config: BertConfig,
    optimizer: ml_collections.ConfigDict,
    pretrained: dict | None = None,
    log=logging.info,
    workdir: str | None = None,
) -> dict:
    """Trains `tasks` in order with `config.method` and evaluates every earlier task after each one.

    Args:
        tasks: the sequence; tasks that share a head are stages of a class-incremental task.
        config: method and hyperparameters.
        bert_config: the encoder architecture.
        optimizer: the `optimizer` section of a jaxft config (`jaxft/configs/default.py`); its learning rate
        is
            replaced by `config.learning_rate` (or `adapter_learning_rate`). A fresh optimizer per task.
        pretrained: `{"bert": ...}` from `jaxft.models.convert.hf_to_flax`, or None for a random encoder.
        log: one line per task.
        workdir: when given, each stage writes its parameters and its row of R to a directory of its own
            under it.

    Returns:
        "tasks" (names), "R" (lists, None above the diagonal), the `forgetting_summary` keys,
        "seen_accuracy" (row i of R weighted by evaluation sizes: accuracy on everything seen so far),
        "final_metrics" (each stage's last step: its loss, and each term of it on that stage's last batch
        with the final parameters), "params" (the final tree; for "adapter" also "adapters": {head:
        adapter set}).
    """
    if not isinstance(bert_config, BertConfig):  # the heads read BERT's pooler
        raise UserError(
            "continual learning runs on the families on BERT's layers, not model_type "
            f"{bert_config.model_type!r}"
        )
    seq = _start_sequence(tasks, config, bert_config, optimizer, pretrained, log)
    for i, task in enumerate(tasks):
        start = time.time()
        existing = [h for h in seq.heads_in_order if h in seq.params["heads"]]  # trained before this task
        kd_logits = _record_kd_logits(seq, task, existing) if config.method == "kd" and existing else None
        _add_head(seq, i, task)
        tree, trains = _stage_tree(seq, i, task, existing)
        stage, terms, batches = _stage_inputs(seq, i, task, tree, existing, kd_logits)
        final, row, last = _fit_stage(seq, i, tree, trains, stage, terms, batches)
        seq.final_metrics.append(last)
        _after_stage(seq, i, task, final, row, workdir)
        log(
            f"{config.method}: after {task.name} ({len(batches)} steps, {time.time() - start:.0f} s): "
            + ", ".join(f"{tasks[j].name}={seq.matrix[i][j]:.4f}" for j in range(i + 1))
            + " | last step "
            + ", ".join(f"{k}={v:.4g}" for k, v in last.items())
        )
    return _result(seq)


def _result(seq: _Sequence) -> dict:
    """`run_sequence`'s answer: R, its summary, the accuracy on everything seen so far, the final trees."""
    tasks, matrix = seq.tasks, seq.matrix
    sizes = np.array([len(t.eval["labels"]) for t in tasks], np.float64)
    seen = [
        float(np.dot(sizes[: i + 1], matrix[i][: i + 1]) / sizes[: i + 1].sum()) for i in range(len(tasks))
    ]
    result = {
        "tasks": [t.name for t in tasks],
        "R": matrix,
        **cl.forgetting_summary(matrix),
        "seen_accuracy": seen,
        "final_metrics": seq.final_metrics,
        "params": seq.params,
    }
    if seq.config.method == "adapter":
        result["adapters"] = seq.adapters
    return result


def _last_terms(model, task_loss, stage, terms, params, loss: float) -> dict:
    """The stage's last step loss, and each of its parts on the last batch with the final parameters (no
    dropout): "ce" (the current task's rows), "replay" (the replayed rows), "kd", "ewc"."""
    batch = jax.tree.map(jnp.asarray, stage.last)
    outputs = model.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        deterministic=True,
    )
    current = batch["task"] == stage.head_index
    metrics = {"loss": loss}
    for name, rows in (("ce", current), ("replay", ~current)):
        if bool(rows.any()):
            total, weight = task_loss.loss(outputs, {**batch, "weights": batch["weights"] * rows})
            metrics[name] = float(total / jnp.maximum(weight, 1e-9))
    for term in terms:
        name = term.func.__name__.removesuffix("_term")
        metrics[name] = float(term(params, {**batch, "weights": batch["weights"] * current}, outputs))
    return metrics
