"""A BERT encoder in Flax linen whose parameter tree mirrors Hugging Face names.

The tree is `embeddings/...`, `encoder/layer_{i}/...` and `pooler/dense/...`, one-to-one with the PyTorch
`BertModel` state dict (`encoder.layer.3.x` <-> `encoder/layer_3/x`), so `convert.py` can map checkpoints by
renaming and transposing alone. Parameters are always float32; `dtype` only sets the compute dtype, so a
bfloat16 run keeps float32 master weights for the optimizer.

Attention has two paths that compute the same function:

* `"xla"` (the default): `softmax_attention`, scaled dot-product attention written out with a boolean
  key-padding mask (the function of `jax.nn.dot_product_attention`'s XLA path, tested equal), so that
  dropout can be applied to the attention probabilities, as Hugging Face does during training. It is
  arranged for XLA:CPU (head-major matmuls, the padding as a bias), which runs it faster than that path.
* `"cudnn"`: the fused cuDNN kernel through `jax.nn.dot_product_attention(implementation="cudnn")`. It only
  runs on NVIDIA GPUs with a bfloat16/float16 `dtype` (elsewhere it raises when traced) and takes the padding
  as per-row key lengths, so inputs must be right-padded, which is what BERT tokenizers produce. It has no
  attention dropout, so training with `attention_probs_dropout_prob > 0` still takes the XLA path (the
  model is unchanged, only slower); set that probability to 0 to train with cuDNN as well.

A layer asked for its first position alone (pooled heads' last layer) attends from that one query without
projecting its keys and values: `first_query_attention`, the same function in another order of products.

Methods that add layers or inputs are applied from outside, by a method interceptor
(`flax.linen.intercept_methods`): the encoder declares the Dense layers they may adapt
(`BertEncoder.dense_targets`) and calls identity hooks that an interceptor may override (`extend_inputs`,
`extend_keys_values`, `plain_keys_values`, `residual_branch`). The forward pass knows none of them.
"""

import dataclasses
import functools
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxft.errors import UserError
from jaxft.models import matmul
from jaxft.models.dropout import Dropout, dropout


def gelu(x):
    """Exact GELU as PyTorch computes it, `x / 2 * (1 + erf(x / sqrt(2)))`.

    `jax.nn.gelu(approximate=False)` is the same function written with erfc, which XLA:CPU evaluates more
    slowly (measured in bench/README.md). The two agree within
    2e-6 (tested); far in the negative tail, where both are ~0, this form returns 0 a little earlier, as
    PyTorch's does.
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * 0.7071067811865476))


_ACTIVATIONS = {
    # Hugging Face "gelu" is the exact erf form; "gelu_new" and "gelu_pytorch_tanh" are both the tanh
    # approximation.
    "gelu": gelu,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}
_ATTENTION_IMPLS = (None, "xla", "cudnn")
SHAPE_FIELDS = (  # the sizes that decide every parameter's shape
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)


# BertConfig's fields that only the families built on BERT set (not keys of a BERT config.json).
_VARIANT_FIELDS = ("embedding_size", "positions_from_padding", "attention_output_dropout", "qa_dropout")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture hyperparameters, with the names and defaults of Hugging Face `BertConfig`."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    # What the families built on BERT's layers change (their config classes set these; see
    # jaxft.models.families): ELECTRA's embeddings are `embedding_size` wide and projected to hidden_size
    # (`embeddings_project`); RoBERTa's positions count the non-padding tokens from pad_token_id + 1, padding
    # keeping position pad_token_id; DistilBERT has no token types (type_vocab_size 0) and no dropout after
    # the attention's output projection.
    embedding_size: int | None = None
    positions_from_padding: bool = False
    attention_output_dropout: bool = True
    qa_dropout: float = 0.0  # DistilBERT's dropout before the QA head (BERT has none)

    model_type: ClassVar[str] = "bert"

    def __post_init__(self):
        # Read back from a hand-editable config.json: a zero size or a NaN rate would give NaN outputs or a
        # traceback instead of this one line.
        for name in SHAPE_FIELDS:
            value = getattr(self, name)
            least = 0 if name == "type_vocab_size" else 1  # 0: no token type embeddings
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                kind = "positive" if least else "non-negative"
                raise UserError(f"{name}={value!r} must be a {kind} integer")
        size = self.embedding_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise UserError(f"embedding_size={size!r} must be a positive integer")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "qa_dropout"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                raise UserError(f"{name}={value!r} must be a number in [0, 1)")
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < math.inf:
                raise UserError(f"{name}={value!r} must be a positive finite number")
        pad = self.pad_token_id
        if pad is not None and (
            isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < self.vocab_size
        ):
            raise UserError(f"pad_token_id={pad!r} must be a token id below vocab_size={self.vocab_size}")
        if self.hidden_act not in _ACTIVATIONS:
            raise UserError(
                f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(_ACTIVATIONS)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        """Builds a config from a Hugging Face `config.json` dict.

        Keys that are not fields (`model_type`, `architectures`, `use_cache`, ...) are ignored and missing
        fields take the Hugging Face defaults.

        Args:
            d: the parsed `config.json`.

        Returns:
            The config.

        Raises:
            UserError: the config asks for something this encoder does not implement (relative position
                embeddings, an unknown activation).
        """
        position_type = d.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise UserError(f"position_embedding_type {position_type!r} is not supported; only 'absolute'")
        names = {f.name for f in dataclasses.fields(cls)} - set(_VARIANT_FIELDS)
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_hf_dict(self) -> dict:
        """Returns a dict that `transformers.BertConfig(**d)` accepts; the caller adds `architectures`."""
        d = dataclasses.asdict(self)
        for name in _VARIANT_FIELDS:
            del d[name]
        return {"model_type": self.model_type, "position_embedding_type": "absolute", **d}

    @property
    def max_positions(self) -> int:
        """The longest input the position embeddings cover (RoBERTa's first pad_token_id + 1 are not
        positions of tokens)."""
        reserved = self.pad_token_id + 1 if self.positions_from_padding else 0
        return self.max_position_embeddings - reserved


def weight_init(config: BertConfig):
    """BERT's initialiser for every kernel and embedding: normal with `initializer_range` as its stddev."""
    return nn.initializers.normal(stddev=config.initializer_range)


def _dense(features: int, config: BertConfig, dtype: Any, name: str) -> nn.Dense:
    return matmul.dense(features, dtype, weight_init(config), name)


def _layer_norm(config: BertConfig, dtype: Any) -> nn.LayerNorm:
    # The two-pass variance matches PyTorch; the fast E[x^2] - E[x]^2 form costs parity at 1e-5.
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        name="LayerNorm",
    )


def _computed_positions(hidden, first_only: bool):
    """The positions a layer computes outputs for: the first alone (`first_only`, `[B, 1, H]`) or all."""
    return hidden[:, :1] if first_only else hidden


def softmax_attention(query, key, value, mask, *, dropout_rate=0.0, dropout_rng=None):
    """Scaled dot-product attention written out, with optional dropout on the probabilities.

    It computes the function of `jax.nn.dot_product_attention`'s XLA path (float32 logits and softmax; keys
    masked out get the float32 minimum, so exactly zero probability), tested equal within float32 rounding.
    Written for XLA:CPU, which runs it faster than that path: the batched matmuls take head-major operands,
    the queries are scaled before `QKᵀ` and the padding is added as
    a `[B, 1, 1, S]` bias, because a scalar or a `where` applied to the `[B, N, T, S]` logits reaches
    XLA:CPU's matmul fusions as a whole materialised array (bench/README.md).

    Args:
        query: `[B, T, N, H]`.
        key: `[B, S, N, H]`.
        value: `[B, S, N, H]`.
        mask: boolean, broadcastable to `[B, N, T, S]`; True where a query may attend to a key.
        dropout_rate: probability of zeroing an attention probability; 0 disables dropout.
        dropout_rng: PRNG key, needed when `dropout_rate > 0`.

    Returns:
        `[B, T, N, H]` in the dtype of `value`.
    """
    heads = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [B, T, N, H] <-> [B, N, T, H]
    scale = 1.0 / jnp.sqrt(query.shape[-1]).astype(jnp.float32)
    query = (query.astype(jnp.float32) * scale).astype(query.dtype)  # scaled in float32, rounded once
    logits = jnp.einsum("bnth,bnsh->bnts", heads(query), heads(key), preferred_element_type=jnp.float32)
    # The minimum absorbs any logit below 1e31 in magnitude: a masked key's logit is the minimum exactly.
    logits = logits + jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout_rate > 0.0:
        probs = dropout(dropout_rng, dropout_rate, probs)
    return heads(jnp.einsum("bnts,bnsh->bnth", probs.astype(value.dtype), heads(value)))


def _key_mask(attention_mask):
    """`[B, S]` padding mask (1 = a real token) -> boolean `[B, 1, 1, S]`: the keys every query may see."""
    return attention_mask.astype(bool)[:, None, None, :]


def first_query_attention(
    query, hidden, key_params, value_params, mask, *, dropout_rate=0.0, dropout_rng=None
):
    """`softmax_attention` for one query per row without projecting the keys and values.

    With one query `q` (per head), its logits against the keys `x W_K + b_K` are `x · (W_K q)` plus
    `q · b_K`, the same for every key, which the softmax cancels; and its output `Σ_s p_s (x_s W_V + b_V)`
    is `(Σ_s p_s x_s) W_V + (Σ_s p_s) b_V` (the sum of the probabilities is 1 but for dropout). So the
    `[S, H] x [H, H]` projections of every key and value become products with one row per head. The
    same function as projecting first, within rounding, with the same dropout mask.

    Args:
        query: `[B, 1, N, D]`, the projected query.
        hidden: `[B, S, H]`, the layer's input: what keys and values are projected from.
        key_params, value_params: the `(kernel [H, N·D], bias [N·D])` of the key and value projections.
        mask: boolean, broadcastable to `[B, N, 1, S]`; True where the query may attend to a key.
        dropout_rate, dropout_rng: as `softmax_attention`'s.

    Returns:
        `[B, 1, N, D]` in the dtype of `query`.
    """
    batch, _, heads, head_dim = query.shape
    dtype = query.dtype
    per_head = lambda kernel: kernel.reshape(kernel.shape[0], heads, head_dim).astype(dtype)  # noqa: E731
    scale = 1.0 / jnp.sqrt(head_dim).astype(jnp.float32)
    q = (query[:, 0].astype(jnp.float32) * scale).astype(dtype)  # [B, N, D]
    through_keys = jnp.einsum("bnd,hnd->bnh", q, per_head(key_params[0]), preferred_element_type=jnp.float32)
    logits = jnp.einsum(
        "bsh,bnh->bns", hidden, through_keys.astype(dtype), preferred_element_type=jnp.float32
    )
    mask = jnp.broadcast_to(mask, (batch, heads, 1, hidden.shape[1]))[:, :, 0]
    logits = logits + jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout_rate > 0.0:  # drawn in `softmax_attention`'s shape, so the mask bits are its
        probs = dropout(dropout_rng, dropout_rate, probs[:, :, None, :])[:, :, 0]
    probs = probs.astype(dtype)
    mixed = jnp.einsum("bns,bsh->bnh", probs, hidden, preferred_element_type=jnp.float32).astype(dtype)
    out = jnp.einsum("bnh,hnd->bnd", mixed, per_head(value_params[0]), preferred_element_type=jnp.float32)
    weight = jnp.sum(probs.astype(jnp.float32), axis=-1, keepdims=True)  # 1 but for dropout
    out = out + weight * value_params[1].reshape(heads, head_dim)
    return out.astype(dtype)[:, None]


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout.

    `extend_inputs` may insert vectors after the first word (with token type 0): the output is then longer
    than the input by as many positions.
    """

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        cfg = self.config
        init = weight_init(cfg)

        width = cfg.embedding_size or cfg.hidden_size

        def embed(num, name):
            # Lookups and the sum stay float32; the LayerNorm casts to the compute dtype.
            return nn.Embed(num, width, embedding_init=init, param_dtype=jnp.float32, name=name)

        words = self.extend_inputs(embed(cfg.vocab_size, "word_embeddings")(input_ids))
        extra = words.shape[1] - input_ids.shape[1]
        x = words + embed(cfg.max_position_embeddings, "position_embeddings")(
            self._positions(input_ids, extra)
        )
        if cfg.type_vocab_size:
            if extra:
                zeros = jnp.zeros((words.shape[0], extra), token_type_ids.dtype)
                token_type_ids = jnp.concatenate(
                    [token_type_ids[:, :1], zeros, token_type_ids[:, 1:]], axis=1
                )
            x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        x = _layer_norm(cfg, self.dtype)(x)
        return Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)

    def _positions(self, input_ids, extra: int):
        """Each input position's position id, `[B, L + extra]` or `[1, L + extra]`; the `extra` vectors
        `extend_inputs` put after the first count as tokens."""
        cfg = self.config
        if not cfg.positions_from_padding:
            return jnp.arange(input_ids.shape[1] + extra)[None, :]
        is_token = (input_ids != cfg.pad_token_id).astype(jnp.int32)
        if extra:
            ones = jnp.ones((input_ids.shape[0], extra), jnp.int32)
            is_token = jnp.concatenate([is_token[:, :1], ones, is_token[:, 1:]], axis=1)
        return jnp.cumsum(is_token, axis=1) * is_token + cfg.pad_token_id

    def extend_inputs(self, words):
        """The word embeddings `[B, L, H]` as the layers read them: these, unchanged.

        A hook for a method interceptor (`flax.linen.intercept_methods`): vectors it inserts go right after
        the first position, and the encoder widens the attention mask and narrows its output to match.
        """
        return words


class BertSelfAttention(nn.Module):
    """Multi-head self-attention over the unpadded keys (Hugging Face `BertSelfAttention`)."""

    config: BertConfig
    dtype: Any = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, hidden, attention_mask, deterministic: bool, first_only: bool = False):
        """Attends from every position, or from the first alone (`first_only`: output `[B, 1, H]`)."""
        cfg = self.config
        batch = hidden.shape[0]
        heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads

        def project(name, x):
            out = _dense(cfg.hidden_size, cfg, self.dtype, name)(x)
            return out.reshape(batch, x.shape[1], heads, head_dim)

        q = project("query", _computed_positions(hidden, first_only))
        rate = cfg.attention_probs_dropout_prob
        apply_dropout = not deterministic and rate > 0.0
        dropout_args = (
            {"dropout_rate": rate, "dropout_rng": self.make_rng("dropout")} if apply_dropout else {}
        )
        # One query: no key or value projections (exact, see the function).
        if first_only and self.plain_keys_values():
            init = weight_init(cfg)
            key, value = (
                matmul.DenseParams(cfg.hidden_size, init, name=name)(hidden.shape[-1])
                for name in ("key", "value")
            )
            out = first_query_attention(
                q, hidden.astype(self.dtype), key, value, _key_mask(attention_mask), **dropout_args
            )
            return out.reshape(batch, 1, cfg.hidden_size)
        k, v = self.extend_keys_values(project("key", hidden), project("value", hidden))
        extra = k.shape[1] - attention_mask.shape[-1]
        if extra:  # keys put before the real ones: attended to by every query
            attention_mask = jnp.concatenate(
                [jnp.ones((batch, extra), attention_mask.dtype), attention_mask], axis=1
            )
        # cuDNN takes no dropout RNG, and one query is not worth a fused kernel: those go through XLA too.
        if self.attention_impl == "cudnn" and not apply_dropout and not first_only:
            # cuDNN takes key lengths, not a mask; a fully padded row keeps length 1 so it stays finite.
            lengths = jnp.maximum(attention_mask.sum(axis=-1), 1).astype(jnp.int32)
            out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")
        else:
            out = softmax_attention(q, k, v, _key_mask(attention_mask), **dropout_args)
        return out.reshape(batch, q.shape[1], cfg.hidden_size)

    def plain_keys_values(self) -> bool:
        """Whether keys and values are the key and value projections of the input alone: True.

        A hook for a method interceptor (`flax.linen.intercept_methods`) that alters those projections or
        `extend_keys_values`: it answers False, and the single-query path (`first_query_attention`, which
        never computes the keys and values) is not taken.
        """
        return True

    def extend_keys_values(self, keys, values):
        """The keys and values `[B, S, N, D]` attended to: these, unchanged.

        A hook for a method interceptor (`flax.linen.intercept_methods`): keys and values it adds go before
        the real ones, and every query may attend to them.
        """
        return keys, values


class BertAddNorm(nn.Module):
    """Dense, dropout, residual add and LayerNorm (Hugging Face `BertSelfOutput` and `BertOutput`)."""

    config: BertConfig
    dtype: Any = jnp.float32
    dropout: bool = True  # False: no dropout before the residual add

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        cfg = self.config
        out = _dense(cfg.hidden_size, cfg, self.dtype, "dense")(x)
        if self.dropout:
            out = Dropout(cfg.hidden_dropout_prob)(out, deterministic=deterministic)
        out = self.residual_branch(out)
        return _layer_norm(cfg, self.dtype)(out + residual)

    def residual_branch(self, out):
        """The sublayer's output as it is added to the residual: `out`, unchanged.

        A hook for a method interceptor (`flax.linen.intercept_methods`), which may put a layer here.
        """
        return out


class BertAttention(nn.Module):
    """Self-attention followed by its output projection (`attention/self`, `attention/output`)."""

    config: BertConfig
    dtype: Any = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, hidden, attention_mask, deterministic: bool, first_only: bool = False):
        x = BertSelfAttention(self.config, self.dtype, self.attention_impl, name="self")(
            hidden, attention_mask, deterministic, first_only
        )
        output = BertAddNorm(self.config, self.dtype, self.config.attention_output_dropout, name="output")
        return output(x, _computed_positions(hidden, first_only), deterministic)


class BertIntermediate(nn.Module):
    """The feed-forward expansion and its activation."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden):
        x = _dense(self.config.intermediate_size, self.config, self.dtype, "dense")(hidden)
        return _ACTIVATIONS[self.config.hidden_act](x)


class BertLayer(nn.Module):
    """One transformer block: attention/{self,output}, intermediate, output.

    With `first_only` the block's output is computed at the first position alone (`[B, 1, H]`), attending
    to every key: what the pooler reads of the last block.
    """

    config: BertConfig
    dtype: Any = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, hidden, attention_mask, deterministic: bool, first_only: bool = False):
        cfg = self.config
        attention = BertAttention(cfg, self.dtype, self.attention_impl, name="attention")
        hidden = attention(hidden, attention_mask, deterministic, first_only)
        x = BertIntermediate(cfg, self.dtype, name="intermediate")(hidden)
        return BertAddNorm(cfg, self.dtype, name="output")(x, hidden, deterministic)


class BertLayerStack(nn.Module):
    """The `encoder/layer_{i}` blocks, optionally rematerialised."""

    config: BertConfig
    dtype: Any = jnp.float32
    attention_impl: str | None = None
    remat: bool = False

    @nn.compact
    def __call__(self, hidden, attention_mask, deterministic: bool, first_only: bool = False):
        """`first_only`: the last layer's output at the first position alone (`BertLayer`)."""
        # `deterministic` and `first_only` are arguments 3 and 4 counting `self`; static so remat keeps the
        # Python branches on them.
        layer_cls = nn.remat(BertLayer, static_argnums=(3, 4)) if self.remat else BertLayer
        last = self.config.num_hidden_layers - 1
        for i in range(last + 1):
            layer = layer_cls(self.config, self.dtype, self.attention_impl, name=f"layer_{i}")
            hidden = layer(hidden, attention_mask, deterministic, first_only and i == last)
        return hidden


class BertPooler(nn.Module):
    """tanh(Dense(first token)), the input to Hugging Face classification heads."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden):
        return jnp.tanh(_dense(self.config.hidden_size, self.config, self.dtype, "dense")(hidden[:, 0]))


class BertEncoder(nn.Module):
    """The BERT encoder and pooler; Hugging Face `BertModel` with Flax parameter names.

    Attributes:
        config: the architecture.
        dtype: compute dtype (`jnp.bfloat16` for mixed precision); parameters are float32 regardless.
        attention_impl: None or `"xla"` for the portable path, `"cudnn"` for the fused GPU kernel (see the
            module docstring for its limits; it raises on CPU).
        remat: recompute each layer's activations in the backward pass to save memory.
        add_pooling_layer: False leaves the pooler out (its parameters too), as Hugging Face's argument of
            that name, for heads that read every position.
        dense_targets: (class attribute) the Dense layers that method interceptors may adapt,
            by the names configs use, as paths below this module (`*`: any one name).
    """

    config: BertConfig
    dtype: Any = jnp.float32
    attention_impl: str | None = None
    remat: bool = False
    add_pooling_layer: bool = True
    dense_targets: ClassVar[dict[str, str]] = {
        "query": "encoder/layer_*/attention/self/query",
        "key": "encoder/layer_*/attention/self/key",
        "value": "encoder/layer_*/attention/self/value",
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
            token_type_ids: `[B, L]` segment ids (None: all zeros).
            deterministic: disables dropout; when False a `"dropout"` RNG must be provided.
            first_token_only: compute the last layer at the first ([CLS]) position alone, for callers that
                read only the pooled output: the same pooled output, with the queries, attention, output
                projection and feed-forward of every other position of the last layer left out (14% of
                MiniLM-L6's matmuls, 7% of BERT-base's), and its keys and values not projected either
                (`first_query_attention`; a further 2.6% and 1.4%) unless `plain_keys_values` says no.
                sequence_output is then `[B, 1, H]`. In training the last layer's dropout masks are drawn for
                the positions computed, so they differ from a full computation's (same distribution).

        Returns:
            `(sequence_output [B, L, H], pooled_output [B, H])`, both in `dtype`; pooled_output is None
            without the pooling layer.
        """
        if self.attention_impl not in _ATTENTION_IMPLS:
            raise UserError(f"attention_impl {self.attention_impl!r} is not one of {_ATTENTION_IMPLS}")
        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        hidden = BertEmbeddings(cfg, self.dtype, name="embeddings")(input_ids, token_type_ids, deterministic)
        # Adversarial training perturbs the embedding output through this (a no-op unless the caller passes
        # a "perturbations" collection; see jaxft.strategies.adversarial).
        if not self.is_initializing():  # init must not create the collection: its shape is per batch
            hidden = self.perturb("embedding_output", hidden)
        if cfg.embedding_size not in (None, cfg.hidden_size):  # ELECTRA's small embeddings
            hidden = _dense(cfg.hidden_size, cfg, self.dtype, "embeddings_project")(hidden)
        extra = hidden.shape[1] - input_ids.shape[1]  # vectors `extend_inputs` put after the first
        if extra:  # attended to like real tokens
            ones = jnp.ones((attention_mask.shape[0], extra), attention_mask.dtype)
            attention_mask = jnp.concatenate([attention_mask[:, :1], ones, attention_mask[:, 1:]], axis=1)
        hidden = BertLayerStack(cfg, self.dtype, self.attention_impl, self.remat, name="encoder")(
            hidden, attention_mask, deterministic, first_token_only
        )
        if extra and not first_token_only:  # position i of the output is input token i again
            hidden = jnp.concatenate([hidden[:, :1], hidden[:, 1 + extra :]], axis=1)
        if not self.add_pooling_layer:
            return hidden, None
        return hidden, BertPooler(cfg, self.dtype, name="pooler")(hidden)


def classifier(num_labels: int, config: BertConfig, dtype, name: str = "classifier") -> nn.Dense:
    """The final projection of a head: `num_labels` outputs, kernel drawn as the encoder's weights are."""
    return nn.Dense(
        num_labels, dtype=dtype, param_dtype=jnp.float32, kernel_init=weight_init(config), name=name
    )


def sequence_head(config, hidden, pooled, *, num_labels, dtype, classifier_dropout, deterministic):
    """`BertForSequenceClassification`'s head over the encoder's pooler: dropout -> `classifier`.

    Call inside a parent's compact `__call__` (its `classifier` is created there). `hidden` is unused.
    Returns `[B, num_labels]` float32 logits.
    """
    del hidden
    rate = config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
    x = Dropout(rate)(pooled, deterministic=deterministic)
    return classifier(num_labels, config, dtype)(x).astype(jnp.float32)


def token_head(config, hidden, *, num_labels, dtype, rate, deterministic, name):
    """The head of `BertForTokenClassification` and `BertForQuestionAnswering` at every position: dropout at
    `rate` (None: the hidden dropout), then the projection `name`. Call inside a parent's compact
    `__call__`; float32 logits."""
    x = Dropout(config.hidden_dropout_prob if rate is None else rate)(hidden, deterministic=deterministic)
    return classifier(num_labels, config, dtype, name)(x).astype(jnp.float32)
