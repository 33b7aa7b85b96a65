"""A ModernBERT encoder in Flax linen whose parameter tree mirrors Hugging Face names.

The tree is `embeddings/{tok_embeddings,norm}`, `layers_{i}/{attn_norm,attn/{Wqkv,Wo},mlp_norm,mlp/{Wi,Wo}}`
and `final_norm`, one-to-one with the PyTorch `ModernBertModel` state dict (`layers.3.attn.Wqkv.weight` <->
`layers_3/attn/Wqkv/kernel`, transposed); the first layer has no `attn_norm` (an identity in Hugging Face).
Parameters are always float32; `dtype` only sets the compute dtype.

What ModernBERT computes, and the facts about it that are easy to get wrong:

* Pre-norm blocks: `x + attn(attn_norm(x))`, then `x + mlp(mlp_norm(x))`, and `final_norm` at the end. The
  norms are LayerNorms whose bias exists only with `norm_bias`; every Dense has a bias only with
  `attention_bias` / `mlp_bias`.
* Positions enter only as rotary embeddings of the queries and keys (no position table): `global_rope_theta`
  in the global (`"full_attention"`) layers, `local_rope_theta` in the local (`"sliding_attention"`) ones.
  Hugging Face rounds the cos/sin tables to the compute dtype and rotates in float32; so does this module.
* Local layers attend within a window: a query at `i` sees the keys at `j` with
  `|i - j| <= local_attention // 2` (Hugging Face's eager and SDPA masks; its config calls that half-window
  `sliding_window`). Which layers are local is `layer_types`; configs without it have every
  `global_attn_every_n_layers`-th layer global, counting from layer 0.
* The feed-forward is gated: `Wi` projects to `2 * intermediate_size`, whose first half goes through
  `hidden_activation` and multiplies the second half, before `Wo`.
* Dropout: `embedding_dropout` after the embedding norm, `attention_dropout` both on the attention
  probabilities and after `Wo`, `mlp_dropout` before the feed-forward `Wo`. There is no BERT-style hidden
  dropout; `hidden_dropout_prob` reads `embedding_dropout`.
* There are no token types (`token_type_ids` is accepted and ignored) and no pooler with parameters. The
  encoder's pooled output is the parameter-free pooling of `ModernBertForSequenceClassification`
  (`classifier_pooling`: the first position, or the mean over real tokens), which `sequence_head` reads.

Attention: `"xla"` (the default) is `jaxft.models.bert.softmax_attention` with a boolean mask (key padding,
and the window in local layers). `"cudnn"` runs the global layers through the fused cuDNN kernel
(`jax.nn.dot_product_attention`, right-padded inputs, no attention dropout: as `BertEncoder`'s) and the
local layers through the explicit softmax, because cuDNN's sliding window is causal only (left window);
`jax.nn.dot_product_attention`'s `local_window_size=(w, w)` is the same window, tested equal on its XLA path.

Methods that add layers or inputs are applied from outside by a method interceptor, as for BERT
(`jaxft.models.peft`): `ModernBertEncoder.dense_targets` names the Dense layers. `Wqkv` is one fused Dense,
so `query`, `key` and `value` are not separate layers here: the target `qkv` adapts the fused projection
(all three at once), next to `attention_output` (`attn/Wo`), `intermediate` (`mlp/Wi`) and `output`
(`mlp/Wo`). `residual_branch` hooks each sublayer's output where it joins the residual stream (attention
after `Wo` and its dropout, the feed-forward after its `Wo`). Prefix tuning is supported: the extra keys
are not rotated (as a key at position 0 is not; the prefix keys are free parameters) and every query
attends to them, in local layers too. `first_token_only` (callers that read only the pooled output) computes
the last layer at the first position alone when `classifier_pooling` is "cls", as `BertEncoder`'s does: its
keys and values still come from every position, its queries, attention, `Wo`, feed-forward and final norm
only from the first (with "mean" pooling every position is computed).
"""

import dataclasses
import functools
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxft.errors import UserError
from jaxft.models import matmul
from jaxft.models.bert import gelu, softmax_attention
from jaxft.models.dropout import Dropout

_ACTIVATIONS = {  # Hugging Face ACT2FN names; "gelu" is the exact erf form, the other two the tanh one
    "gelu": gelu,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
_ATTENTION_IMPLS = (None, "xla", "cudnn")
_LAYER_TYPES = ("full_attention", "sliding_attention")
_POOLINGS = ("cls", "mean")
_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
# The sizes and the bias switches: together they decide which parameters exist and their shapes.
SHAPE_FIELDS = (*_SIZES, "norm_bias", "attention_bias", "mlp_bias", "classifier_bias")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
    """Architecture hyperparameters, with the names and defaults of Hugging Face `ModernBertConfig`.

    `layer_types` None is filled from `global_attn_every_n_layers`, as Hugging Face does; the rotary bases
    have the names of the older configs (`global_rope_theta`, `local_rope_theta`), which `from_dict` also
    reads from the newer `rope_parameters`.
    """

    model_type: ClassVar[str] = "modernbert"

    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    initializer_cutoff_factor: float | None = 2.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    pad_token_id: int | None = 50283
    attention_bias: bool = False
    attention_dropout: float = 0.0
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    global_attn_every_n_layers: int = 3
    layer_types: tuple[str, ...] | None = None
    local_attention: int = 128
    embedding_dropout: float = 0.0
    mlp_bias: bool = False
    mlp_dropout: float = 0.0
    classifier_pooling: str = "cls"
    classifier_dropout: float = 0.0
    classifier_bias: bool = False
    classifier_activation: str = "gelu"

    def __post_init__(self):
        for name in (*_SIZES, "max_position_embeddings", "global_attn_every_n_layers", "local_attention"):
            value = getattr(self, name)
            if not _is_positive_int(value):
                raise UserError(f"{name}={value!r} must be a positive integer")
        for name in ("attention_dropout", "embedding_dropout", "mlp_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                raise UserError(f"{name}={value!r} must be a number in [0, 1)")
        positive = ("norm_eps", "initializer_range", "global_rope_theta", "local_rope_theta")
        for name in (*positive, *(("initializer_cutoff_factor",) if self.initializer_cutoff_factor else ())):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < math.inf:
                raise UserError(f"{name}={value!r} must be a positive finite number")
        for name in ("norm_bias", "attention_bias", "mlp_bias", "classifier_bias"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name}={getattr(self, name)!r} must be true or false")
        pad = self.pad_token_id
        if pad is not None and (
            not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad < self.vocab_size
        ):
            raise UserError(f"pad_token_id={pad!r} must be a token id below vocab_size={self.vocab_size}")
        for name in ("hidden_activation", "classifier_activation"):
            if getattr(self, name) not in _ACTIVATIONS:
                raise UserError(
                    f"{name} {getattr(self, name)!r} is not supported; use one of {sorted(_ACTIVATIONS)}"
                )
        if self.classifier_pooling not in _POOLINGS:
            raise UserError(f"classifier_pooling {self.classifier_pooling!r} is not one of {_POOLINGS}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.head_dim % 2:
            raise UserError(f"the head size {self.head_dim} must be even: rotary embeddings rotate pairs")
        if self.layer_types is None:
            every = self.global_attn_every_n_layers
            types = tuple(_LAYER_TYPES[bool(i % every)] for i in range(self.num_hidden_layers))
            object.__setattr__(self, "layer_types", types)
        elif not isinstance(self.layer_types, tuple):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= set(_LAYER_TYPES):
            raise UserError(
                f"layer_types={list(self.layer_types)!r} must name one of {_LAYER_TYPES} for each of the "
                f"{self.num_hidden_layers} layers"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def sliding_window(self) -> int:
        """The half-window of local layers: a query sees the keys at most this many positions away."""
        return self.local_attention // 2

    @property
    def hidden_dropout_prob(self) -> float:
        """The dropout on the embedding output (`embedding_dropout`): ModernBERT has no other hidden one."""
        return self.embedding_dropout

    @property
    def qa_dropout(self) -> float:
        """The dropout before the question-answering projection: `classifier_dropout`, as transformers."""
        return self.classifier_dropout

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings

    @property
    def attention_probs_dropout_prob(self) -> float:
        return self.attention_dropout

    @classmethod
    def from_dict(cls, d: dict) -> "ModernBertConfig":
        """Builds a config from a Hugging Face `config.json` dict, of the older or the newer format.

        Keys that are not fields are ignored; missing fields take the Hugging Face defaults. The rotary
        bases come from `rope_parameters` (`full_attention` -> `global_rope_theta`, `sliding_attention` ->
        `local_rope_theta`) when it holds them, else from the older keys.

        Args:
            d: the parsed `config.json`.

        Returns:
            The config.

        Raises:
            UserError: the config asks for something this encoder does not implement (a scaled rotary
                embedding, an unknown activation or pooling).
        """
        if d.get("rope_scaling"):
            raise UserError(
                f"rope_scaling {d['rope_scaling']!r} is not supported; only plain rotary embeddings"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        rope = d.get("rope_parameters") or {}
        for kind, field in (
            ("full_attention", "global_rope_theta"),
            ("sliding_attention", "local_rope_theta"),
        ):
            params = rope.get(kind) or {}
            if params.get("rope_type", "default") != "default":
                raise UserError(
                    f"rope_parameters.{kind}.rope_type {params['rope_type']!r} is not supported; "
                    "only 'default'"
                )
            if "rope_theta" in params:
                values[field] = params["rope_theta"]
        if isinstance(values.get("layer_types"), list):
            values["layer_types"] = tuple(values["layer_types"])
        return cls(**values)

    def to_hf_dict(self) -> dict:
        """A dict that `transformers.ModernBertConfig(**d)` accepts; the caller adds `architectures`."""
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        d["rope_parameters"] = {
            "full_attention": {"rope_type": "default", "rope_theta": self.global_rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": self.local_rope_theta},
        }
        return {"model_type": self.model_type, **d}


def _init(config: ModernBertConfig, std: float):
    """Hugging Face's initialiser: normal, cut at `initializer_cutoff_factor` (3 when None) deviations."""
    cutoff = config.initializer_cutoff_factor or 3.0
    return nn.initializers.truncated_normal(std, lower=-cutoff, upper=cutoff)


def _in_init(config):  # Wqkv, Wi, the embeddings
    return _init(config, config.initializer_range)


def _out_init(config):  # the projections back into the residual stream, and the head's dense
    return _init(config, config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers))


def _layer_norm(config: ModernBertConfig, dtype: Any, name: str) -> nn.LayerNorm:
    # The two-pass variance matches PyTorch; the fast E[x^2] - E[x]^2 form costs parity at 1e-5.
    return nn.LayerNorm(
        epsilon=config.norm_eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_bias=config.norm_bias,
        use_fast_variance=False,
        name=name,
    )


def rotary_tables(theta: float, length: int, head_dim: int, dtype: Any):
    """The rotary `(cos, sin)` tables `[length, head_dim]` for positions `0..length-1`, rounded to `dtype`
    and returned as float32 (Hugging Face rounds them to the compute dtype, then rotates in float32)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return tuple(f(angles).astype(dtype).astype(jnp.float32) for f in (jnp.cos, jnp.sin))


def apply_rotary(x, cos, sin):
    """`x` `[B, L, N, D]` rotated by the tables `[L, D]`: `x cos + rotate_half(x) sin`, in float32."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos[None, :, None, :] + rotated * sin[None, :, None, :]).astype(x.dtype)


class ModernBertEmbeddings(nn.Module):
    """Token embeddings, LayerNorm and dropout (no positions: they are rotary, in the attention).

    `extend_inputs` may insert vectors after the first token: the output is then longer than the input by as
    many positions (they go through the norm as tokens do, as Hugging Face's `inputs_embeds` would).
    """

    config: ModernBertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, deterministic: bool):
        cfg = self.config
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=_in_init(cfg),
            param_dtype=jnp.float32,
            name="tok_embeddings",
        )
        x = _layer_norm(cfg, self.dtype, "norm")(self.extend_inputs(embed(input_ids)))
        return Dropout(cfg.embedding_dropout)(x, deterministic=deterministic)

    def extend_inputs(self, words):
        """The token embeddings `[B, L, H]` as the layers read them: these, unchanged.

        A hook for a method interceptor (`flax.linen.intercept_methods`): vectors it inserts go right after
        the first position, and the encoder widens the attention mask and narrows its output to match.
        """
        return words


class ModernBertAttention(nn.Module):
    """Rotary multi-head self-attention with the fused `Wqkv` projection and `Wo` (`attn`).

    Attributes:
        sliding: a local layer (`local_rope_theta`, the window mask it is given); else global.
    """

    config: ModernBertConfig
    dtype: Any = jnp.float32
    attention_impl: str | None = None
    sliding: bool = False

    @nn.compact
    def __call__(self, hidden, mask, rotary, deterministic: bool, first_only: bool = False):
        """`mask`: boolean `[B, 1, 1 or L, L]`, True where a query may see a key; `rotary`: (cos, sin).

        With `first_only` the output is `[B, 1, H]`: the first position's query alone attends to every key.
        """
        cfg = self.config
        batch, length = hidden.shape[:2]
        heads, head_dim = cfg.num_attention_heads, cfg.head_dim
        qkv = matmul.dense(
            3 * cfg.hidden_size, self.dtype, _in_init(cfg), "Wqkv", use_bias=cfg.attention_bias
        )
        qkv = qkv(hidden).reshape(batch, length, 3, heads, head_dim)  # Hugging Face's [3, N, D] order
        k = apply_rotary(qkv[:, :, 1], *rotary)
        if first_only:
            q = apply_rotary(qkv[:, :1, 0], *(table[:1] for table in rotary))
            mask = mask[:, :, :1]  # the first query's row (a global mask has only that one)
        else:
            q = apply_rotary(qkv[:, :, 0], *rotary)
        queries = q.shape[1]
        k, v = self.extend_keys_values(k, qkv[:, :, 2])
        extra = k.shape[1] - mask.shape[-1]
        if extra:  # keys put before the real ones, unrotated: attended to by every query
            mask = jnp.concatenate([jnp.ones((*mask.shape[:-1], extra), bool), mask], axis=-1)
        rate = cfg.attention_dropout
        apply_dropout = not deterministic and rate > 0.0
        # cuDNN's window is causal only and it takes no dropout RNG: local layers and dropout go through XLA,
        # as does one query (not worth a fused kernel).
        if self.attention_impl == "cudnn" and not self.sliding and not apply_dropout and not first_only:
            # A global mask is key padding alone ([B, 1, 1, S]); a fully padded row keeps length 1 (finite).
            lengths = jnp.maximum(mask[:, 0, 0].sum(axis=-1), 1).astype(jnp.int32)
            out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")
        else:
            dropout_args = (
                {"dropout_rate": rate, "dropout_rng": self.make_rng("dropout")} if apply_dropout else {}
            )
            out = softmax_attention(q, k, v, mask, **dropout_args)
        out = matmul.dense(cfg.hidden_size, self.dtype, _out_init(cfg), "Wo", use_bias=cfg.attention_bias)(
            out.reshape(batch, queries, cfg.hidden_size)
        )
        return self.residual_branch(Dropout(rate)(out, deterministic=deterministic))

    def plain_keys_values(self) -> bool:
        """Whether keys and values are the projections of the input alone: True.

        A hook for a method interceptor; this attention has no shortcut that skips projecting them, so the
        answer changes nothing here.
        """
        return True

    def extend_keys_values(self, keys, values):
        """The keys (rotated) and values `[B, S, N, D]` attended to: these, unchanged.

        A hook for a method interceptor (`flax.linen.intercept_methods`): keys and values it adds go before
        the real ones, are not rotated, and every query may attend to them (in local layers too).
        """
        return keys, values

    def residual_branch(self, out):
        """The attention output as it is added to the residual: `out`, unchanged (a hook, as BERT's)."""
        return out


class ModernBertMLP(nn.Module):
    """The gated feed-forward `Wo(dropout(act(input) * gate))`, `input, gate = Wi(x)` halves (`mlp`)."""

    config: ModernBertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden, deterministic: bool):
        cfg = self.config
        wi = matmul.dense(2 * cfg.intermediate_size, self.dtype, _in_init(cfg), "Wi", use_bias=cfg.mlp_bias)
        inputs, gate = jnp.split(wi(hidden), 2, axis=-1)
        x = Dropout(cfg.mlp_dropout)(
            _ACTIVATIONS[cfg.hidden_activation](inputs) * gate, deterministic=deterministic
        )
        out = matmul.dense(cfg.hidden_size, self.dtype, _out_init(cfg), "Wo", use_bias=cfg.mlp_bias)(x)
        return self.residual_branch(out)

    def residual_branch(self, out):
        """The feed-forward output as it is added to the residual: `out`, unchanged (a hook, as BERT's)."""
        return out


class ModernBertEncoderLayer(nn.Module):
    """One pre-norm block: `x + attn(attn_norm(x))`, then `x + mlp(mlp_norm(x))`.

    Attributes:
        first: layer 0, whose `attn_norm` is the identity (the embeddings end in a norm).
        sliding: a local layer.
    """

    config: ModernBertConfig
    dtype: Any = jnp.float32
    attention_impl: str | None = None
    first: bool = False
    sliding: bool = False

    @nn.compact
    def __call__(self, hidden, mask, rotary, deterministic: bool, first_only: bool = False):
        """`[B, L, H]` -> `[B, L, H]`, or `[B, 1, H]` (the first position) with `first_only`."""
        cfg = self.config
        x = hidden if self.first else _layer_norm(cfg, self.dtype, "attn_norm")(hidden)
        attn = ModernBertAttention(cfg, self.dtype, self.attention_impl, self.sliding, name="attn")
        hidden = (hidden[:, :1] if first_only else hidden) + attn(x, mask, rotary, deterministic, first_only)
        mlp = ModernBertMLP(cfg, self.dtype, name="mlp")
        return hidden + mlp(_layer_norm(cfg, self.dtype, "mlp_norm")(hidden), deterministic)


def pool(config: ModernBertConfig, hidden, attention_mask):
    """`classifier_pooling` of `[B, L, H]`: the first position, or the mean over real tokens (float32 sums).

    A fully padded row (evaluation pads the last batch with them) pools to zeros instead of 0 / 0.
    """
    if config.classifier_pooling == "cls":
        return hidden[:, 0]
    weights = attention_mask.astype(jnp.float32)[:, :, None]
    total = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
    return (total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)).astype(hidden.dtype)


class ModernBertEncoder(nn.Module):
    """The ModernBERT encoder; Hugging Face `ModernBertModel` with Flax parameter names.

    Attributes:
        config: the architecture.
        dtype: compute dtype (`jnp.bfloat16` for mixed precision); parameters are float32 regardless.
        attention_impl: None or `"xla"` for the portable path, `"cudnn"` for the fused GPU kernel in the
            global layers (see the module docstring; it raises on CPU).
        remat: recompute each layer's activations in the backward pass to save memory.
        add_pooling_layer: ignored: ModernBERT has no pooler with parameters, and the parameter-free pooling
            is always returned.
        dense_targets: (class attribute) the Dense layers that method interceptors may adapt, by the names
            configs use, as paths below this module (`*`: any one name). `qkv` is the fused query, key and
            value projection; `query`, `key` and `value` are not separate layers in this family.
    """

    config: ModernBertConfig
    dtype: Any = jnp.float32
    attention_impl: str | None = None
    remat: bool = False
    add_pooling_layer: bool = False
    dense_targets: ClassVar[dict[str, str]] = {
        "qkv": "layers_*/attn/Wqkv",
        "attention_output": "layers_*/attn/Wo",
        "intermediate": "layers_*/mlp/Wi",
        "output": "layers_*/mlp/Wo",
    }

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        *,
        deterministic: bool = True,
        first_token_only: bool = False,
    ):
        """Encodes a batch of token ids.

        Args:
            input_ids: `[B, L]` int token ids.
            attention_mask: `[B, L]` with 1 for real tokens and 0 for padding (None: no padding).
            token_type_ids: ignored (ModernBERT has no token types).
            deterministic: disables dropout; when False a `"dropout"` RNG must be provided.
            first_token_only: with `classifier_pooling` "cls", compute the last layer at the first position
                alone (see the module docstring): the same pooled output with less work, sequence_output
                `[B, 1, H]`. In training the last layer's dropout masks are drawn for the positions computed,
                so they differ from a full computation's (same distribution). Ignored with "mean" pooling.

        Returns:
            `(sequence_output [B, L, H], pooled_output [B, H])`, both in `dtype`; pooled_output is the
            `classifier_pooling` of the sequence output (`pool`).
        """
        del token_type_ids
        first_only = first_token_only and self.config.classifier_pooling == "cls"
        if self.attention_impl not in _ATTENTION_IMPLS:
            raise UserError(f"attention_impl {self.attention_impl!r} is not one of {_ATTENTION_IMPLS}")
        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        hidden = ModernBertEmbeddings(cfg, self.dtype, name="embeddings")(input_ids, deterministic)
        # Adversarial training perturbs the embedding output through this (a no-op unless the caller passes
        # a "perturbations" collection; see jaxft.strategies.adversarial).
        if not self.is_initializing():  # init must not create the collection: its shape is per batch
            hidden = self.perturb("embedding_output", hidden)
        extra = hidden.shape[1] - input_ids.shape[1]  # vectors `extend_inputs` put after the first
        mask = attention_mask
        if extra:  # attended to like real tokens, at positions 1..extra
            ones = jnp.ones((mask.shape[0], extra), mask.dtype)
            mask = jnp.concatenate([mask[:, :1], ones, mask[:, 1:]], axis=1)
        length = hidden.shape[1]
        keys = mask.astype(bool)[:, None, None, :]
        positions = jnp.arange(length)
        window = jnp.abs(positions[:, None] - positions[None, :]) <= cfg.sliding_window
        masks = {"full_attention": keys, "sliding_attention": keys & window[None, None]}
        thetas = {"full_attention": cfg.global_rope_theta, "sliding_attention": cfg.local_rope_theta}
        rotary = {t: rotary_tables(thetas[t], length, cfg.head_dim, self.dtype) for t in set(cfg.layer_types)}
        # `deterministic` and `first_only` are arguments 4 and 5 counting `self`: static, so remat keeps the
        # Python branches on them.
        layer_cls = (
            nn.remat(ModernBertEncoderLayer, static_argnums=(4, 5)) if self.remat else ModernBertEncoderLayer
        )
        last = len(cfg.layer_types) - 1
        for i, kind in enumerate(cfg.layer_types):
            sliding = kind == "sliding_attention"
            layer = layer_cls(cfg, self.dtype, self.attention_impl, i == 0, sliding, name=f"layers_{i}")
            hidden = layer(hidden, masks[kind], rotary[kind], deterministic, first_only and i == last)
        hidden = _layer_norm(cfg, self.dtype, "final_norm")(hidden)
        if extra and not first_only:  # position i of the output is input token i again
            hidden = jnp.concatenate([hidden[:, :1], hidden[:, 1 + extra :]], axis=1)
        return hidden, pool(cfg, hidden, attention_mask)


class ModernBertPredictionHead(nn.Module):
    """`norm(act(dense(x)))` (Hugging Face `ModernBertPredictionHead`, the `head` of the task models)."""

    config: ModernBertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dense = matmul.dense(
            cfg.hidden_size, self.dtype, _out_init(cfg), "dense", use_bias=cfg.classifier_bias
        )
        return _layer_norm(cfg, self.dtype, "norm")(_ACTIVATIONS[cfg.classifier_activation](dense(x)))


def sequence_head(
    config: ModernBertConfig,
    hidden,
    pooled,
    *,
    num_labels: int,
    dtype: Any,
    classifier_dropout: float | None,
    deterministic: bool,
    attention_mask=None,
):
    """`ModernBertForSequenceClassification`'s head: pooled -> `head` -> dropout -> `classifier`.

    Call it inside a parent's `@nn.compact` method: its submodules `head` (`dense`, `norm`) and `classifier`
    become the parent's children, Hugging Face's top-level names.

    Args:
        config: the architecture (`classifier_*` fields).
        hidden: `[B, L, H]` sequence output of `ModernBertEncoder`.
        pooled: `[B, H]` its pooled output (the `classifier_pooling`); None pools `hidden` here.
        num_labels: number of logits.
        dtype: compute dtype.
        classifier_dropout: dropout before `classifier`; None takes `config.classifier_dropout`.
        deterministic: disables dropout.
        attention_mask: `[B, L]`, read only when `pooled` is None and the pooling is "mean" (None: no
            padding).

    Returns:
        `[B, num_labels]` float32 logits.
    """
    if pooled is None:
        pooled = pool(
            config, hidden, jnp.ones(hidden.shape[:2]) if attention_mask is None else attention_mask
        )
    x = ModernBertPredictionHead(config, dtype, name="head")(pooled)
    rate = config.classifier_dropout if classifier_dropout is None else classifier_dropout
    x = Dropout(rate)(x, deterministic=deterministic)
    classifier = matmul.dense(num_labels, dtype, _init(config, config.hidden_size**-0.5), "classifier")
    return classifier(x).astype(jnp.float32)


class TiedDecoder(nn.Module):
    """`ModernBertForMaskedLM`'s `decoder`: the word embeddings (tied) and a bias per vocabulary token,
    projected for `token_ids` only (the logits of every other token would be thrown away), or for the whole
    vocabulary when `token_ids` is None."""

    vocab_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, word_embeddings, token_ids: tuple[int, ...] | None):
        bias = self.param("bias", nn.initializers.zeros, (self.vocab_size,), jnp.float32)
        if token_ids is not None:
            ids = jnp.asarray(token_ids, jnp.int32)
            word_embeddings, bias = word_embeddings[ids], bias[ids]
        return x @ word_embeddings.astype(self.dtype).T + bias.astype(self.dtype)


def mlm_head(config: ModernBertConfig, hidden, embeddings: dict, token_ids: tuple[int, ...] | None, dtype):
    """`ModernBertForMaskedLM`'s head over `hidden` `[..., H]`: `head`, then the tied `decoder`, for
    `token_ids` alone (None: the whole vocabulary); `embeddings` is the encoder's `embeddings` parameter
    group. Call inside a parent's compact `__call__`. (A checkpoint with `decoder_bias=false` gets a bias
    that starts at zero.)"""
    x = ModernBertPredictionHead(config, dtype, name="head")(hidden)
    decoder = TiedDecoder(config.vocab_size, dtype, name="decoder")
    return decoder(x, embeddings["tok_embeddings"]["embedding"], token_ids)


def token_head(config: ModernBertConfig, hidden, *, num_labels, dtype, rate, deterministic, name):
    """The head of `ModernBertForTokenClassification` and `ModernBertForQuestionAnswering` at every position:
    `head` -> dropout (`rate`, None: `config.classifier_dropout`) -> the projection `name`. Call inside a
    parent's compact `__call__`; float32 logits."""
    x = ModernBertPredictionHead(config, dtype, name="head")(hidden)
    x = Dropout(config.classifier_dropout if rate is None else rate)(x, deterministic=deterministic)
    projection = matmul.dense(num_labels, dtype, _init(config, config.hidden_size**-0.5), name)
    return projection(x).astype(jnp.float32)


# ---- checkpoint conversion ------------------------------------------------------------------------------
_PREFIX = "model"  # Hugging Face's base_model_prefix: the encoder's names in the task models
_ENCODER_ROOTS = ("embeddings", "layers", "final_norm")
_HEAD_ROOTS = ("head", "classifier", "qa_outputs")


def _leaf_name(module: str, torch_leaf: str) -> str | None:
    if module.endswith("norm"):  # norm, attn_norm, mlp_norm, final_norm, head.norm
        return {"weight": "scale", "bias": "bias"}.get(torch_leaf)
    if module == "tok_embeddings":
        return "embedding" if torch_leaf == "weight" else None
    return {"weight": "kernel", "bias": "bias"}.get(torch_leaf)


def hf_to_flax(state_dict: dict[str, np.ndarray], *, mlm_head: bool = False) -> tuple[dict, list[str]]:
    """Converts a Hugging Face ModernBERT state dict to a nested Flax parameter tree.

    Accepts `ModernBertModel` names (`layers.0...`) and task-model names (`model.layers.0...`, `head.*`,
    `classifier.*`, `qa_outputs.*`). A masked-LM checkpoint's `head.*` is kept (it is the sequence head's
    `head`, as Hugging Face loads it); its `decoder.bias` too with `mlm_head` (the decoder's weight is the
    word embedding matrix, tied).

    Args:
        state_dict: tensor name to array (NumPy or anything `np.asarray` takes).
        mlm_head: keep the masked-LM decoder's bias, as `decoder/bias` (for `mlm_head`).

    Returns:
        `(params, ignored_names)`: `params` is `{"bert": {...}}` plus the head groups the checkpoint has,
        float32; `ignored_names` lists tensors that belong to none of them.
    """
    flat, ignored = {}, []
    for name, value in state_dict.items():
        if mlm_head and name == "decoder.bias":
            flat[("decoder", "bias")] = np.asarray(value, dtype=np.float32)
            continue
        parts = name.split(".")
        if parts[0] == _PREFIX:
            parts = parts[1:]
        if len(parts) < 2 or parts[0] not in (*_ENCODER_ROOTS, *_HEAD_ROOTS):
            ignored.append(name)
            continue
        leaf = _leaf_name(parts[-2], parts[-1])
        if leaf is None:
            ignored.append(name)
            continue
        # `layers.3` -> `layers_3`.
        modules = "/".join(parts[:-1]).replace("layers/", "layers_", 1).split("/")
        root = () if parts[0] in _HEAD_ROOTS else ("bert",)
        array = np.asarray(value, dtype=np.float32)
        flat[(*root, *modules, leaf)] = array.T if leaf == "kernel" else array
    return traverse_util.unflatten_dict(flat), ignored


def flax_to_hf(params: dict) -> dict[str, np.ndarray]:
    """Converts `{"bert": ..., "head": ..., "classifier": ...}` back to Hugging Face task-model names.

    The inverse of `hf_to_flax`: `model.`-prefixed encoder names, kernels transposed back, float32 and
    contiguous (ready for `safetensors.numpy.save_file`).

    Args:
        params: a parameter tree with top-level keys `bert` and optionally `head`, `classifier`, `qa_outputs`.

    Returns:
        Hugging Face tensor name to array.

    Raises:
        UserError: a top-level key this family's checkpoints have no name for.
    """
    unknown = sorted(set(params) - {"bert", "decoder", *_HEAD_ROOTS})
    if unknown:
        raise UserError(f"cannot export parameter group {unknown[0]!r}: it has no ModernBERT checkpoint name")
    out = {}
    for path, value in traverse_util.flatten_dict(params).items():
        *modules, leaf = path
        modules = [_PREFIX if m == "bert" else m.replace("layers_", "layers.", 1) for m in modules]
        array = np.asarray(value, dtype=np.float32)
        if leaf == "kernel":
            array = array.T
        torch_leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
        out[".".join([*modules, torch_leaf])] = np.ascontiguousarray(array)
    return out
