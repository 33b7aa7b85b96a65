"""DistilBERT: BERT's layers without token types, under its own parameter names and head.

The encoder is `BertEncoder` configured by `DistilBertConfig` (no token types, no dropout after the
attention's output projection, as DistilBERT's block has none). Its Hugging Face tensors are renamed to
BERT's on the way in and back on the way out (`to_bert_name`, `from_bert_name`):
`transformer.layer.3.attention.q_lin` is `encoder/layer_3/attention/self/query`, `sa_layer_norm` the
attention's LayerNorm, `ffn.lin1`/`ffn.lin2` the feed-forward pair, `output_layer_norm` the block's last
LayerNorm. So every PEFT target name means the same layer as in BERT.

The classification head reads the first token through `pre_classifier`, ReLU and dropout
(`seq_classif_dropout`); the QA head has dropout (`qa_dropout`) before `qa_outputs`. Checkpoints with
sinusoidal position embeddings (`sinusoidal_pos_embds`, frozen in transformers) are refused: here every
embedding trains.
"""

import dataclasses
import re
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxft.errors import UserError
from jaxft.models.bert import BertConfig, _dense, classifier
from jaxft.models.dropout import Dropout

# DistilBERT's config keys -> BertConfig's fields.
_HF_NAMES = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "hidden_dim": "intermediate_size",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "activation": "hidden_act",
}
_KEPT = ("vocab_size", "max_position_embeddings", "initializer_range", "pad_token_id")


@dataclasses.dataclass(frozen=True)
class DistilBertConfig(BertConfig):
    """`BertConfig` with the defaults of Hugging Face `DistilBertConfig`, read and written in its names."""

    num_hidden_layers: int = 6
    type_vocab_size: int = 0
    attention_output_dropout: bool = False
    qa_dropout: float = 0.1
    seq_classif_dropout: float = 0.2

    model_type: ClassVar[str] = "distilbert"
    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim")

    def __post_init__(self):
        super().__post_init__()
        value = self.seq_classif_dropout
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise UserError(f"seq_classif_dropout={value!r} must be a number in [0, 1)")

    @classmethod
    def from_dict(cls, d: dict) -> "DistilBertConfig":
        """Builds a config from a Hugging Face DistilBERT `config.json` dict (its own key names)."""
        if d.get("sinusoidal_pos_embds"):
            raise UserError(
                "sinusoidal_pos_embds=true is not supported: transformers freezes those position embeddings, "
                "jaxft would train them"
            )
        kwargs = {field: d[key] for key, field in _HF_NAMES.items() if key in d}
        kwargs.update({key: d[key] for key in (*_KEPT, "qa_dropout", "seq_classif_dropout") if key in d})
        return cls(**kwargs)

    def to_hf_dict(self) -> dict:
        d = {key: getattr(self, field) for key, field in _HF_NAMES.items()}
        d.update({key: getattr(self, key) for key in (*_KEPT, "qa_dropout", "seq_classif_dropout")})
        return {"model_type": self.model_type, "sinusoidal_pos_embds": False, **d}


# Hugging Face DistilBERT name pieces <-> BERT's, below `transformer.layer.N.` <-> `encoder.layer.N.`.
_LAYER_PARTS = {
    "attention.q_lin": "attention.self.query",
    "attention.k_lin": "attention.self.key",
    "attention.v_lin": "attention.self.value",
    "attention.out_lin": "attention.output.dense",
    "sa_layer_norm": "attention.output.LayerNorm",
    "ffn.lin1": "intermediate.dense",
    "ffn.lin2": "output.dense",
    "output_layer_norm": "output.LayerNorm",
}
_BERT_PARTS = {b: d for d, b in _LAYER_PARTS.items()}


def _renamed(name: str, stack: str, new_stack: str, parts: dict) -> str:
    alternatives = "|".join(map(re.escape, parts))
    found = re.match(rf"^(bert\.)?{stack}\.layer\.(\d+)\.({alternatives})\.", name)
    if not found:
        return name
    prefix, layer, part = found.groups()
    return f"{prefix or ''}{new_stack}.layer.{layer}.{parts[part]}.{name[found.end() :]}"


def to_bert_name(name: str) -> str:
    """A DistilBERT tensor name (its `distilbert.` prefix already `bert.`) as BERT's."""
    return _renamed(name, "transformer", "encoder", _LAYER_PARTS)


def from_bert_name(name: str) -> str:
    """The inverse of `to_bert_name`."""
    return _renamed(name, "encoder", "transformer", _BERT_PARTS)


# `DistilBertForMaskedLM`'s head (`vocab_transform`, GELU, `vocab_layer_norm`, `vocab_projector` tied to the
# word embeddings, with its bias) under the names of BERT's (`cls.predictions.*`): the same function.
MLM_NAMES = {
    "vocab_transform.weight": "cls.predictions.transform.dense.weight",
    "vocab_transform.bias": "cls.predictions.transform.dense.bias",
    "vocab_layer_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "vocab_layer_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "vocab_projector.bias": "cls.predictions.bias",
    "vocab_projector.weight": "cls.predictions.decoder.weight",
}


def sequence_head(config, hidden, pooled, *, num_labels, dtype, classifier_dropout, deterministic):
    """`DistilBertForSequenceClassification`'s head: first token -> `pre_classifier` -> ReLU -> dropout
    (`seq_classif_dropout`, or `classifier_dropout` when given) -> `classifier`; `pooled` is unused.

    Call inside a parent's compact `__call__`. Returns `[B, num_labels]` float32 logits.
    """
    del pooled
    rate = config.seq_classif_dropout if classifier_dropout is None else classifier_dropout
    x = jax.nn.relu(_dense(config.hidden_size, config, dtype, "pre_classifier")(hidden[:, 0]))
    x = Dropout(rate)(x, deterministic=deterministic)
    return classifier(num_labels, config, dtype)(x).astype(jnp.float32)
