"""Where a run's parameters come from: initialisation, and a finished run's workdir (whole or PEFT subset).

`initial_params` is what a new run starts from: another run's parameters (warm start), a pretrained
checkpoint merged into a fresh head, or random initialisation. A warm start from a masked-LM run
(task.name="mlm") seeds any task: its encoder (and for pet its masked-LM head) over what model.checkpoint
gives the rest.

A full fine-tuning run's checkpoints hold every parameter. A PEFT run's hold only what trained
(`jaxft.strategies.peft`): the rest is its base, the model as the run initialised it from its config and
`model.checkpoint`. The run records the base's fingerprint in WORKDIR/peft_base.json; whoever rebuilds the
base (a resume, a warm start, prediction, export) checks it, so a base checkpoint that changed since is
refused instead of silently giving other outputs.
"""

import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from jaxft import config as config_lib
from jaxft import files
from jaxft.errors import UserError
from jaxft.models import convert
from jaxft.strategies import peft as peft_lib
from jaxft.training import checkpoint
from jaxft.training.model import create_model
from jaxft.training.workdir import MODEL_CONFIG

BASE_FILE = "peft_base.json"


def write_base(workdir: str, config: ml_collections.ConfigDict, base, peft: peft_lib.PeftConfig) -> None:
    """Records what a PEFT run's checkpoints complete (nothing for full fine-tuning)."""
    if peft.method == "none":
        return
    trained, total = peft_lib.count(base, peft)
    record = {
        "method": peft.method,
        "checkpoint": config.model.checkpoint,
        "init_from_workdir": config.model.init_from_workdir,
        "seed": config.seed,
        "fingerprint": peft_lib.fingerprint(base, peft),
        "trained_params": trained,
        "total_params": total,
    }
    files.write_json_atomic(os.path.join(workdir, BASE_FILE), record)


def check_base(workdir: str, base, peft: peft_lib.PeftConfig) -> None:
    """Raises `UserError` when `base` is not the base the PEFT run in `workdir` was trained on."""
    path = os.path.join(workdir, BASE_FILE)
    try:
        with open(path) as f:
            recorded = json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: unreadable, so the PEFT run's base cannot be checked ({error})") from None
    if recorded.get("fingerprint") != peft_lib.fingerprint(base, peft):
        raise UserError(
            f"{workdir}: the base parameters (model.checkpoint={recorded.get('checkpoint')}) differ from "
            f"those its {peft.method} weights were trained on; restore that checkpoint to use this run"
        )


def saved_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The config a run in `workdir` wrote (None: there is none); a damaged file raises `UserError`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    return config_lib.with_defaults(files.read_json_object(path))


def base_params(config: ml_collections.ConfigDict, model) -> dict:
    """The parameters a run with `config` starts from (its pretrained checkpoint, warm start or seed)."""
    checkpoint_dir = config_lib.expand_path(config.model.checkpoint)
    pretrained = None
    if checkpoint_dir:
        pretrained, _ = convert.read_pretrained(checkpoint_dir)
    return initial_params(config, pretrained, model)


def load_params(workdir: str, template, model, key: str = "model.init_from_workdir", log=None):
    """The full parameter tree of the run in `workdir` (best checkpoint, else newest; a damaged checkpoint is
    skipped for the next), shaped like `template`, and the step it is from.

    Args:
      workdir: a jaxft run's directory.
      template: the full parameter tree of the run's model (shapes and dtypes).
      model: the run's model, to rebuild a PEFT run's base.
      key: names the source in error messages.
      log: where to say which checkpoint was used (default: logging.info).
    """
    kwargs = {"log": log} if log is not None else {}
    config = saved_config(workdir)
    peft = peft_lib.from_config(config) if config is not None else peft_lib.PeftConfig()
    if peft.method == "none":
        return checkpoint.params_from_workdir(workdir, template, key, **kwargs)
    base = base_params(config, model)
    check_base(workdir, base, peft)
    subset = peft_lib.trained_subset(template, peft)
    trained, step = checkpoint.params_from_workdir(workdir, subset, key, **kwargs)
    return peft_lib.merge(base, trained, peft), step


def initial_params(config: ml_collections.ConfigDict, pretrained: dict | None, model) -> dict:
    """Parameters to start a new run from: another run's (warm start), pretrained (head new), or random.

    Args:
      config: the run's config (seed, model.init_from_workdir).
      pretrained: the converted tensors of model.checkpoint, or None.
      model: the run's model (its head, its PEFT modules).
    """
    length = min(8, config.data.max_seq_length)
    dummy = jnp.zeros((1, length), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(config.seed), dummy, jnp.ones_like(dummy), dummy)["params"]
    params = jax.device_get(params)
    if config.model.init_from_workdir:
        source = config_lib.expand_path(config.model.init_from_workdir)
        source_config = saved_config(source)
        if source_config is not None and source_config.task.name == "mlm" and config.task.name != "mlm":
            params = _with_checkpoint(config, pretrained, params)
            params = _with_pretraining_run(source, source_config, params)
            return peft_lib.init_prompt_from_vocab(params, config.seed)
        logging.info("Warm start: a new run from the fine-tuned parameters of %s", source)
        return load_params(source, params, model)[0]
    return peft_lib.init_prompt_from_vocab(_with_checkpoint(config, pretrained, params), config.seed)


def _with_checkpoint(config: ml_collections.ConfigDict, pretrained: dict | None, params: dict) -> dict:
    """Freshly initialised `params` with model.checkpoint's tensors (`pretrained`) merged in."""
    if pretrained is not None:
        pretrained = convert.grow_word_embeddings(dict(pretrained), params)  # tokens a task added
        if "pooler" not in params["bert"] and "pooler" in pretrained.get("bert", {}):
            logging.info("This task's head has no pooler: the checkpoint's bert.pooler is not used")
            pretrained["bert"] = {k: v for k, v in pretrained["bert"].items() if k != "pooler"}
        for group in [name for name in pretrained if name not in ("bert", "cls")]:  # a fine-tuned head
            if group not in params:
                logging.info("The checkpoint's %s is not used: this task's head is another", group)
                del pretrained[group]
            elif _shapes(pretrained[group]) != _shapes(params[group]):
                logging.info(
                    "The checkpoint's %s has other shapes (labels) than this task's: it starts anew", group
                )
                del pretrained[group]
        try:
            params = convert.merge_pretrained(params, pretrained)
        except UserError as error:
            raise UserError(f"model.checkpoint={config.model.checkpoint}: {error}") from None
    else:
        logging.info("No model.checkpoint: the encoder starts from random weights")
    return params


def _with_pretraining_run(source: str, source_config: ml_collections.ConfigDict, params: dict) -> dict:
    """`params` with the encoder of the task.name="mlm" run in `source` (its best checkpoint, else newest),
    and its masked-LM head where this model has one of the same shapes (pet); the rest (a pooler, a
    classifier, PEFT layers) stays as `params` has it: from model.checkpoint, or new.

    Raises:
      UserError: the run's PEFT method adds layers this model lacks, or a tensor does not fit.
    """
    peft = peft_lib.from_config(source_config)
    if peft.method not in ("none", "lora", "bitfit"):
        raise UserError(
            f"model.init_from_workdir={source}: its peft.method={peft.method!r} adds layers a plain encoder "
            "lacks; start from a full, LoRA or BitFit masked-LM run"
        )
    bert_config = convert.config_from_dict(files.read_json_object(os.path.join(source, MODEL_CONFIG)))
    model = create_model(source_config, bert_config, 0)
    shapes = jax.eval_shape(lambda: initial_params_shape(model, source_config))
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    loaded = peft_lib.merge_lora(load_params(source, template, model)[0], peft)  # LoRA folded in
    ours = {"bert": loaded["bert"]}
    for group, tree in loaded.items():  # the masked-LM head, where this model reads one (pet)
        if group != "bert" and group in params and _shapes(tree) == _shapes(params[group]):
            ours[group] = tree
    ours = convert.grow_word_embeddings(ours, params)  # tokens this task adds (relation's markers)
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    for path, value in traverse_util.flatten_dict(ours, sep="/").items():
        if path not in flat or tuple(np.shape(flat[path])) != tuple(np.shape(value)):
            raise UserError(f"model.init_from_workdir={source}: its tensor {path} does not fit this model")
        flat[path] = jnp.asarray(value, jnp.float32)
    replaced = set(traverse_util.flatten_dict(ours, sep="/"))
    kept = sorted({path.rsplit("/", 1)[0] for path in flat if path not in replaced})
    logging.info(
        "Warm start from the masked-LM run %s: its %s; not in it (from model.checkpoint or new): %s",
        source,
        " and ".join(sorted(ours)),
        ", ".join(kept) or "nothing",
    )
    return traverse_util.unflatten_dict(flat, sep="/")


def initial_params_shape(model, config):
    """The parameter tree's shapes, for restoring into (no computation)."""
    dummy = jnp.zeros((1, min(8, config.data.max_seq_length)), jnp.int32)
    return model.init(jax.random.key(config.seed), dummy, jnp.ones_like(dummy), dummy)["params"]


def _shapes(tree) -> dict:
    return {path: tuple(np.shape(leaf)) for path, leaf in traverse_util.flatten_dict(dict(tree)).items()}
