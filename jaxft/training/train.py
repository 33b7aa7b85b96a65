"""Fine-tuning from a config: set up (read, check, initialise), then the step loop.

`train_and_evaluate(config, workdir)` is the whole job. Everything that can be wrong with the inputs is read
and checked before the workdir is touched. The steps then run in `jaxft.training.trainer.run_steps`, the one
loop, with this run's side work as hooks in this order: logging (and the progress bar), evaluation with best
tracking, the caller's hooks (`Extensions`), early stopping, pre-emption, checkpoints.
"""

import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxft import backend, evaluate, files, tasks
from jaxft import config as config_lib
from jaxft.data import labels as labels_lib
from jaxft.data import tokenize
from jaxft.errors import UserError
from jaxft.models import convert, families
from jaxft.models.bert import BertConfig
from jaxft.strategies import checks as strategy_checks
from jaxft.strategies import peft as peft_lib
from jaxft.training import checkpoint, optim, parallel, pipeline, steps, trackers, trained, trainer
from jaxft.training import workdir as workdir_lib
from jaxft.training.early_stopping import BestMetric
from jaxft.training.model import create_model
from jaxft.training.preemption import Preempted, PreemptionGuard
from jaxft.training.workdir import MODEL_CONFIG, TOKENIZER_DIR, TUNED
from jaxft.training.writers import METRICS_FILE, ProgressBar, plot_curves

CLASS_WEIGHTS = "class_weights.json"  # the resolved data.class_weights of a run, beside labels.json


@dataclasses.dataclass
class Setup:
    """What the loop needs, built by `prepare` without writing anything."""

    config: ml_collections.ConfigDict
    workdir: str
    label_names: list[str]
    splits: dict
    tokenizer: object
    bert_config: BertConfig
    pretrained: dict | None  # converted Hugging Face tensors, when starting from a checkpoint
    task: tasks.Task  # what the labels are, the loss, the evaluation (config.task; data.class_weights)
    # The train data and tokenizer as read ({"train": pipeline.fingerprint, "tokenizer": ...}): every
    # checkpoint's meta records them, and a resumed run compares (`_check_checkpoints`).
    fingerprints: dict = dataclasses.field(default_factory=dict)


def _bert_config(config: ml_collections.ConfigDict, tokenizer) -> BertConfig:
    if config.model.checkpoint:
        bert_config = convert.load_config(config_lib.expand_path(config.model.checkpoint))
    else:
        bert_config = BertConfig(vocab_size=len(tokenizer), **config.model.random_init.to_dict())
    hidden_fields, attention_fields = families.of(bert_config).dropout_fields
    overrides = {name: config.model.hidden_dropout for name in hidden_fields}
    overrides.update({name: config.model.attention_dropout for name in attention_fields})
    return dataclasses.replace(bert_config, **{k: v for k, v in overrides.items() if v is not None})


def _saved_json(workdir: str, name: str) -> dict | None:
    """A JSON file a run wrote into its workdir; None when it is not there."""
    path = os.path.join(workdir, name)
    return files.read_json_object(path) if os.path.exists(path) else None


def _saved_task(workdir: str) -> str | None:
    """The task.name of the run in `workdir` (None: no config.json there)."""
    saved = _saved_json(workdir, "config.json")
    return None if saved is None else (saved.get("task") or {}).get("name", "classification")


def _check_same_task(workdir: str, task: tasks.Task, whose: str) -> None:
    """Refuses to resume or warm-start across tasks (their heads and labels mean different things)."""
    saved_task = _saved_task(workdir)
    if saved_task is not None and saved_task != task.name:
        raise UserError(
            f"task.name={task.name!r} differs from {saved_task!r} {whose} (or use another workdir)"
        )


# The PEFT settings that decide which parameters a run's checkpoints hold, by method.
_PEFT_STRUCTURE = {
    "lora": ("lora_rank", "lora_targets"),
    "adapter": ("adapter_size",),
    "prompt": ("num_virtual_tokens",),
    "prefix": ("num_virtual_tokens",),
}


def _check_same_peft(workdir: str, peft, whose: str) -> None:
    """Refuses to resume a run under another PEFT method or structure (its checkpoints hold other tensors)."""
    saved = _saved_json(workdir, "config.json")
    if saved is None:
        return
    recorded = saved.get("peft") or {}
    for key in ("method", *_PEFT_STRUCTURE.get(peft.method, ())):
        ours = json.loads(json.dumps(peft[key]))  # as config.json holds it (a tuple is a list there)
        theirs = recorded.get(key, "none" if key == "method" else None)
        if ours != theirs:
            raise UserError(
                f"config peft.{key}={peft[key]!r} differs from {theirs!r} {whose} "
                "(change it back, or use another workdir)"
            )


def _check_same_model(
    workdir: str, bert_config: BertConfig, label_names: list[str] | None, whose: str
) -> None:
    """Refuses to load parameters saved by a model of another shape (read from its workdir's files), or
    trained for other labels (`label_names` None: the labels are not compared)."""
    saved = _saved_json(workdir, MODEL_CONFIG)
    if saved is None:
        return
    theirs = convert.config_from_dict(saved)
    if type(theirs) is not type(bert_config):
        raise UserError(
            f"the model's model_type {bert_config.model_type!r} differs from {theirs.model_type!r} {whose} "
            "(change the config back, or use another workdir)"
        )
    for field in families.of(bert_config).shape_fields:
        if getattr(theirs, field) != getattr(bert_config, field):
            raise UserError(
                f"the model's {field}={getattr(bert_config, field)} differs from {getattr(theirs, field)} "
                f"{whose} (change the config back, or use another workdir)"
            )
    labels_path = os.path.join(workdir, "labels.json")
    if label_names is None:
        return
    if os.path.exists(labels_path) and labels_lib.load_label_vocab(labels_path) != label_names:
        raise UserError(f"the label set {label_names} differs from {labels_path} {whose}")


def _check_checkpoints(
    workdir: str, label_names: list[str], labels_source: str, fingerprints: dict, tokenizer_key: str
) -> None:
    """Compares what this start read with what the checkpoints of the run being resumed were trained on.

    Another label set (labels.json edited, or lost and rebuilt from changed data) would silently swap what
    every output means: refused. Another tokenizer is refused too: the embeddings were learnt for its token
    ids, which the new one gives other meanings. Changed train data is allowed (more data, a fixed label)
    but logged as a warning naming the step, so that nobody takes the run for one over a single data set.
    """
    metas = checkpoint.saved_metas(workdir)
    for kind, step, meta in metas:
        recorded = meta.get("labels")
        if isinstance(recorded, list) and recorded != label_names:
            raise UserError(
                f"{labels_source}: the label set {label_names} differs from {recorded}, which checkpoint "
                f"{kind} step {step} in this workdir was trained with (restore labels.json, or use another "
                "workdir)"
            )
    latest = [
        (step, meta["data_fingerprint"])
        for kind, step, meta in metas
        if kind == "latest" and isinstance(meta.get("data_fingerprint"), dict)
    ]
    if not latest:
        return  # a new run, or one whose checkpoints predate fingerprints
    step, recorded = latest[0]
    if recorded.get("tokenizer") != fingerprints["tokenizer"]:
        raise UserError(
            f"{tokenizer_key}: the tokenizer differs from the one the run being resumed in this workdir was "
            f"trained with until step {step}; its embeddings belong to the old token ids (restore that "
            "tokenizer, or use another workdir)"
        )
    before, now = recorded.get("train") or {}, fingerprints["train"]
    if before != now:
        counts = (
            f"{before.get('examples')} -> {now['examples']} examples"
            if before.get("examples") != now["examples"]
            else f"{now['examples']} examples, other content"
        )
        logging.warning("The train data changed since step %d (%s); resuming on the new data", step, counts)


def prepare(config: ml_collections.ConfigDict, workdir: str) -> Setup:
    """Reads and checks config, data, tokenizer and checkpoint; raises `UserError` before any write."""
    config_lib.check(config)
    trackers.check_installed(config)
    task = tasks.from_config(config)
    tasks.best_metric(config, task)  # a metric the task does not report fails here, not at the first eval
    files.check_directory_path(workdir, "workdir")
    _check_same_task(workdir, task, "of the run being resumed in this workdir")
    _check_same_peft(workdir, config.peft, "in the run being resumed in this workdir")
    labels_path = os.path.join(workdir, "labels.json")
    saved_labels = labels_lib.load_label_vocab(labels_path) if os.path.exists(labels_path) else None
    label_names, splits = pipeline.read_splits(
        config.data, saved_labels, config.seed, task, augment_config=config.get("augment")
    )
    if saved_labels is not None:
        labels_source = labels_path
    elif config.data.labels is not None:
        labels_source = "config data.labels"
    else:
        labels_source = config_lib.expand_path(config.data.train_path)
    if task.name not in ("regression", "qa"):  # the tasks whose reports hold an entry per label
        labels_lib.check_report_names(label_names, labels_source, tags=task.name == "ner")
    task = _with_class_weights(config, task, splits["train"].labels, label_names, workdir)
    checkpoint_dir = config_lib.expand_path(config.model.checkpoint)
    tokenizer_key = "model.tokenizer" if config.model.tokenizer else "model.checkpoint"
    tokenizer_dir = config_lib.expand_path(config.model.tokenizer) or checkpoint_dir
    tokenizer = tokenize.load_tokenizer(tokenizer_dir, words=task.head == "token")
    task_tokens = task.prepare_tokenizer(tokenizer)  # relation: its entity markers, new rows of the vocab
    task = task.for_tokenizer(tokenizer)  # mlm: the mask token its train step draws with
    bert_config = _bert_config(config, tokenizer)
    grown = convert.vocab_size_with(tokenizer, task_tokens, bert_config.vocab_size)
    bert_config = dataclasses.replace(bert_config, vocab_size=grown)
    tokenize.check_max_seq_length(config.data.max_seq_length, bert_config.max_positions)
    strategy_checks.check_positions(config, bert_config.max_positions)
    tokenize.check_fits_model(
        tokenizer, bert_config.vocab_size, bert_config.pad_token_id, f"{tokenizer_key}={tokenizer_dir}"
    )
    parallel.check_batch_size(config.training.batch_size, config.training.grad_accum_steps)
    shards = pipeline.num_shards(config.data)
    if config.training.batch_size % shards:
        raise UserError(
            f"config training.batch_size={config.training.batch_size} must be divisible by "
            f"data.num_shards={shards} (each batch holds an equal part of each shard)"
        )
    _check_same_model(workdir, bert_config, label_names, "of the run being resumed in this workdir")
    fingerprints = {
        "train": pipeline.fingerprint(splits["train"].examples),
        "tokenizer": tokenize.fingerprint(tokenizer),
    }
    _check_checkpoints(workdir, label_names, labels_source, fingerprints, f"{tokenizer_key}={tokenizer_dir}")
    if task.head == "mlm":
        task.token_ids(tokenizer)  # a verbaliser word that is not one token fails here, before any write
    mlm = task.head in ("mlm", "lm")  # pet reads the masked-LM head, mlm trains it
    if mlm and not families.of(bert_config).masked_lm:
        readable = ", ".join(sorted(name for name, f in families.FAMILIES.items() if f.masked_lm))
        raise UserError(
            f"task.name={task.name!r} needs a masked-LM head, which jaxft has none of for model_type "
            f"{bert_config.model_type!r} (an ELECTRA discriminator spots replaced tokens, it does not "
            f"predict them); use one of {readable}"
        )
    if config.model.init_from_workdir:
        init_dir = config_lib.expand_path(config.model.init_from_workdir)
        checkpoint.find_checkpoint(init_dir)
        if not os.path.exists(os.path.join(init_dir, MODEL_CONFIG)):
            raise UserError(f"model.init_from_workdir={init_dir}: not a jaxft workdir (no {MODEL_CONFIG})")
        # A masked-LM run seeds any task with its encoder (pet also with its head); others only their own.
        pretraining_run = _saved_task(init_dir) == "mlm"
        if not pretraining_run:
            _check_same_task(init_dir, task, f"of model.init_from_workdir={init_dir}")
        labels = None if pretraining_run else label_names
        _check_same_model(init_dir, bert_config, labels, f"of model.init_from_workdir={init_dir}")
    pretrained = None
    if checkpoint_dir:
        pretrained, ignored = convert.read_pretrained(checkpoint_dir, mlm_head=mlm)
        if mlm and not convert.has_mlm_head(pretrained, families.of(bert_config)):
            if task.head == "lm":
                logging.info("model.checkpoint has no masked-LM head: task.name='mlm' trains a new one")
            elif not config.model.init_from_workdir:  # pet: from this checkpoint's head, or from a run's
                raise UserError(
                    f"model.checkpoint has no masked-LM head (cls.predictions.*): task.name={task.name!r} "
                    "needs one"
                )
        if ignored:
            logging.info("Not used from %s: %s", checkpoint_dir, ", ".join(sorted(ignored)))
    return Setup(config, workdir, label_names, splits, tokenizer, bert_config, pretrained, task, fingerprints)


def _with_class_weights(config, task: tasks.Task, train_targets, label_names: list[str], workdir: str):
    """`task` with the loss weights of data.class_weights (`task` itself when it is unset).

    "balanced" weights come from the train data. A resumed run whose WORKDIR/class_weights.json holds
    "balanced" weights keeps them, so its loss means what it meant before (a warning names weights that the
    data now give otherwise). Another data.class_weights is a changed config: the new weights apply, and a
    warning names them beside the old.
    """
    spec = config_lib.class_weights(config.data.get("class_weights"))
    if spec is None:
        return task
    named = dict(zip(label_names, task.resolve_class_weights(spec, train_targets, label_names), strict=True))
    path = os.path.join(workdir, CLASS_WEIGHTS)
    saved = _saved_json(workdir, CLASS_WEIGHTS)
    if saved is not None:
        before = saved.get("weights")
        if (
            not isinstance(before, dict)
            or list(before) != label_names
            or not all(isinstance(w, float) and 0 < w < math.inf for w in before.values())
        ):
            raise UserError(
                f"{path}: not the class weights of the label set {label_names} (restore or delete it)"
            )
        if before != named and spec == saved.get("class_weights") == config_lib.BALANCED:
            logging.warning(
                "The train data now give balanced class weights %s; resuming with the run's", named
            )
            named = before
        elif before != named:
            logging.warning("Resuming with the class weights %s instead of %s (%s)", named, before, path)
    logging.info("Class weights (data.class_weights=%r): %s", spec, named)
    return dataclasses.replace(task, class_weights=tuple(named.values()))


def _place_by_index(placed: list, num_examples: int) -> dict:
    """Per-example outputs of every batch as [N, ...] host arrays in example order, plus how often each
    example was seen ("seen": 0 for the rows of other processes, which add theirs)."""
    out, seen = {}, np.zeros(num_examples, np.int64)
    for index, per_example in placed:
        keep = index >= 0  # padding rows carry index -1
        rows = index[keep]
        np.add.at(seen, rows, 1)
        for key, value in jax.device_get(per_example).items():
            value = np.asarray(value).reshape(-1, *value.shape[2:])  # [devices, rows, ...] -> [rows, ...]
            if key not in out:
                out[key] = np.zeros((num_examples, *value.shape[1:]), value.dtype)
            out[key][rows] = value[keep]
    return {**out, "seen": seen}


class EvaluationInterrupted(Exception):
    """A pre-emption arrived during an evaluation, which was abandoned (it is done again on resuming)."""


def eval_counts(
    eval_fn, params, split, bucket_list: list[int], batch_size: int, num_devices: int, stop=None
) -> dict:
    """Counts summed over every batch, device and process: each example of `split` counted once.

    `eval_fn` is a `Parallelism.eval_step` function (pmap's signature: each of this process's
    `num_devices` devices gets its rows, and returns its outputs). A task's per-example outputs
    (`tasks.PER_EXAMPLE`) are not summed but placed by row index (the example, or for QA the context window),
    into arrays [rows, ...] under the same key; every row must have been placed exactly once.

    `stop`: asked before each batch; when it says True, the evaluation is abandoned
    (`EvaluationInterrupted`): a cluster's grace period after SIGTERM is shorter than a long evaluation.
    """
    totals, placed = None, []
    for batch in pipeline.eval_batches(split, bucket_list, batch_size):
        if stop is not None and stop():
            raise EvaluationInterrupted
        counts = dict(eval_fn(params, parallel.split_for_devices(batch, num_devices)))
        per_example = counts.pop(tasks.PER_EXAMPLE, None)
        if per_example is not None:
            placed.append((batch["index"], per_example))
        totals = counts if totals is None else jax.tree.map(np.add, totals, counts)
    totals = jax.tree.map(lambda x: np.asarray(x).sum(0), totals)  # [devices, ...] -> their sum
    if placed:
        # Each process placed its own rows; zeros elsewhere, so the sum over processes below assembles them.
        totals[tasks.PER_EXAMPLE] = _place_by_index(placed, len(split.features["length"]))  # rows
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        totals = jax.tree.map(lambda x: np.asarray(x).sum(0), multihost_utils.process_allgather(totals))
    if placed:
        seen = totals[tasks.PER_EXAMPLE].pop("seen")
        if (seen != 1).any():
            raise RuntimeError(f"{int((seen != 1).sum())} examples were evaluated other than exactly once")
    return totals


def run_evaluation(
    eval_fn,
    params,
    split,
    config,
    label_names,
    step,
    writer,
    eval_dir,
    totals=None,
    *,
    params_step=None,
    stop=None,
    task: tasks.Task | None = None,
) -> tuple[dict, dict]:
    """Evaluates `split` exactly (every example once), writes its report; returns (summary metrics, the
    counts it was built from). `step`: the training step, or None for the final report, whose parameters
    are those of `params_step`. `totals`: counts of an earlier evaluation of these very parameters, reused.
    `stop`: as for `eval_counts`. `task`: the run's (with its class weights); default: `config`'s."""
    task = task or tasks.from_config(config)
    if totals is None:
        totals = _split_counts(eval_fn, params, split, config, stop)
    result = task.report(totals, split, label_names, config.data)
    if parallel.is_chief():
        name = evaluate.report_name(split.name, step)
        extra = {
            "step": params_step if step is None else step,
            "split": split.name,
            "loss": result.metrics["loss"],
        }
        evaluate.write_result(eval_dir, name, result, label_names, extra, task.name)
        if step is None and result.examples is not None:  # what a comparison resamples (jaxft.bootstrap)
            evaluate.write_examples(evaluate.examples_path(eval_dir, split.name), result.examples)
        if step is not None:
            writer.write_eval(step, split.name, result.metrics)
    return result.metrics, totals


def _split_counts(eval_fn, params, split, config, stop=None) -> dict:
    """`eval_counts` of `split` with the config's buckets and evaluation batch, on this process's devices."""
    return eval_counts(
        eval_fn,
        params,
        split,
        pipeline.buckets(config.data),
        parallel.eval_batch_size(config.training.eval_batch_size),
        parallel.local_devices(),
        stop,
    )


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts (a key on one side only counts)."""
    changed = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


def _write_run_files(setup: Setup, start_step: int) -> None:
    """The run's config, labels, model config and tokenizer. A resumed run whose config changed keeps the
    one it ran under until now as config.before-step-N.json, and the log names what changed."""
    workdir = setup.workdir
    os.makedirs(workdir, exist_ok=True)
    path, text = os.path.join(workdir, "config.json"), config_lib.to_json(setup.config)
    previous = _saved_json(workdir, "config.json")
    if previous is not None and previous != json.loads(text):
        kept = os.path.join(workdir, f"config.before-step-{start_step}.json")
        files.write_json_atomic(kept, previous)
        changed = ", ".join(_changed_keys(previous, json.loads(text)))
        logging.warning("Resuming with a changed config (%s); the previous one is kept as %s", changed, kept)
    files.write_atomic(path, text)
    labels_lib.save_label_vocab(os.path.join(workdir, "labels.json"), setup.label_names)
    weights, weights_path = getattr(setup.task, "class_weights", None), os.path.join(workdir, CLASS_WEIGHTS)
    if weights is not None:
        spec = config_lib.class_weights(setup.config.data.get("class_weights"))
        named = dict(zip(setup.label_names, weights, strict=True))
        files.write_json_atomic(weights_path, {"class_weights": spec, "weights": named})
    elif os.path.exists(weights_path):  # a resumed run that no longer weighs its classes
        os.remove(weights_path)
    files.write_json_atomic(os.path.join(workdir, MODEL_CONFIG), setup.bert_config.to_hf_dict())
    setup.tokenizer.save_pretrained(os.path.join(workdir, TOKENIZER_DIR))


def _start_state(
    setup: Setup, model, tx, ckpts: checkpoint.Checkpoints, best: BestMetric
) -> tuple[steps.TrainState, bool]:
    """Resume > warm start > pretrained > random: the state the loop starts from (host arrays), and whether
    the evaluation of its step is still to be done (a pre-emption interrupted it).

    A PEFT run's checkpoints hold only the trained parameters; resuming completes them with the base, which
    is rebuilt as at the start and checked against the fingerprint the run recorded. The best checkpoints
    are made to agree with the state resumed from (`Checkpoints.reconcile_best`).
    """
    config = setup.config
    peft = peft_lib.from_config(config)
    fresh = ckpts.latest_step() is None
    if fresh or peft.method != "none":
        base = trained.initial_params(config, setup.pretrained, model)
        trainable, total = peft_lib.count(base, peft)
        logging.info("Trainable parameters: %d of %d (%.4f%%)", trainable, total, 100 * trainable / total)
    if fresh:
        # Best checkpoints without a full state: a run killed before its first one saved, redone from 0.
        ckpts.reconcile_best(0, None, None, redo_step=True)
        if parallel.is_chief():
            trained.write_base(setup.workdir, config, base, peft)
        return steps.create_train_state(base, tx, config.seed), False
    if peft.method == "none":
        base = jax.eval_shape(lambda: trained.initial_params_shape(model, config))
    else:
        trained.check_base(setup.workdir, base, peft)
    # Shapes and dtypes only: the restore reads into fresh host arrays, so nothing is built or held here.
    template = jax.eval_shape(lambda params: steps.create_train_state(params, tx, config.seed), base)
    state, meta = ckpts.restore(peft_lib.saved_state(template, peft))
    step, redo_eval = meta["step"], bool(meta.get("pending_eval"))
    best.load(meta["best"])
    intact = ckpts.reconcile_best(
        step, best.best_step, peft_lib.trained_subset(template.params, peft), redo_step=redo_eval
    )
    if not intact and best.best_step == step and not redo_eval:
        # Killed between this state's save and its best's: the state's parameters are that best.
        ckpts.save_best(step, peft_lib.trained_subset(state.params, peft), {"step": step, **meta["best"]})
    elif not intact:
        logging.warning(
            "the best checkpoint of step %d is missing or damaged; the best is tracked anew from step %d",
            best.best_step,
            step,
        )
        best.load({"best": None, "best_step": None, "evals_without_improvement": 0})
    logging.info("Resuming from step %d in %s (epoch %d)", step, setup.workdir, meta["epoch"])
    return state.replace(params=peft_lib.merge(base, state.params, peft)), redo_eval


def _log_train(step, metrics, state, *, parallelism, config, schedule, writer, progress, since) -> None:
    """Writes the train scalars of `step`; stops the run when too many steps were not finite."""
    tc = config.training
    scalars = {k: float(v) for k, v in parallelism.to_host(metrics).items()}
    _check_finite(parallelism, state, step, tc.max_nonfinite_steps)
    del scalars["examples"]
    scalars["learning_rate"] = float(schedule(step - 1))
    # Global batch rows per second (a length bucket's last batch counts its padding rows too).
    scalars["examples_per_s"] = (step - since[0]) * tc.batch_size / max(time.time() - since[1], 1e-9)
    writer.write_scalars(step, scalars)
    progress.update(
        step - since[0], loss=scalars["loss"], lr=scalars["learning_rate"], ex_per_s=scalars["examples_per_s"]
    )
    if not tc.progress_bar:  # batch jobs without a terminal still see progress in their log
        logging.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))


def _check_finite(parallelism, state, step: int, limit: int) -> None:
    bad = int(parallelism.to_host(state.nonfinite_steps))
    if bad > limit:
        raise FloatingPointError(
            f"non-finite loss or gradients in {bad} step(s) by step {step} (training.max_nonfinite_steps="
            f"{limit}); those updates were skipped, so the saved checkpoints hold finite parameters"
        )


def _evaluate_and_track(
    parallelism, eval_fn, state, split, setup, step, writer, ckpts, best, stop=None
) -> tuple[dict, dict | None]:
    """Evaluates, keeps the best parameters by `training.best_metric`, and updates early stopping.

    Returns the evaluation's summary metrics, and its counts when it is the new best (the final report
    reuses them; else None).
    Raises `EvaluationInterrupted` when `stop` says so before the evaluation is complete (nothing recorded).
    """
    eval_dir = os.path.join(setup.workdir, "eval")
    metrics, totals = run_evaluation(
        eval_fn,
        state.params,
        split,
        setup.config,
        setup.label_names,
        step,
        writer,
        eval_dir,
        stop=stop,
        task=setup.task,
    )
    assert set(metrics) == set(setup.task.metric_names(setup.config.data)), metrics  # best_metric's choices
    value = metrics[tasks.best_metric(setup.config, setup.task)]
    if not math.isfinite(value):  # a correlation of constant predictions is NaN: count it as the worst
        value = -math.inf if tasks.best_mode(setup.config, setup.task) == "max" else math.inf
    if best.update(value, step):
        peft = peft_lib.from_config(setup.config)
        saved = parallelism.to_save(peft_lib.trained_subset(state.params, peft))
        ckpts.save_best(step, saved, {"step": step, **metrics})
        improved = totals
    else:
        improved = None
    logging.info("step %d %s: %s", step, split.name, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics, improved


def _final_reports(
    parallelism, eval_fn, state, setup, writer, ckpts, best, step, best_eval=None, stop=None
) -> dict:
    """Evaluates the best parameters (else the last) on eval and test, prints and writes their reports.

    `best_eval`: (step, counts) of the best evaluation of this process's loop; when that is the best
    checkpoint, its eval counts are reused instead of evaluating the same parameters again. A damaged best
    checkpoint is reported and the last parameters are used. `stop`: as for `eval_counts`.
    """
    eval_dir = os.path.join(setup.workdir, "eval")
    peft, current = peft_lib.from_config(setup.config), parallelism.to_host(state.params)
    try:
        best_params = ckpts.restore_best_params(peft_lib.trained_subset(current, peft))
    except checkpoint.Damaged as error:
        logging.warning("%s; the final reports use the parameters of the last step, %d", error, step)
        best_params = None
    # The frozen parameters never change, so the current ones complete the best trained subset exactly.
    params = (
        parallelism.place_params(peft_lib.merge(current, best_params[0], peft))
        if best_params
        else state.params
    )
    final, final_from, task, tuned = {}, best.best_step if best_params else step, setup.task, {}
    for name in ("eval", "test"):
        if name in setup.splits:
            reuse = best_params and best_eval and best_eval[0] == best.best_step and name == "eval"
            totals = best_eval[1] if reuse else None
            if name == "eval":  # the decision rule the task tunes on it (multi-label: the threshold)
                if totals is None:
                    totals = _split_counts(eval_fn, params, setup.splits[name], setup.config, stop)
                task, tuned = setup.task.tuned(totals, setup.splits[name])
            final[name], _ = run_evaluation(
                eval_fn,
                params,
                setup.splits[name],
                setup.config,
                setup.label_names,
                None,
                writer,
                eval_dir,
                totals=totals,
                params_step=final_from,
                stop=stop,
                task=task,
            )
            if parallel.is_chief():
                with open(os.path.join(eval_dir, evaluate.report_name(name, None) + ".txt")) as f:
                    print(f.read())
    if parallel.is_chief():
        tuned_path = os.path.join(setup.workdir, TUNED)
        if tuned:
            logging.info("Tuned on the eval split: %s", tuned)
            files.write_json_atomic(tuned_path, tuned)
        elif os.path.exists(tuned_path):  # a resumed run that no longer tunes
            os.remove(tuned_path)
        files.write_json_atomic(
            os.path.join(setup.workdir, "final_metrics.json"),
            {
                "params_from_step": final_from,
                **_run_facts(current, peft),
                **({"tuned": tuned} if tuned else {}),
                **final,
            },
        )
    return final


def _run_facts(params, peft) -> dict:
    """Trainable and total parameter counts, and the device's peak memory where the backend reports it."""
    trainable, total = peft_lib.count(params, peft)
    facts = {"trainable_params": trainable, "total_params": total}
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        facts["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    return facts


@dataclasses.dataclass(frozen=True)
class Extensions:
    """What a caller adds to a config-driven run: a method built on this trainer instead of a loop of its own.

    Attributes:
      model: the Flax module to train instead of `create_model`'s (its parameters are initialised, or
        restored, as the config says).
      loss_terms: extra loss terms, computed inside the step (`jaxft.training.steps.weighted_loss_sum`).
      transform: applied to every host train batch before it is placed (e.g. adding replayed rows).
      hooks: `jaxft.training.trainer.Hook`s called after the evaluation hook of each step, before early
        stopping, pre-emption and the checkpoint (so a stop they ask for is saved).
    """

    model: Any = None
    loss_terms: tuple = ()
    transform: Callable[[dict], dict] | None = None
    hooks: tuple = ()


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, extensions: Extensions | None = None
) -> dict:
    """Fine-tunes as `config` says, writing checkpoints, metrics and reports to `workdir`.

    Args:
      config: a config from `jaxft/configs/` (see jaxft/configs/default.py for every field).
      workdir: the run's directory; an existing run there is resumed. It must be a jaxft workdir
        (`jaxft.training.workdir`), and is locked against a second run for as long as this one runs.
      extensions: a model, loss terms, a batch transform or hooks from the caller (default: none).

    Returns:
      The final evaluation metrics by split ({"eval": {...}, "test": {...}}), empty without eval data.

    Raises:
      UserError: bad input, or the workdir is in use (nothing was written); as `StorageError`, the machine
      refused a write (a full disk, a read-only filesystem). FloatingPointError: too many non-finite steps,
      Preempted: SIGTERM or a first Ctrl-C arrived (a checkpoint of the current step was written first).
    """
    workdir_lib.check(workdir)
    lock = workdir_lib.Lock(workdir, enabled=parallel.is_chief())
    lock.acquire()
    try:
        return _train_and_evaluate(config, workdir, lock, extensions or Extensions())
    finally:
        lock.release()


@dataclasses.dataclass
class _Start:
    """A run set up and ready to step: its inputs, model, optimizer, checkpoints and starting state."""

    setup: Setup
    train_split: Any
    bucket_list: list[int]
    per_epoch: int
    total_steps: int
    model: Any
    peft: peft_lib.PeftConfig
    tx: Any
    ckpts: checkpoint.Checkpoints
    best: BestMetric
    state: steps.TrainState  # host arrays
    redo_eval: bool  # the evaluation of the starting step is still to be done (a pre-emption interrupted it)

    @property
    def start_step(self) -> int:
        return int(self.state.step)


def _start_run(
    config: ml_collections.ConfigDict, workdir: str, lock: workdir_lib.Lock, extensions: Extensions
) -> _Start:
    """Reads, tokenizes and checks the inputs, builds the model and optimizer, restores or initialises the
    state, then writes the run's files.

    The checks that need tokens or parameters (an entity span too long, a checkpoint's shapes, a PEFT run's
    base) come before the run's files are written: a failed start (bad input, a full disk, ...) leaves a
    resumed run's files as they were and removes a workdir it created.
    """
    tc = config.training
    try:
        setup = prepare(config, workdir)
        cache_dir = os.path.join(workdir, "cache") if config.data.cache else None
        pipeline.tokenize_splits(
            setup.splits, setup.tokenizer, config.data, cache_dir, setup.task, setup.label_names
        )
        train_split, bucket_list = setup.splits["train"], pipeline.buckets(config.data)
        per_epoch = pipeline.steps_per_epoch(train_split, bucket_list, tc.batch_size)
        total_steps = tc.num_train_steps if tc.num_train_steps > 0 else tc.num_epochs * per_epoch
        model = extensions.model or create_model(
            config, setup.bert_config, len(setup.label_names), setup.tokenizer
        )
        peft = peft_lib.from_config(config)
        tx = optim.create_optimizer(config.optimizer, total_steps, peft)
        # Several processes save synchronously: two async Orbax managers (latest and best) saving at the
        # same step can collide in Orbax's multi-host barriers ("Barrier ... is already ongoing").
        async_save = tc.async_checkpoints and jax.process_count() == 1
        ckpts = checkpoint.Checkpoints(workdir, keep=tc.keep_checkpoints, async_save=async_save)
        mode = tasks.best_mode(config, setup.task)
        best = BestMetric(mode, tc.early_stopping_min_delta, tc.early_stopping_patience)
        state, redo_eval = _start_state(setup, model, tx, ckpts, best)
        if parallel.is_chief():
            _write_run_files(setup, int(state.step))
    except BaseException:
        lock.remove_created()
        raise
    return _Start(
        setup,
        train_split,
        bucket_list,
        per_epoch,
        total_steps,
        model,
        peft,
        tx,
        ckpts,
        best,
        state,
        redo_eval,
    )


def _step_functions(start: _Start, parallelism, extensions: Extensions):
    """The train and eval steps, transformed for `parallelism`, and the device train batches from the
    starting step on (through the caller's transform)."""
    config, setup, tc = start.setup.config, start.setup, start.setup.config.training
    train_step = parallelism.train_step(
        steps.train_step,
        model=start.model,
        tx=start.tx,
        accum_steps=tc.grad_accum_steps,
        l2_coefficient=config.optimizer.l2_penalty,
        task=setup.task,
        loss_terms=tuple(extensions.loss_terms),
        **strategy_checks.step_options(config),
    )
    eval_fn = parallelism.eval_step(steps.eval_step, model=start.model, task=setup.task)
    batches = pipeline.train_batches(
        start.train_split, start.bucket_list, tc.batch_size, config.seed, start.start_step
    )
    if extensions.transform is not None:
        batches = map(extensions.transform, batches)
    return train_step, eval_fn, parallelism.device_batches(batches)


class _SideWork:
    """This run's side work on the loop, as hooks (`hooks`): logging and the progress bar, evaluation with
    best tracking, the caller's hooks, early stopping, pre-emption, checkpoints.

    Holds the metric writer, the progress bar and `best_eval`: (step, eval counts) of the best evaluation
    since this process started, which the final reports reuse.
    """

    def __init__(self, start: _Start, run: trainer.Run, eval_fn):
        config, tc = start.setup.config, start.setup.config.training
        self.start, self.run, self.eval_fn = start, run, eval_fn
        self.writer = trackers.create_writer(config, start.setup.workdir, enabled=parallel.is_chief())
        self.writer.log_config(trackers.flat_config(config), trackers.run_tags(config))
        self.progress = ProgressBar(
            start.total_steps, initial=start.start_step, enabled=parallel.is_chief() and tc.progress_bar
        )
        self._log = functools.partial(
            _log_train,
            parallelism=run.parallelism,
            config=config,
            schedule=optim.learning_rate_schedule(config.optimizer, start.total_steps),
            writer=self.writer,
            progress=self.progress,
        )
        self._since = (start.start_step, time.time())  # the step and time of the last log line (throughput)
        self.best_eval = None
        self.preemption = None

    def hooks(self, preemption: PreemptionGuard, extensions: Extensions) -> list:
        """The hooks, in their order; `preemption` is the guard the loop runs under."""
        self.preemption = preemption
        start, tc = self.start, self.start.setup.config.training
        hooks = [trainer.Every(tc.log_every, self.log_step, end=lambda run: self.progress.close())]
        if start.setup.splits.get("eval") is not None:
            eval_every = tc.eval_every or start.per_epoch
            hooks.append(trainer.Evaluation(eval_every, self.evaluate_at, redo=start.redo_eval))
        return hooks + [
            *extensions.hooks,
            trainer.EarlyStopping(start.best, self.early_stop_message, redone=start.redo_eval),
            trainer.Preemption(preemption),
            trainer.Checkpoint(tc.checkpoint_every, self.save, start.ckpts.latest_step, start.ckpts.wait),
        ]

    def log_step(self, run, step, metrics):
        self._log(step, metrics, run.state, since=self._since)
        self._since = (step, time.time())

    def save(self, step, pending_eval=False):
        start, run = self.start, self.run
        _check_finite(run.parallelism, run.state, step, start.setup.config.training.max_nonfinite_steps)
        meta = {
            "step": step,
            "epoch": step // start.per_epoch,
            "batch_in_epoch": step % start.per_epoch,
            "best": start.best.to_dict(),
            "labels": start.setup.label_names,
            "pending_eval": pending_eval,  # a pre-emption interrupted this step's evaluation: redo it
            "data_fingerprint": start.setup.fingerprints,
        }
        start.ckpts.save(step, run.parallelism.to_save(peft_lib.saved_state(run.state, start.peft)), meta)

    def evaluate_at(self, step, saved=False):
        """The evaluation of `step`. A pre-emption during it stops the run at once: the step is saved
        (unless it is already, `saved`) with its evaluation marked as still to do."""
        start, run = self.start, self.run
        try:
            metrics, counts = _evaluate_and_track(
                run.parallelism,
                self.eval_fn,
                run.state,
                start.setup.splits["eval"],
                start.setup,
                step,
                self.writer,
                start.ckpts,
                start.best,
                self.preemption.now,
            )
        except EvaluationInterrupted:
            if not saved:
                self.save(step, pending_eval=True)
            raise Preempted(step, self.preemption.signum) from None
        self.best_eval = (step, counts) if counts is not None else self.best_eval
        run.evaluation = (step, metrics)

    def early_stop_message(self, best, step):
        metric = tasks.best_metric(self.start.setup.config, self.start.setup.task)
        return (
            f"Early stopping at step {step}: no {metric} improvement in {best.patience} evaluations "
            f"(best {best.best:.4f} at {best.best_step})"
        )


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, lock: workdir_lib.Lock, extensions: Extensions
) -> dict:
    start = _start_run(config, workdir, lock, extensions)  # removes a workdir it created when it fails
    tc = config.training
    parallelism = parallel.from_config(tc)
    train_step, eval_fn, batches = _step_functions(start, parallelism, extensions)
    logging.info(
        "Training %d steps (%d per epoch, global batch %d on %d devices, %s) from step %d",
        start.total_steps,
        start.per_epoch,
        tc.batch_size,
        parallel.global_devices(),
        parallelism.name,
        start.start_step,
    )
    run = trainer.Run(parallelism.place_state(start.state), start.start_step, start.total_steps, parallelism)
    side = None
    try:
        side = _SideWork(start, run, eval_fn)  # the trackers start their runs here
        with PreemptionGuard() as preemption:
            hooks = side.hooks(preemption, extensions)
            trainer.run_steps(run, train_step, batches, hooks, sync=backend.sync_every_step())
            try:
                final = _final_reports(
                    parallelism, eval_fn, run.state, start.setup, side.writer, start.ckpts, start.best,
                    run.step, side.best_eval, preemption.now,
                )  # fmt: skip
            except EvaluationInterrupted:  # the rerun resumes from the saved last step and reports
                raise Preempted(run.step, preemption.signum) from None
            if parallel.is_chief():
                if "jsonl" in config_lib.logger_names(tc.loggers):
                    plot_curves(os.path.join(workdir, METRICS_FILE), os.path.join(workdir, "curves.png"))
                side.writer.log_final(run.step, final, trackers.final_artifacts(workdir))
    except BaseException as error:
        # Whatever stops the run (a signal, a non-finite loss, Ctrl-C), saves already started finish.
        if side is not None:
            side.progress.close()
            side.writer.close(error)
        start.ckpts.close()
        raise
    side.writer.close()
    start.ckpts.close()
    return final
