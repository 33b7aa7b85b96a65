"""Hugging Face checkpoints to and from jaxft parameter trees.

A checkpoint directory holds `config.json` and either `model.safetensors` or `pytorch_model.bin`. Names map
mechanically because the Flax modules mirror Hugging Face's: `bert.encoder.layer.3.output.dense.weight` is
`bert/encoder/layer_3/output/dense/kernel` (transposed), LayerNorm `weight`/`bias` (or the `gamma`/`beta` of
old TF-converted checkpoints) are `scale`/`bias`, and embedding `weight` is `embedding`. Pretrained weights
enter a freshly initialised model through one step, `merge_pretrained`, which logs what was newly
initialised and refuses tensors the model has no place for.
"""

import json
import logging
import os
import re

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxft.errors import UserError
from jaxft.models import families

# Without these the config cannot describe the tensors; the rest have Hugging Face defaults.
_REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)
# Non-parameter buffers that some checkpoints carry.
_BUFFER_SUFFIXES = ("position_ids", "token_type_ids")
_ENCODER_ROOTS = ("embeddings", "embeddings_project", "encoder", "pooler")
_HEAD_ROOTS = ("classifier", "pre_classifier")  # the task heads' groups kept from a checkpoint
_TORCH_TO_SAFETENSORS_HINT = (
    'python -c "import torch, safetensors.torch as s; '
    "s.save_file(torch.load('pytorch_model.bin', weights_only=True), 'model.safetensors')\""
)


_HUB_FILES = [
    "config.json",
    "model.safetensors",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spm.model",
    "sentencepiece.bpe.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model_dir(name: str) -> str:
    """A local directory for a checkpoint: `name` itself, or a Hugging Face hub model id such as
    `google-bert/bert-base-uncased`, fetched through the huggingface_hub cache.

    With `HF_HUB_OFFLINE=1` (or no network) only the cache is used. Nothing but the config, safetensors
    weights and tokenizer files is downloaded.

    Raises:
        UserError: not a directory, and the hub (or its cache) cannot provide it.
    """
    if os.path.isdir(name) or not _HUB_NAME.match(name) or os.path.exists(name):
        return name
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        raise UserError(f"{name}: no such directory") from None
    try:
        return snapshot_download(name, allow_patterns=_HUB_FILES)
    except Exception as e:  # offline, unknown repo, gated repo, network errors: many types
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else _first_line(e)
        raise UserError(
            f"{name}: no such directory, and the Hugging Face hub cannot provide it ({why})"
        ) from None


def load_config(checkpoint_dir: str):
    """Reads a Hugging Face `config.json` into its family's config (`jaxft.models.families`).

    Args:
        checkpoint_dir: the checkpoint directory.

    Returns:
        The architecture: a `BertConfig` or the config of another family.

    Raises:
        UserError: no `config.json`, a family jaxft does not read, or a required key is missing.
    """
    checkpoint_dir = resolve_model_dir(checkpoint_dir)
    path = os.path.join(checkpoint_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{checkpoint_dir}: not a checkpoint directory (no config.json)")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read JSON: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a JSON object")
    try:
        return config_from_dict(d)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def config_from_dict(d: dict):
    """The config of a Hugging Face `config.json` dict (or a workdir's model config), by its model_type.

    Raises:
        UserError: a family jaxft does not read, a required key missing, or a value the family refuses.
    """
    config_class = families.named(_model_type(d)).config
    missing = [k for k in getattr(config_class, "REQUIRED_KEYS", _REQUIRED_KEYS) if k not in d]
    if missing:
        raise UserError(f"missing key(s) {', '.join(missing)}")
    return config_class.from_dict(d)


def _model_type(d: dict):
    """`config.json`'s model_type; old BERT files that lack it name a `Bert*` architecture."""
    if d.get("model_type") is None and any(str(a).startswith("Bert") for a in d.get("architectures") or []):
        return "bert"
    return d.get("model_type")


def load_state_dict(checkpoint_dir: str) -> dict[str, np.ndarray]:
    """Reads the checkpoint tensors as float32 NumPy arrays, without running any pickled code.

    `model.safetensors` is preferred. `pytorch_model.bin` is read with `torch.load(weights_only=True)`,
    which refuses pickles that hold anything but tensors and containers. Buffers that are not parameters
    (`*.position_ids`) are dropped.

    Args:
        checkpoint_dir: the checkpoint directory.

    Returns:
        Hugging Face tensor names to arrays.

    Raises:
        UserError: no weights file, torch missing for a `.bin`, or a file that cannot be read safely.
    """
    checkpoint_dir = resolve_model_dir(checkpoint_dir)
    st_path = os.path.join(checkpoint_dir, "model.safetensors")
    bin_path = os.path.join(checkpoint_dir, "pytorch_model.bin")
    if os.path.isfile(st_path):
        import safetensors.numpy

        try:
            raw = safetensors.numpy.load_file(st_path)
        except Exception as e:  # safetensors raises several types for corrupt files
            raise UserError(f"{st_path}: cannot read safetensors file: {_first_line(e)}") from None
    elif os.path.isfile(bin_path):
        raw = _load_torch_bin(bin_path)
    else:
        raise UserError(f"{checkpoint_dir}: no model.safetensors or pytorch_model.bin")
    return {
        name: np.asarray(value, dtype=np.float32)
        for name, value in raw.items()
        if not name.endswith(_BUFFER_SUFFIXES)
    }


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _torch_refusal(e: Exception) -> str:
    """The reason inside torch's weights_only error: the global it refused, by name, without torch's advice
    to re-run `torch.load` with `weights_only=False` (which would run the pickled code)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split())
    found = re.search(r"GLOBAL\s+([\w.]+)", text)  # torch words this several ways across versions
    if found:
        return f"refused global {found.group(1)} (only tensors and plain containers are read)"
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        return f"not a PyTorch weights file (pickle opcode {found.group(1)} is not allowed)"
    found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:Check the documentation|$)", text)
    if found:
        text = found.group(1)
    # Whatever else torch says: its sentences without the advice to load the file unsafely.
    advice = re.compile(r"weights_only|re-run|trusted source|arbitrary code|check the documentation", re.I)
    kept = [part for part in re.split(r"(?<=[.!?])\s+", text) if part and not advice.search(part)]
    return " ".join(kept) or type(e).__name__


def _load_torch_bin(path: str) -> dict:
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{path}: pytorch_model.bin needs torch to read safely; install torch or convert it to "
            f"model.safetensors where torch is installed (e.g. `{_TORCH_TO_SAFETENSORS_HINT}`)"
        ) from None
    try:
        # weights_only refuses arbitrary objects instead of executing their pickled constructors.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: refused to load (not a plain tensor file): {_torch_refusal(e)}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: expected a dict of tensor names to tensors")
    return {name: t.detach().to(torch.float32).numpy() for name, t in obj.items()}


def _leaf_name(module: str, torch_leaf: str) -> str | None:
    if module == "LayerNorm":
        return {"weight": "scale", "gamma": "scale", "bias": "bias", "beta": "bias"}.get(torch_leaf)
    if module.endswith("_embeddings"):
        return "embedding" if torch_leaf == "weight" else None
    return {"weight": "kernel", "bias": "bias"}.get(torch_leaf)


def hf_to_flax(
    state_dict: dict[str, np.ndarray], family=None, *, mlm_head: bool = False
) -> tuple[dict, list[str]]:
    """Converts a Hugging Face state dict of `family` (default BERT) to a nested Flax parameter tree.

    Accepts base-model names (`encoder.layer.0...`) and task-model names (`bert.encoder.layer.0...`,
    `roberta.encoder...`, `classifier.weight`, `classifier.out_proj.weight`, `pre_classifier.weight`). Other
    families' names become BERT's first (`families.Family.to_bert_name`).

    Args:
        state_dict: tensor name to array (NumPy or anything `np.asarray` takes).
        family: a `jaxft.models.families.Family`; None is BERT.
        mlm_head: also convert the masked-LM head of `BertForMaskedLM` / `BertForPreTraining`
            (`cls.predictions.*`) into `"cls"`, for `MaskedLMClassifier`. Its decoder weight is the word
            embedding matrix (tied), so it is not kept.

    Returns:
        `(params, ignored_names)`: `params` is `{"bert": {...}}` plus the head's groups the checkpoint has
        (`"classifier"`, `"pre_classifier"`; `"cls"` with `mlm_head`), float32; `ignored_names` lists
        tensors that belong to none of them (MLM/NSP heads `cls.*`, buffers), for the caller to report.

    Raises:
        UserError: with `mlm_head`, a decoder weight that is not the word embedding matrix (untied).
    """
    family = family or families.named("bert")
    if family.converter is not None:
        if not mlm_head:
            return family.converter.hf_to_flax(state_dict)
        if not family.masked_lm:
            raise UserError(f"jaxft reads no masked-LM head of model_type {family.model_type!r}")
        if family.mlm_head is not None:
            return family.converter.hf_to_flax(state_dict, mlm_head=True)
        return _with_bert_mlm_head(state_dict, family)
    if mlm_head:  # the family's masked-LM head under BERT's names, its word embeddings under `bert.` too
        state_dict = {family.mlm_names.get(name, name): value for name, value in state_dict.items()}
        prefixed = family.prefix + ".embeddings.word_embeddings.weight"
        if prefixed in state_dict:
            state_dict[_WORD_EMBEDDINGS[0]] = state_dict.pop(prefixed)
    flat, ignored = {}, []
    for name, value in state_dict.items():
        if mlm_head and name in _MLM_NAMES:
            flat[_MLM_NAMES[name]] = _mlm_tensor(name, value, state_dict)
            continue
        if mlm_head and name == _MLM_DECODER:
            _check_tied_decoder(value, state_dict)
            continue
        renamed = name
        if renamed.startswith(family.prefix + "."):
            renamed = "bert." + renamed[len(family.prefix) + 1 :]
        parts = family.to_bert_name(renamed).split(".")
        if parts[0] == "bert":
            parts = parts[1:]
        # The heads' own groups; other heads (masked-LM, next sentence, QA) are not ours.
        elif parts[0] not in _ENCODER_ROOTS + _HEAD_ROOTS:
            ignored.append(name)
            continue
        if parts[-1].endswith(_BUFFER_SUFFIXES) or len(parts) < 2:
            ignored.append(name)
            continue
        path = list(parts[:-1])
        leaf = _leaf_name(path[-1], parts[-1])
        if leaf is None:
            ignored.append(name)
            continue
        # `encoder.layer.3` -> `encoder/layer_3`.
        joined = re.sub(r"(^|/)layer/(\d+)(/|$)", r"\1layer_\2\3", "/".join(path))
        root = () if path[0] in _HEAD_ROOTS else ("bert",)
        array = np.asarray(value, dtype=np.float32)
        flat[(*root, *joined.split("/"), leaf)] = array.T if leaf == "kernel" else array
    return traverse_util.unflatten_dict(flat), ignored


def _with_bert_mlm_head(state_dict: dict, family) -> tuple[dict, list[str]]:
    """`hf_to_flax` with `mlm_head` of a family with its own converter and BERT's masked-LM head
    (DeBERTa-v2's `cls.predictions.*`, or `lm_predictions.lm_head.*` renamed so): the head by BERT's
    conversion (`cls`, its decoder checked tied to the word embeddings), the rest by the family's."""
    renamed = {family.mlm_names.get(name, name): value for name, value in state_dict.items()}
    head_names = {name for name in renamed if name in _MLM_NAMES or name == _MLM_DECODER}
    params, ignored = family.converter.hf_to_flax({n: v for n, v in renamed.items() if n not in head_names})
    head = {name: renamed[name] for name in head_names}
    words = state_dict.get(f"{family.prefix}.embeddings.word_embeddings.weight")
    if words is not None:
        head[_WORD_EMBEDDINGS[0]] = words  # for the tie check only
    converted, _ = hf_to_flax(head, mlm_head=True)
    if "cls" in converted:
        params["cls"] = converted["cls"]
    return params, ignored


def read_pretrained(checkpoint_dir: str, *, mlm_head: bool = False) -> tuple[dict, list[str]]:
    """`hf_to_flax` of the checkpoint in `checkpoint_dir`, by the family its config.json names."""
    family = families.of(load_config(checkpoint_dir))
    return hf_to_flax(load_state_dict(checkpoint_dir), family, mlm_head=mlm_head)


_MLM = ("cls", "predictions")
# `cls.predictions.*` of BertForMaskedLM / BertForPreTraining -> the `cls` tree of `MaskedLMClassifier`.
_MLM_NAMES = {
    "cls.predictions.transform.dense.weight": (*_MLM, "transform", "dense", "kernel"),
    "cls.predictions.transform.dense.bias": (*_MLM, "transform", "dense", "bias"),
    "cls.predictions.transform.LayerNorm.weight": (*_MLM, "transform", "LayerNorm", "scale"),
    "cls.predictions.transform.LayerNorm.gamma": (*_MLM, "transform", "LayerNorm", "scale"),
    "cls.predictions.transform.LayerNorm.bias": (*_MLM, "transform", "LayerNorm", "bias"),
    "cls.predictions.transform.LayerNorm.beta": (*_MLM, "transform", "LayerNorm", "bias"),
    "cls.predictions.bias": (*_MLM, "bias"),
    # Hugging Face ties the decoder's bias to `cls.predictions.bias`; some files hold only this name.
    "cls.predictions.decoder.bias": (*_MLM, "bias"),
}
_MLM_DECODER = "cls.predictions.decoder.weight"
_WORD_EMBEDDINGS = ("bert.embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight")


# BERT's masked-LM names -> the family's, for export (the decoder weight is tied to the word embeddings).
_MLM_EXPORT_NAMES = {
    family.model_type: {
        bert: ours for ours, bert in family.mlm_names.items() if not bert.startswith(_MLM_DECODER)
    }
    for family in families.FAMILIES.values()
}


def has_mlm_head(params: dict, family=None) -> bool:
    """Whether a tree from `hf_to_flax(..., mlm_head=True)` holds the whole masked-LM head of `family`
    (default BERT)."""
    if family is not None and family.mlm_head is not None:
        return set(family.mlm_groups) <= set(params)
    wanted = {path[2:] for path in _MLM_NAMES.values()}
    found = set(traverse_util.flatten_dict(params.get("cls", {}).get("predictions", {})))
    return wanted <= found


def _mlm_tensor(name: str, value, state_dict: dict) -> np.ndarray:
    if name == "cls.predictions.decoder.bias" and "cls.predictions.bias" in state_dict:
        value = state_dict["cls.predictions.bias"]  # the same tensor; take the canonical name's copy
    array = np.asarray(value, dtype=np.float32)
    return array.T if name.endswith("dense.weight") else array


def _check_tied_decoder(decoder, state_dict: dict) -> None:
    for name in _WORD_EMBEDDINGS:
        if name in state_dict and not np.array_equal(
            np.asarray(decoder, np.float32), np.asarray(state_dict[name], np.float32)
        ):
            raise UserError(
                f"{_MLM_DECODER} differs from {name}: jaxft's masked-LM head ties the decoder to the word "
                "embeddings, as BERT does (tie_word_embeddings=True)"
            )


def flax_to_hf(params: dict, family=None) -> dict[str, np.ndarray]:
    """Converts `{"bert": ..., "classifier": ...}` back to the names of `family`'s (default BERT's)
    transformers task classes.

    The inverse of `hf_to_flax`: `<prefix>.`-prefixed encoder names, kernels transposed back, float32 and
    contiguous (ready for `safetensors.numpy.save_file`). A masked-LM head (`cls`) becomes
    `cls.predictions.*` without a decoder weight, which `BertForMaskedLM` ties to the word embeddings.

    Args:
        params: a parameter tree with top-level keys `bert` and optionally `classifier`, `pre_classifier` or
            `cls`.
        family: a `jaxft.models.families.Family`; None is BERT.

    Returns:
        Hugging Face tensor name to array.

    Raises:
        UserError: a top-level key the family's classes have no place for.
    """
    family = family or families.named("bert")
    if family.converter is not None:
        if family.mlm_head is None and "cls" in params:  # BERT's masked-LM head, by BERT's names
            rest = {group: tree for group, tree in params.items() if group != "cls"}
            return {**family.converter.flax_to_hf(rest), **flax_to_hf({"cls": params["cls"]})}
        return family.converter.flax_to_hf(params)
    unknown = sorted(set(params) - {"bert", "cls", *_HEAD_ROOTS})
    if unknown:
        raise UserError(
            f"cannot export parameter group {unknown[0]!r}: only 'bert', "
            f"{', '.join(map(repr, _HEAD_ROOTS))} and 'cls' map to {family.class_prefix}'s classes"
        )
    out = {}
    for path, value in traverse_util.flatten_dict(params).items():
        *modules, leaf = path
        modules = [re.sub(r"^layer_(\d+)$", r"layer.\1", m) for m in modules]
        array = np.asarray(value, dtype=np.float32)
        if leaf == "kernel":
            array = array.T
        torch_leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
        name = family.from_bert_name(".".join([*modules, torch_leaf]))
        if name.startswith("bert."):
            name = family.prefix + name[len("bert") :]
        out[_MLM_EXPORT_NAMES.get(family.model_type, {}).get(name, name)] = np.ascontiguousarray(array)
    return out


def merge_pretrained(init_params: dict, pretrained: dict, *, log=logging.info) -> dict:
    """Fills a freshly initialised parameter tree with pretrained values.

    Every leaf of `init_params` found in `pretrained` is replaced by the pretrained value (float32); the
    others keep their initial values and are listed in one `log` line (usually the task head).

    Args:
        init_params: the model's initialised parameters, e.g. `{"bert": ..., "classifier": ...}`.
        pretrained: a nested tree from `hf_to_flax`.
        log: called once with a one-line message naming the newly initialised paths.

    Returns:
        A new tree; neither input is modified.

    Raises:
        UserError: a pretrained tensor the model has no parameter for, or a shape mismatch.
    """
    init_flat = traverse_util.flatten_dict(dict(init_params), sep="/")
    pre_flat = traverse_util.flatten_dict(dict(pretrained), sep="/")
    unexpected = [p for p in pre_flat if p not in init_flat]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise UserError(
            f"unexpected tensor {unexpected[0]} in checkpoint{more}: {_why_unexpected(init_flat)}"
        )
    merged, fresh = {}, []
    for path, value in init_flat.items():
        if path not in pre_flat:
            merged[path] = value
            fresh.append(path)
            continue
        new = pre_flat[path]
        if tuple(new.shape) != tuple(value.shape):
            raise UserError(
                f"shape mismatch for {path}: checkpoint has {tuple(new.shape)}, "
                f"model has {tuple(value.shape)}"
            )
        merged[path] = jnp.asarray(new, dtype=jnp.float32)
    if fresh:
        log(f"newly initialised (not in checkpoint): {', '.join(fresh)}")
    else:
        log("all parameters loaded from checkpoint")
    return traverse_util.unflatten_dict(merged, sep="/")


def _why_unexpected(init_flat: dict) -> str:
    layers = {m.group(1) for p in init_flat if (m := re.search(r"encoder/layer_(\d+)/", p))}
    return f"the model has {len(layers)} layers and no parameter of that name"


def load_pretrained(checkpoint_dir: str, init_params: dict, *, log=logging.info) -> tuple[dict, object]:
    """Loads a Hugging Face checkpoint of any family into an initialised parameter tree.

    Args:
        checkpoint_dir: directory with `config.json` and `model.safetensors` or `pytorch_model.bin`.
        init_params: the model's initialised parameters.
        log: receives one line about ignored checkpoint tensors (if any) and one about new parameters.

    Returns:
        `(params, config)`.

    Raises:
        UserError: see `load_config`, `load_state_dict` and `merge_pretrained`.
    """
    config = load_config(checkpoint_dir)
    pretrained, ignored = hf_to_flax(load_state_dict(checkpoint_dir), families.of(config))
    if ignored:
        shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        log(f"ignoring {len(ignored)} checkpoint tensor(s) this model does not use: {shown}")
    try:
        params = merge_pretrained(init_params, pretrained, log=log)
    except UserError as e:
        raise UserError(f"{checkpoint_dir}: {e}") from None
    return params, config


def vocab_size_with(tokenizer, new_tokens, vocab_size: int) -> int:
    """The vocabulary size a model needs once a task has added `new_tokens` to `tokenizer`.

    `vocab_size` (the checkpoint's), grown to `len(tokenizer)` when some of `new_tokens` got ids beyond the
    embedding table and the rest of the tokenizer fits it. Otherwise unchanged, so a tokenizer that does not
    belong to the checkpoint is still caught by the caller's `len(tokenizer) > vocab_size` check.
    """
    beyond = [i for i in tokenizer.convert_tokens_to_ids(list(new_tokens)) if i >= vocab_size]
    if beyond and len(tokenizer) - len(beyond) <= vocab_size:
        return len(tokenizer)
    return vocab_size


def grow_word_embeddings(pretrained: dict, init_params: dict, *, log=logging.info) -> dict:
    """`pretrained` with as many word-embedding rows as `init_params` has (tokens a task added).

    A new row is the mean of the pretrained rows plus the model's own freshly initialised row, drawn from
    N(0, initializer_range): it starts among the pretrained embeddings (Hewitt 2021, "Initializing new word
    embeddings for pretrained language models") instead of far from them, and the new tokens differ from
    each other. Pretrained rows are unchanged. Trees whose tables agree (or lack one) come back as they are.

    Args:
        pretrained: a tree from `hf_to_flax`.
        init_params: the model's initialised parameters.
        log: receives one line naming how many rows were added.

    Returns:
        A new tree (`pretrained` is not modified).
    """
    path = ("bert", "embeddings", "word_embeddings", "embedding")
    flat_pre = traverse_util.flatten_dict(dict(pretrained))
    flat_init = traverse_util.flatten_dict(dict(init_params))
    if path not in flat_pre or path not in flat_init:
        return pretrained
    old, fresh = np.asarray(flat_pre[path], np.float32), np.asarray(flat_init[path], np.float32)
    if fresh.shape[0] <= old.shape[0] or fresh.shape[1:] != old.shape[1:]:
        return pretrained  # nothing to add; merge_pretrained reports any other mismatch
    added = fresh[old.shape[0] :] + old.mean(axis=0, keepdims=True)
    log(f"word_embeddings: {len(added)} new row(s) for added tokens, each the pretrained rows' mean + noise")
    flat_pre[path] = np.concatenate([old, added])
    return traverse_util.unflatten_dict(flat_pre)
