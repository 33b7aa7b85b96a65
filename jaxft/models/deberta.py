"""A DeBERTa-v2/v3 encoder in Flax linen whose parameter tree mirrors Hugging Face names.

The tree is `embeddings/...` and `encoder/{layer_{i},rel_embeddings,LayerNorm,conv}/...`, one-to-one with the
PyTorch `DebertaV2Model` state dict (`encoder.layer.3.attention.self.query_proj.weight` <->
`encoder/layer_3/attention/self/query_proj/kernel`, transposed), so `hf_to_flax` maps checkpoints by renaming
and transposing alone. Parameters are always float32; `dtype` only sets the compute dtype.

What differs from BERT:

* Disentangled attention. Besides the content score `q_i . k_j`, each pair gets `q_i . pk[d(i, j)]`
  ("c2p") and `k_j . pq[d(i, j)]` ("p2c"), the position keys and queries being projections of one table of
  relative-position embeddings (`encoder/rel_embeddings`, optionally layer-normalised, shared by every layer),
  through the content projections (`share_att_key`, DeBERTa-v3) or their own `pos_key_proj` /
  `pos_query_proj`. `d(i, j)` is `i - j`, log-bucketed beyond `position_buckets // 2`
  (`make_log_bucket_position`), shifted by the table's half size and clamped to it. All scores are divided by
  `sqrt(head_dim * (1 + len(pos_att_type)))`. Hugging Face computes the `d` arrays at run time; here they are
  NumPy constants of the (static) sequence length.
* Absolute positions (`position_biased_input`, False in v3) and token types (`type_vocab_size` 0 in v3) are
  optional, the word embeddings may be narrower than the layers (`embedding_size`, then `embed_proj`), and
  the embedding output is zeroed at padding.
* The optional `ConvLayer` of v2-xlarge/xxlarge (`conv_kernel_size` > 0, odd sizes only): a 1-D convolution
  of the embedding output, added to the first layer's output before a LayerNorm.
* Hugging Face masks attention pairwise (a padded query attends to nothing, so its probabilities are
  uniform); here padding is masked by key alone. The outputs at real positions are the same; those at
  padded positions are not, and no caller reads them.
* No pooler in the base model: the sequence head (`sequence_head`, Hugging Face `ContextPooler` then
  `classifier`) reads the first position.

Attention takes the XLA path for every `attention_impl`: the relative-position scores are a dense per-pair
bias that the fused cuDNN kernel is not given here. `first_token_only` (callers that read only the first
position: the sequence head's `ContextPooler`) computes the last layer at the first position alone, as
`BertEncoder`'s does: its keys, values and the keys' position-to-content scores still come from every
position; its query, content-to-position scores, output projection and feed-forward only from the first.

PEFT hooks (see `jaxft.models.peft`): `dense_targets`, `extend_inputs`, `residual_branch`. With
`share_att_key` the query and key projections also project the relative-position table, so LoRA on `query`
or `key` adapts those terms too, as it adapts the same PyTorch Linear layers; the table's rows go through the
same Dense call as the tokens' (one call per layer, as the interceptor requires). Prefix tuning is not
supported: the relative-position scores are defined per key position, and keys put before the sequence
have none, so the self-attention module offers no `extend_keys_values` / `plain_keys_values`.
"""

import dataclasses
import functools
import math
import re
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxft.errors import UserError
from jaxft.models.bert import _ACTIVATIONS as _BERT_ACTIVATIONS
from jaxft.models.bert import BertAddNorm, BertIntermediate, _dense, _layer_norm, weight_init
from jaxft.models.dropout import Dropout, dropout

_ACTIVATIONS = {**_BERT_ACTIVATIONS, "tanh": jnp.tanh}
_ATTENTION_IMPLS = (None, "xla", "cudnn")
_POS_ATT_TYPES = ("c2p", "p2c")
SHAPE_FIELDS = (  # the fields that decide which parameters exist and their shapes
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "embedding_size",
    "position_biased_input",
    "relative_attention",
    "max_relative_positions",
    "position_buckets",
    "pos_att_type",
    "share_att_key",
    "norm_rel_ebd",
    "conv_kernel_size",
    "conv_groups",
)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class DebertaV2Config:
    """Architecture hyperparameters, with the names and defaults of Hugging Face `DebertaV2Config`.

    `position_buckets`, `share_att_key`, `norm_rel_ebd`, `embedding_size`, `cls_dropout` and the `conv_*`
    fields are not declared by Hugging Face's class but read from its attributes with these defaults
    (`embedding_size` None: `hidden_size`). `pos_att_type` is a tuple here (Hugging Face: a list, or a
    `"p2c|c2p"` string that `from_dict` splits).
    """

    model_type: ClassVar[str] = "deberta-v2"

    vocab_size: int = 128100
    hidden_size: int = 1536
    num_hidden_layers: int = 24
    num_attention_heads: int = 24
    intermediate_size: int = 6144
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-7
    relative_attention: bool = False
    max_relative_positions: int = -1
    pad_token_id: int | None = 0
    position_biased_input: bool = True
    pos_att_type: tuple[str, ...] = ()
    pooler_dropout: float = 0.0
    pooler_hidden_act: str = "gelu"
    position_buckets: int = -1
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    embedding_size: int | None = None
    cls_dropout: float | None = None
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"

    def __post_init__(self):
        # Read back from a hand-editable config.json: refuse what would give NaN or a traceback in one line.
        for name in SHAPE_FIELDS[:6]:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise UserError(f"{name}={value!r} must be a positive integer")
        for name in ("type_vocab_size", "conv_kernel_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise UserError(f"{name}={value!r} must be a non-negative integer")
        for name in ("max_relative_positions", "position_buckets"):
            if not _is_int(getattr(self, name)):
                raise UserError(f"{name}={getattr(self, name)!r} must be an integer (-1: not set)")
        if self.embedding_size is not None and (not _is_int(self.embedding_size) or self.embedding_size < 1):
            raise UserError(f"embedding_size={self.embedding_size!r} must be a positive integer")
        if not _is_int(self.conv_groups) or self.conv_groups < 1 or self.hidden_size % self.conv_groups:
            raise UserError(f"conv_groups={self.conv_groups!r} must be a positive divisor of hidden_size")
        for name in ("relative_attention", "position_biased_input", "share_att_key"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name}={getattr(self, name)!r} must be true or false")
        rates = ["hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout"]
        for name in rates + ([] if self.cls_dropout is None else ["cls_dropout"]):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                raise UserError(f"{name}={value!r} must be a number in [0, 1)")
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < math.inf:
                raise UserError(f"{name}={value!r} must be a positive finite number")
        pad = self.pad_token_id
        if pad is not None and (not _is_int(pad) or not 0 <= pad < self.vocab_size):
            raise UserError(f"pad_token_id={pad!r} must be a token id below vocab_size={self.vocab_size}")
        for name in ("hidden_act", "pooler_hidden_act", "conv_act"):
            if getattr(self, name) not in _ACTIVATIONS:
                raise UserError(
                    f"{name} {getattr(self, name)!r} is not supported; use one of {sorted(_ACTIVATIONS)}"
                )
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )
        types = self.pos_att_type
        if (
            not isinstance(types, tuple)
            or len(set(types)) != len(types)
            or not set(types) <= set(_POS_ATT_TYPES)
        ):
            raise UserError(f"pos_att_type {types!r} must be a tuple of distinct 'c2p' and 'p2c'")
        norms = [x.strip() for x in str(self.norm_rel_ebd).lower().split("|")]
        if not set(norms) <= {"none", "layer_norm"}:
            raise UserError(
                f"norm_rel_ebd {self.norm_rel_ebd!r} is not supported; use 'none' or 'layer_norm'"
            )
        if "layer_norm" in norms and not self.relative_attention:
            raise UserError(
                "norm_rel_ebd='layer_norm' needs relative_attention: there is no table to normalise"
            )
        if self.conv_kernel_size and self.conv_kernel_size % 2 == 0:
            # Padded by (k - 1) // 2 on both sides, an even kernel shortens the sequence by one.
            raise UserError(
                f"conv_kernel_size {self.conv_kernel_size} is even; only odd sizes keep the length"
            )
        if self.relative_attention and self.position_buckets > 0:
            if self.position_buckets < 2:
                raise UserError(f"position_buckets={self.position_buckets} must be at least 2 (or -1: none)")
            if self.relative_span_limit - 1 == self.position_buckets // 2:
                raise UserError(
                    f"max_relative_positions {self.relative_span_limit} is position_buckets // 2 + 1: "
                    "the log buckets divide by log(1)"
                )

    @property
    def relative_span_limit(self) -> int:
        """The largest relative distance the buckets resolve: `max_relative_positions`, or
        `max_position_embeddings` when that is not set (below 1)."""
        return (
            self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings
        )

    @property
    def position_table_half(self) -> int:
        """Half the rows of `rel_embeddings`: `position_buckets` if set, else `relative_span_limit`."""
        return self.position_buckets if self.position_buckets > 0 else self.relative_span_limit

    @property
    def layer_norm_rel_embeddings(self) -> bool:
        return "layer_norm" in [x.strip() for x in self.norm_rel_ebd.lower().split("|")]

    @property
    def max_positions(self) -> int:
        """The longest input: `max_position_embeddings` (the relative table reaches further in v3)."""
        return self.max_position_embeddings

    @classmethod
    def from_dict(cls, d: dict) -> "DebertaV2Config":
        """Builds a config from a Hugging Face `config.json` dict.

        Keys that are not fields (`architectures`, `legacy`, ...) are ignored and missing fields take the
        Hugging Face defaults.

        Args:
            d: the parsed `config.json`.

        Returns:
            The config.

        Raises:
            UserError: the config asks for something this encoder does not implement (an attention head size
                other than `hidden_size / num_attention_heads`, a pooler width other than `hidden_size`, an
                attention type other than c2p and p2c, an even convolution kernel) or holds a bad value.
        """
        heads = d.get("num_attention_heads", cls.num_attention_heads)
        hidden = d.get("hidden_size", cls.hidden_size)
        head_size = d.get("attention_head_size")
        if head_size is not None and _is_int(heads) and head_size * heads != hidden:
            raise UserError(f"attention_head_size {head_size} x {heads} heads is not hidden_size {hidden}")
        pooler = d.get("pooler_hidden_size")
        if pooler is not None and pooler != hidden:
            raise UserError(
                f"pooler_hidden_size {pooler} differs from hidden_size {hidden}; it must equal it"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        types = kwargs.get("pos_att_type")
        if types is None:
            kwargs["pos_att_type"] = ()
        elif isinstance(types, str):
            kwargs["pos_att_type"] = tuple(x.strip() for x in types.lower().split("|") if x.strip())
        elif isinstance(types, list | tuple):
            kwargs["pos_att_type"] = tuple(types)
        if kwargs.get("norm_rel_ebd") is None:
            kwargs.pop("norm_rel_ebd", None)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict:
        """A dict that `transformers.DebertaV2Config(**d)` accepts; the caller adds `architectures`."""
        d = dataclasses.asdict(self)
        d["pos_att_type"] = list(self.pos_att_type)
        for name in ("embedding_size", "cls_dropout"):  # absent means the Hugging Face default
            if d[name] is None:
                del d[name]
        return {"model_type": self.model_type, **d}


def make_log_bucket_position(relative: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """Hugging Face's `make_log_bucket_position` in NumPy float32: distances below `bucket_size // 2` kept,
    longer ones mapped logarithmically so that `max_position - 1` lands on `bucket_size - 1`.

    Args:
        relative: integer relative positions (query - key).
        bucket_size: `position_buckets`.
        max_position: `max_relative_positions` (or `max_position_embeddings`).

    Returns:
        The bucketed positions, int32, the shape of `relative`.
    """
    relative = np.asarray(relative, np.int64)
    mid = bucket_size // 2
    abs_pos = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative))
    ratio = np.float32(np.log(np.float32((max_position - 1) / mid)))
    with np.errstate(divide="ignore"):
        log_pos = np.ceil(np.log(abs_pos.astype(np.float32) / np.float32(mid)) / ratio * np.float32(mid - 1))
    log_pos = log_pos + np.float32(mid)
    return np.where(abs_pos <= mid, relative, log_pos * np.sign(relative)).astype(np.int32)


@functools.lru_cache(maxsize=32)
def relative_positions(length: int, position_buckets: int, max_position: int) -> np.ndarray:
    """`[L, L]` query-minus-key positions, log-bucketed when `position_buckets` > 0 (read-only)."""
    positions = np.arange(length)
    relative = positions[:, None] - positions[None, :]
    if position_buckets > 0 and max_position > 0:
        relative = make_log_bucket_position(relative, position_buckets, max_position)
    relative = relative.astype(np.int32)
    relative.flags.writeable = False
    return relative


def _gather_positions(scores, index: np.ndarray):
    """`scores[..., i, index[i, j]]` for `scores` `[B, N, L, P]` and a constant `index` `[L, L]`."""
    index = jnp.broadcast_to(jnp.asarray(index), (*scores.shape[:2], *index.shape))
    return jnp.take_along_axis(scores, index, axis=-1)


class DebertaV2Embeddings(nn.Module):
    """Word (+ position) (+ token-type) embeddings, the projection to `hidden_size` if narrower, LayerNorm
    and dropout.

    `extend_inputs` may insert vectors after the first word (with token type 0): the output is then longer
    than the input by as many positions.
    """

    config: DebertaV2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        cfg = self.config
        init = weight_init(cfg)
        width = cfg.embedding_size or cfg.hidden_size

        def embed(num, name):
            # Lookups and the sum stay float32; the projection or LayerNorm casts to the compute dtype.
            return nn.Embed(num, width, embedding_init=init, param_dtype=jnp.float32, name=name)

        x = self.extend_inputs(embed(cfg.vocab_size, "word_embeddings")(input_ids))
        extra = x.shape[1] - input_ids.shape[1]
        if cfg.position_biased_input:
            x = x + embed(cfg.max_position_embeddings, "position_embeddings")(jnp.arange(x.shape[1])[None, :])
        if cfg.type_vocab_size > 0:
            if extra:
                zeros = jnp.zeros((x.shape[0], extra), token_type_ids.dtype)
                token_type_ids = jnp.concatenate(
                    [token_type_ids[:, :1], zeros, token_type_ids[:, 1:]], axis=1
                )
            x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        if width != cfg.hidden_size:
            x = nn.Dense(
                cfg.hidden_size,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=init,
                name="embed_proj",
            )(x)
        x = _layer_norm(cfg, self.dtype)(x)
        return Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)

    def extend_inputs(self, words):
        """The word embeddings `[B, L, E]` as the layers read them: these, unchanged.

        A hook for a method interceptor (`flax.linen.intercept_methods`): vectors it inserts go right after
        the first position, and the encoder widens the attention mask and narrows its output to match.
        """
        return words


class DisentangledSelfAttention(nn.Module):
    """Content-to-content plus the configured relative-position scores (Hugging Face
    `DisentangledSelfAttention`), softmax over the unpadded keys."""

    config: DebertaV2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden, key_mask, rel_embeddings, deterministic: bool, first_only: bool = False):
        """Attends from every position, or with `first_only` from the first alone.

        Args:
            hidden: `[B, L, H]`.
            key_mask: `[B, L]`, nonzero at real tokens.
            rel_embeddings: `[2 * position_table_half, H]` (None without relative attention).
            deterministic: disables dropout.
            first_only: the first position's query alone.

        Returns:
            `[B, L, H]` (`[B, 1, H]` with `first_only`) in `dtype`.
        """
        cfg = self.config
        batch, length, _ = hidden.shape
        queries = 1 if first_only else length
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads
        kinds = cfg.pos_att_type if cfg.relative_attention else ()
        table = None
        if cfg.relative_attention:
            table = Dropout(cfg.hidden_dropout_prob)(rel_embeddings, deterministic=deterministic)
            table = table.astype(self.dtype)

        def project(name, x):
            return _dense(cfg.hidden_size, cfg, self.dtype, name)(x).reshape(x.shape[0], heads, head_dim)

        def project_tokens(name, with_table: bool, positions: int = length):
            # The table's rows share the tokens' Dense call: a second call would be a second LoRA path.
            n = batch * positions
            rows = hidden[:, :positions].reshape(n, hidden.shape[-1]).astype(self.dtype)
            out = project(name, jnp.concatenate([rows, table]) if with_table else rows)
            return out[:n].reshape(batch, positions, heads, head_dim), out[n:]

        share = cfg.share_att_key
        q, pos_q = project_tokens("query_proj", share and "p2c" in kinds, queries)
        k, pos_k = project_tokens("key_proj", share and "c2p" in kinds)
        v, _ = project_tokens("value_proj", False)
        if cfg.relative_attention and not share:
            if "c2p" in cfg.pos_att_type:
                pos_k = project("pos_key_proj", table)
            if "p2c" in cfg.pos_att_type:
                pos_q = project("pos_query_proj", table)

        # Hugging Face scales by the attention types listed, with or without relative attention.
        scale = np.float32(math.sqrt(head_dim * (1 + len(cfg.pos_att_type))))
        f32 = jnp.float32
        logits = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=f32)
        if kinds:
            half = cfg.position_table_half
            relative = relative_positions(length, cfg.position_buckets, cfg.relative_span_limit)
            if "c2p" in kinds:  # query i . position key of d(i, j)
                scores = jnp.einsum("bqnd,pnd->bnqp", q, pos_k, preferred_element_type=f32)
                index = np.clip(relative[:queries] + half, 0, 2 * half - 1)
                logits = logits + _gather_positions(scores, index)
            if "p2c" in kinds:  # key j . position query of -d(j, i), gathered per key then transposed
                scores = jnp.einsum("bknd,pnd->bnkp", k, pos_q, preferred_element_type=f32)
                index = np.clip(-relative[:, :queries] + half, 0, 2 * half - 1)
                gathered = _gather_positions(scores, index)
                logits = logits + jnp.swapaxes(gathered, -1, -2)
        logits = logits / scale
        # A padded key gets the float32 minimum: exactly zero probability, a fully padded row stays finite.
        bias = jnp.where(key_mask.astype(bool), 0.0, jnp.finfo(f32).min)[:, None, None, :]
        probs = jax.nn.softmax(logits + bias, axis=-1)
        rate = cfg.attention_probs_dropout_prob
        if not deterministic and rate > 0.0:
            probs = dropout(self.make_rng("dropout"), rate, probs)
        out = jnp.einsum("bnqk,bknd->bqnd", probs.astype(self.dtype), v, preferred_element_type=f32)
        return out.astype(self.dtype).reshape(batch, queries, cfg.hidden_size)


class DebertaV2Attention(nn.Module):
    """Self-attention followed by its output projection (`attention/self`, `attention/output`)."""

    config: DebertaV2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden, key_mask, rel_embeddings, deterministic: bool, first_only: bool = False):
        x = DisentangledSelfAttention(self.config, self.dtype, name="self")(
            hidden, key_mask, rel_embeddings, deterministic, first_only
        )
        residual = hidden[:, :1] if first_only else hidden
        return BertAddNorm(self.config, self.dtype, name="output")(x, residual, deterministic)


class DebertaV2Layer(nn.Module):
    """One transformer block: attention/{self,output}, intermediate, output (as BERT's, with
    `BertIntermediate` and `BertAddNorm`, whose `residual_branch` hook adapters use)."""

    config: DebertaV2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden, key_mask, rel_embeddings, deterministic: bool, first_only: bool = False):
        """`[B, L, H]` -> `[B, L, H]`, or `[B, 1, H]` (the first position) with `first_only`."""
        cfg = self.config
        hidden = DebertaV2Attention(cfg, self.dtype, name="attention")(
            hidden, key_mask, rel_embeddings, deterministic, first_only
        )
        x = BertIntermediate(cfg, self.dtype, name="intermediate")(hidden)
        return BertAddNorm(cfg, self.dtype, name="output")(x, hidden, deterministic)


class ConvLayer(nn.Module):
    """Hugging Face `ConvLayer`: `LayerNorm(residual + act(dropout(conv(embedded))))`, zero at padding."""

    config: DebertaV2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, embedded, residual, key_mask, deterministic: bool):
        cfg = self.config
        pad = (cfg.conv_kernel_size - 1) // 2
        out = nn.Conv(
            cfg.hidden_size,
            (cfg.conv_kernel_size,),
            padding=[(pad, pad)],
            feature_group_count=cfg.conv_groups,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=weight_init(cfg),
            name="conv",
        )(embedded)
        real = key_mask.astype(self.dtype)[..., None]
        out = _ACTIVATIONS[cfg.conv_act](
            Dropout(cfg.hidden_dropout_prob)(out * real, deterministic=deterministic)
        )
        return _layer_norm(cfg, self.dtype)(residual + out) * real


class DebertaV2LayerStack(nn.Module):
    """Hugging Face `DebertaV2Encoder` (the tree's `encoder`): the relative-position table, the
    `layer_{i}` blocks (optionally rematerialised) and the convolution after the first."""

    config: DebertaV2Config
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, hidden, key_mask, deterministic: bool, first_only: bool = False):
        """The layers; with `first_only` the last computes the first position alone (`[B, 1, H]` out). The
        caller (`DebertaV2Encoder`) does not ask it of a one-layer model with the convolution, which reads
        every position of layer 0."""
        cfg = self.config
        table = None
        if cfg.relative_attention:
            rows = 2 * cfg.position_table_half
            table = nn.Embed(
                rows,
                cfg.hidden_size,
                embedding_init=weight_init(cfg),
                param_dtype=jnp.float32,
                name="rel_embeddings",
            )(jnp.arange(rows))
            if cfg.layer_norm_rel_embeddings:
                table = _layer_norm(cfg, self.dtype)(table)
        # `deterministic` and `first_only` are arguments 4 and 5 counting `self`: static, so remat keeps the
        # Python branches on them.
        layer_cls = nn.remat(DebertaV2Layer, static_argnums=(4, 5)) if self.remat else DebertaV2Layer
        embedded = hidden
        last = cfg.num_hidden_layers - 1
        for i in range(cfg.num_hidden_layers):
            layer = layer_cls(cfg, self.dtype, name=f"layer_{i}")
            hidden = layer(hidden, key_mask, table, deterministic, first_only and i == last)
            if i == 0 and cfg.conv_kernel_size:
                hidden = ConvLayer(cfg, self.dtype, name="conv")(embedded, hidden, key_mask, deterministic)
        return hidden


class DebertaV2Encoder(nn.Module):
    """The DeBERTa-v2/v3 encoder; Hugging Face `DebertaV2Model` with Flax parameter names.

    Attributes:
        config: the architecture.
        dtype: compute dtype (`jnp.bfloat16` for mixed precision); parameters are float32 regardless.
        attention_impl: None, `"xla"` or `"cudnn"`, all taking the XLA path (see the module docstring).
        remat: recompute each layer's activations in the backward pass to save memory.
        add_pooling_layer: ignored: `DebertaV2Model` has no pooler (the sequence head has its own).
        dense_targets: (class attribute) the Dense layers that method interceptors may adapt,
            by the names configs use, as paths below this module (`*`: any one name).
    """

    config: DebertaV2Config
    dtype: Any = jnp.float32
    attention_impl: str | None = None
    remat: bool = False
    add_pooling_layer: bool = False
    dense_targets: ClassVar[dict[str, str]] = {
        "query": "encoder/layer_*/attention/self/query_proj",
        "key": "encoder/layer_*/attention/self/key_proj",
        "value": "encoder/layer_*/attention/self/value_proj",
        "attention_output": "encoder/layer_*/attention/output/dense",
        "intermediate": "encoder/layer_*/intermediate/dense",
        "output": "encoder/layer_*/output/dense",
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
            token_type_ids: `[B, L]` segment ids (None: all zeros; unused when `type_vocab_size` is 0).
            deterministic: disables dropout; when False a `"dropout"` RNG must be provided.
            first_token_only: compute the last layer at the first position alone (see the module
                docstring): sequence_output is then `[B, 1, H]`, its first position the same as a full
                computation's. In training the last layer's dropout masks are drawn for the positions
                computed, so they differ from a full computation's (same distribution).

        Returns:
            `(sequence_output [B, L, H] in dtype, None)`: the base model has no pooled output.
        """
        if self.attention_impl not in _ATTENTION_IMPLS:
            raise UserError(f"attention_impl {self.attention_impl!r} is not one of {_ATTENTION_IMPLS}")
        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        hidden = DebertaV2Embeddings(cfg, self.dtype, name="embeddings")(
            input_ids, token_type_ids, deterministic
        )
        # Adversarial training perturbs the embedding output through this (a no-op unless the caller passes
        # a "perturbations" collection; see jaxft.strategies.adversarial).
        if not self.is_initializing():  # init must not create the collection: its shape is per batch
            hidden = self.perturb("embedding_output", hidden)
        extra = hidden.shape[1] - input_ids.shape[1]  # vectors `extend_inputs` put after the first
        if extra:  # attended to like real tokens
            ones = jnp.ones((attention_mask.shape[0], extra), attention_mask.dtype)
            attention_mask = jnp.concatenate([attention_mask[:, :1], ones, attention_mask[:, 1:]], axis=1)
        # Zero at padding, as Hugging Face's embeddings: the convolution reads its neighbours.
        hidden = hidden * attention_mask.astype(hidden.dtype)[..., None]
        # The convolution after layer 0 reads every position: a one-layer model with it computes them all.
        first_only = first_token_only and not (cfg.conv_kernel_size and cfg.num_hidden_layers == 1)
        hidden = DebertaV2LayerStack(cfg, self.dtype, self.remat, name="encoder")(
            hidden, attention_mask, deterministic, first_only
        )
        if extra and not first_only:  # position i of the output is input token i again
            hidden = jnp.concatenate([hidden[:, :1], hidden[:, 1 + extra :]], axis=1)
        return hidden, None


class ContextPooler(nn.Module):
    """Hugging Face `ContextPooler`: `act(dense(dropout(first position)))`."""

    config: DebertaV2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden, deterministic: bool):
        cfg = self.config
        x = Dropout(cfg.pooler_dropout)(hidden[:, 0], deterministic=deterministic)
        return _ACTIVATIONS[cfg.pooler_hidden_act](_dense(cfg.hidden_size, cfg, self.dtype, "dense")(x))


def sequence_head(
    config: DebertaV2Config,
    hidden,
    pooled,
    *,
    num_labels: int,
    dtype,
    classifier_dropout,
    deterministic: bool,
):
    """The head of `DebertaV2ForSequenceClassification`: `pooler` (dense), dropout, `classifier`.

    Call it inside a parent's compact `__call__`: `pooler` and `classifier` become that parent's children.

    Args:
        config: the encoder's config.
        hidden: the encoder's `[B, L, H]` output; the first position is read.
        pooled: the encoder's pooled output, unused (None: `DebertaV2Model` has no pooler).
        num_labels: logits per example.
        dtype: compute dtype.
        classifier_dropout: dropout before `classifier`; None takes `cls_dropout`, or else
            `hidden_dropout_prob`, as Hugging Face does.
        deterministic: disables dropout.

    Returns:
        `[B, num_labels]` float32 logits.
    """
    del pooled
    x = ContextPooler(config, dtype, name="pooler")(hidden, deterministic)
    rate = classifier_dropout
    if rate is None:
        rate = config.hidden_dropout_prob if config.cls_dropout is None else config.cls_dropout
    x = Dropout(rate)(x, deterministic=deterministic)
    classifier = nn.Dense(
        num_labels, dtype=dtype, param_dtype=jnp.float32, kernel_init=weight_init(config), name="classifier"
    )
    return classifier(x).astype(jnp.float32)


_PREFIX = "deberta"
_ENCODER_ROOTS = ("embeddings", "encoder")
_HEAD_TENSORS = {
    f"{module}.{leaf}"
    for module in ("pooler.dense", "classifier", "qa_outputs")
    for leaf in ("weight", "bias")
}
_HEAD_GROUPS = ("pooler", "classifier", "qa_outputs")


def _flax_leaf(modules: list[str], torch_leaf: str) -> str | None:
    if modules[-1] == "LayerNorm":
        return {"weight": "scale", "bias": "bias"}.get(torch_leaf)
    if modules[-1].endswith("_embeddings"):
        return "embedding" if torch_leaf == "weight" else None
    return {"weight": "kernel", "bias": "bias"}.get(torch_leaf)


def _kernel_layout(array: np.ndarray) -> np.ndarray:
    """PyTorch <-> Flax kernel layout, its own inverse: Linear `[out, in]`, Conv1d `[out, in, k]` reversed."""
    return array.transpose(2, 1, 0) if array.ndim == 3 else array.T


# `DebertaV2ForMaskedLM`'s head with `legacy=False` (`lm_predictions.lm_head`: dense, activation, LayerNorm,
# the word embeddings tied, a bias) under the names of the legacy head, which are BERT's (`cls.predictions.*`)
# and compute the same function; jaxft reads either and exports the legacy names (transformers' default).
MLM_NAMES = {
    "lm_predictions.lm_head.dense.weight": "cls.predictions.transform.dense.weight",
    "lm_predictions.lm_head.dense.bias": "cls.predictions.transform.dense.bias",
    "lm_predictions.lm_head.LayerNorm.weight": "cls.predictions.transform.LayerNorm.weight",
    "lm_predictions.lm_head.LayerNorm.bias": "cls.predictions.transform.LayerNorm.bias",
    "lm_predictions.lm_head.bias": "cls.predictions.bias",
}


def hf_to_flax(state_dict: dict[str, np.ndarray]) -> tuple[dict, list[str]]:
    """Converts a Hugging Face DeBERTa-v2 state dict to a nested Flax parameter tree.

    Accepts `DebertaV2Model` names (`encoder.layer.0...`) and `DebertaV2For*` names (`deberta.encoder...`,
    `pooler.dense.*`, `classifier.*`, `qa_outputs.*`).

    Args:
        state_dict: tensor name to array (NumPy or anything `np.asarray` takes).

    Returns:
        `(params, ignored_names)`: `params` is `{"bert": {...}}` plus `"pooler"`, `"classifier"` and
        `"qa_outputs"` where the checkpoint has them, float32; `ignored_names` lists the tensors that belong
        to none of them (masked-LM heads, buffers), for the caller to report.
    """
    flat, ignored = {}, []
    for name, value in state_dict.items():
        parts = name.split(".")
        if parts[0] == _PREFIX:
            parts = parts[1:]
        if name in _HEAD_TENSORS:
            root = ()
        elif parts[0] in _ENCODER_ROOTS and len(parts) > 2:
            root = ("bert",)
        else:
            ignored.append(name)
            continue
        *modules, torch_leaf = parts
        leaf = _flax_leaf(modules, torch_leaf)
        if leaf is None:
            ignored.append(name)
            continue
        # `encoder.layer.3` -> `encoder/layer_3`.
        joined = re.sub(r"(^|/)layer/(\d+)(/|$)", r"\1layer_\2\3", "/".join(modules))
        array = np.asarray(value, dtype=np.float32)
        flat[(*root, *joined.split("/"), leaf)] = _kernel_layout(array) if leaf == "kernel" else array
    return traverse_util.unflatten_dict(flat), ignored


def flax_to_hf(params: dict) -> dict[str, np.ndarray]:
    """Converts `{"bert": ..., "pooler": ..., "classifier": ...}` back to Hugging Face `DebertaV2For*` names.

    The inverse of `hf_to_flax`: `deberta.`-prefixed encoder names, kernels back in PyTorch's layout,
    float32 and contiguous (ready for `safetensors.numpy.save_file`).

    Args:
        params: a parameter tree with top-level key `bert` and optionally `pooler`, `classifier`,
            `qa_outputs`.

    Returns:
        Hugging Face tensor name to array.

    Raises:
        UserError: another top-level key.
    """
    unknown = sorted(set(params) - {"bert", *_HEAD_GROUPS})
    if unknown:
        raise UserError(
            f"cannot export parameter group {unknown[0]!r}: only 'bert', 'pooler', 'classifier' and "
            "'qa_outputs' map to DeBERTa-v2"
        )
    out = {}
    for path, value in traverse_util.flatten_dict(params).items():
        *modules, leaf = path
        if modules[0] == "bert":
            modules = [_PREFIX, *modules[1:]]
        modules = [re.sub(r"^layer_(\d+)$", r"layer.\1", m) for m in modules]
        array = np.asarray(value, dtype=np.float32)
        if leaf == "kernel":
            array = _kernel_layout(array)
        torch_leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
        out[".".join([*modules, torch_leaf])] = np.ascontiguousarray(array)
    return out
