"""Parameter-efficient fine-tuning: which parameters train, the layers that add new ones, saving only those.

`peft.method` picks one of:

- ``"bitfit"`` (Ben Zaken et al. 2022): only the biases of the encoder train.
- ``"lora"`` (Hu et al. 2021): every Dense layer named in `peft.lora_targets` gets a parallel low-rank path
  `x @ A @ B * alpha / r` (`LoraDelta`, a sibling module `<name>_lora`). B starts at zero, so step 0 is the
  pretrained model exactly; `merge_lora` folds `A @ B * alpha / r` into the kernels for export.
- ``"adapter"`` (Houlsby et al. 2019): a bottleneck `x + up(gelu(down(x)))` (`Adapter`) after the attention
  output projection and after the feed-forward output, before each residual LayerNorm. `up` starts at zero,
  so each adapter starts as the identity. As in Houlsby et al., the LayerNorms train too.
- ``"prompt"`` (Lester et al. 2021): `num_virtual_tokens` trainable vectors inserted into the word embeddings
  right after [CLS] (so the pooled [CLS] still reads position 0; real tokens move right by that many
  positions), initialised from the embeddings of random vocabulary tokens; the attention mask grows to match
  and the virtual positions are dropped from the sequence output, so token heads see their own positions.
- ``"prefix"`` (Li & Liang 2021): trainable key and value vectors prepended in every layer's attention
  (`prefix_key`, `prefix_value`), attended to by every query.

In every method the task head (`classifier`, `qa_outputs`, the pooler of a sequence head) trains too, and a
checkpoint holds only what trains (`trained_subset`); the rest is the base checkpoint, which `merge` fills
back in and whose fingerprint the checkpoint records so that restoring from another base is refused.

The layers, and how they reach an encoder that knows nothing of them, are `jaxft.models.peft`'s: a model is
built plain and adapted with `wrap(model, peft)` (re-exported here with the layers).
"""

import dataclasses
import hashlib
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from jaxft import config as config_lib
from jaxft.errors import UserError
from jaxft.models.peft import Adapter, LoraDelta, PeftModel, wrap  # noqa: F401  (re-exported)

METHODS = config_lib.PEFT_METHODS
LORA_TARGETS = config_lib.LORA_TARGETS  # Dense layers of a BERT layer that LoRA can adapt
# Top-level parameter groups of task heads, in every family's names: they always train.
HEADS = ("classifier", "pre_classifier", "head", "qa_outputs", "cls", "decoder")


@dataclasses.dataclass(frozen=True)
class PeftConfig:
    """The `peft` section of a config, hashable so that modules and steps can take it as a static field."""

    method: str = "none"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("query", "value")
    adapter_size: int = 64
    num_virtual_tokens: int = 20

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    @property
    def extra_positions(self) -> int:
        """Positions the input grows by inside the encoder (prompt tuning's virtual tokens)."""
        return self.num_virtual_tokens if self.method == "prompt" else 0

    def lora_on(self, target: str) -> bool:
        return self.method == "lora" and target in self.lora_targets

    def trains(self, path: tuple[str, ...]) -> bool:
        """Whether the parameter at `path` (names from the top of the tree) is trained."""
        if self.method == "none" or path[0] in HEADS or "pooler" in path:
            return True
        if self.method == "bitfit":
            return path[-1] == "bias"
        if self.method == "lora":
            return any(name.endswith("_lora") for name in path)
        if self.method == "adapter":
            return "adapter" in path or any(name == "LayerNorm" or name.endswith("norm") for name in path)
        if self.method == "prompt":
            return path[-1] == "prompt_embeddings"
        return path[-1] in ("prefix_key", "prefix_value")  # prefix


def from_config(config: ml_collections.ConfigDict) -> PeftConfig:
    """The `peft` section as a `PeftConfig`, of a config that `jaxft.config.check` has checked."""
    section = config.peft
    return PeftConfig(
        method=section.method,
        lora_rank=int(section.lora_rank),
        lora_alpha=float(section.lora_alpha),
        lora_dropout=float(section.lora_dropout),
        lora_targets=tuple(section.lora_targets),
        adapter_size=int(section.adapter_size),
        num_virtual_tokens=int(section.num_virtual_tokens),
    )


# ---- trainable subsets, checkpoints, export ---------------------------------------------------------------
def _names(path) -> tuple[str, ...]:
    return tuple(str(getattr(key, "key", key)) for key in path)


def trainable_mask(params, peft: PeftConfig):
    """A tree of bools like `params`: True where the parameter trains."""
    return jax.tree_util.tree_map_with_path(lambda path, _: peft.trains(_names(path)), params)


def optimizer_labels(peft: PeftConfig) -> Callable:
    """`optax.multi_transform` labels: "train" or "frozen" per parameter."""
    return lambda params: jax.tree.map(lambda t: "train" if t else "frozen", trainable_mask(params, peft))


def freeze(params, peft: PeftConfig):
    """`params` with `stop_gradient` on the frozen ones, whose gradients XLA then never computes."""
    if peft.method == "none":
        return params
    return jax.tree_util.tree_map_with_path(
        lambda path, p: p if peft.trains(_names(path)) else jax.lax.stop_gradient(p), params
    )


def trained_subset(params, peft: PeftConfig) -> dict:
    """Only the trained parameters, as a nested dict (what a PEFT checkpoint holds)."""
    if peft.method == "none":
        return params
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: v for k, v in flat.items() if peft.trains(k)})


def saved_state(state, peft: PeftConfig):
    """A train state as a checkpoint holds it: only the trained parameters (the optimizer state already
    covers only those)."""
    return state.replace(params=trained_subset(state.params, peft))


def merge(base, trained: dict, peft: PeftConfig):
    """The full tree: `base` with the trained parameters put back."""
    if peft.method == "none":
        return trained
    flat = dict(traverse_util.flatten_dict(base))
    for path, value in traverse_util.flatten_dict(trained).items():
        if path not in flat:
            raise UserError(f"saved parameter {'/'.join(path)} is not part of this model")
        flat[path] = value
    return traverse_util.unflatten_dict(flat)


def fingerprint(params, peft: PeftConfig) -> str | None:
    """SHA-256 of the frozen parameters (names, shapes and bytes): the base a PEFT checkpoint belongs to."""
    if peft.method == "none":
        return None
    digest = hashlib.sha256()
    for path, value in sorted(traverse_util.flatten_dict(params).items()):
        if not peft.trains(path):
            value = np.ascontiguousarray(np.asarray(value))
            digest.update("/".join(path).encode() + str(value.shape).encode() + value.tobytes())
    return digest.hexdigest()


def count(params, peft: PeftConfig) -> tuple[int, int]:
    """(trained, total) parameter counts."""
    trained = total = 0
    for path, value in traverse_util.flatten_dict(params).items():
        size = int(np.prod(np.shape(value)))
        total += size
        trained += size if peft.trains(path) else 0
    return trained, total


def init_prompt_from_vocab(params: dict, seed: int) -> dict:
    """Prompt tuning: the virtual tokens start as the (pretrained) embeddings of random vocabulary tokens,
    which Lester et al. found to train better than random vectors."""
    embeddings = params["bert"]["embeddings"]
    if "prompt_embeddings" not in embeddings:
        return params
    table = "word_embeddings" if "word_embeddings" in embeddings else "tok_embeddings"  # ModernBERT's name
    words = np.asarray(embeddings[table]["embedding"])
    rows = np.random.default_rng(seed).choice(len(words), embeddings["prompt_embeddings"].shape[0], False)
    params = jax.tree.map(lambda x: x, params)  # a copy of the dict structure; arrays are not copied
    params["bert"]["embeddings"]["prompt_embeddings"] = words[rows].copy()
    return params


def merge_lora(params: dict, peft: PeftConfig) -> dict:
    """Folds every LoRA path into its Dense kernel (`kernel + A @ B * alpha / r`) and drops the LoRA leaves:
    a plain BERT tree that computes the same function (dropout aside), for export."""
    flat = traverse_util.flatten_dict(params)
    out = {k: v for k, v in flat.items() if not any(name.endswith("_lora") for name in k)}
    for path, a in flat.items():
        if path[-1] != "lora_a":
            continue
        module = path[:-2] + (path[-2].removesuffix("_lora"),)
        if path[-2] == "dense_lora":  # the Dense of attention/output, intermediate or output
            module = path[:-2] + ("dense",)
        b = flat[path[:-1] + ("lora_b",)]
        kernel = np.asarray(out[module + ("kernel",)], np.float32)
        delta = np.asarray(a, np.float32) @ np.asarray(b, np.float32) * peft.lora_scale
        out[module + ("kernel",)] = kernel + delta
    return traverse_util.unflatten_dict(out)
