"""RoBERTa and XLM-RoBERTa: BERT's layers with RoBERTa's positions, one token type and its own head.

The encoder is `BertEncoder` (the same parameter tree, `roberta.*` in Hugging Face's names), configured by
`RobertaConfig`: position ids count the non-padding tokens from `pad_token_id + 1` (padding keeps position
`pad_token_id`), which is what fairseq and transformers do, so the first `pad_token_id + 1` rows of the
position table hold no token's position and `max_positions` is `max_position_embeddings - pad_token_id - 1`
(512 for the released checkpoints). XLM-RoBERTa is the same network with a SentencePiece vocabulary.

The classification head (`RobertaClassificationHead`, parameters `classifier/dense` and
`classifier/out_proj`) reads the first token (`<s>`) of the last layer, not a pooler: dropout, dense, tanh,
dropout, projection. ELECTRA's head is the same with GELU (`jaxft.models.electra`).
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxft.models.bert import BertConfig, _dense, classifier, gelu
from jaxft.models.dropout import Dropout


@dataclasses.dataclass(frozen=True)
class RobertaConfig(BertConfig):
    """`BertConfig` with the names and defaults of Hugging Face `RobertaConfig`."""

    vocab_size: int = 50265
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    positions_from_padding: bool = True

    model_type: ClassVar[str] = "roberta"


@dataclasses.dataclass(frozen=True)
class XLMRobertaConfig(RobertaConfig):
    """`RobertaConfig` with the names and defaults of Hugging Face `XLMRobertaConfig`."""

    vocab_size: int = 250002

    model_type: ClassVar[str] = "xlm-roberta"


# `RobertaForMaskedLM`'s head (`RobertaLMHead`: dense, GELU, LayerNorm, the tied decoder plus a bias) under
# the names of BERT's (`cls.predictions.*`), which computes the same function.
MLM_NAMES = {
    "lm_head.dense.weight": "cls.predictions.transform.dense.weight",
    "lm_head.dense.bias": "cls.predictions.transform.dense.bias",
    "lm_head.layer_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "lm_head.layer_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "lm_head.bias": "cls.predictions.bias",
    "lm_head.decoder.bias": "cls.predictions.decoder.bias",
    "lm_head.decoder.weight": "cls.predictions.decoder.weight",
}


class ClassificationHead(nn.Module):
    """`RobertaClassificationHead` / `ElectraClassificationHead`: the first token's vector -> dropout ->
    `dense` -> activation -> dropout -> `out_proj`."""

    config: BertConfig
    num_labels: int
    rate: float
    activation: Callable
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden, deterministic: bool):
        x = Dropout(self.rate)(hidden[:, 0], deterministic=deterministic)
        x = self.activation(_dense(self.config.hidden_size, self.config, self.dtype, "dense")(x))
        x = Dropout(self.rate)(x, deterministic=deterministic)
        return classifier(self.num_labels, self.config, self.dtype, "out_proj")(x)


def sequence_head(
    config, hidden, pooled, *, num_labels, dtype, classifier_dropout, deterministic, activation=jnp.tanh
):
    """`RobertaForSequenceClassification`'s head (`classifier/{dense,out_proj}`; ELECTRA's with
    `activation=gelu`); `pooled` is unused.

    Call inside a parent's compact `__call__`. Returns `[B, num_labels]` float32 logits.
    """
    del pooled
    rate = config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
    head = ClassificationHead(config, num_labels, rate, activation, dtype, name="classifier")
    return head(hidden, deterministic).astype(jnp.float32)


# `ElectraForSequenceClassification`'s head: RoBERTa's with GELU (transformers' "gelu", the erf form).
gelu_sequence_head = functools.partial(sequence_head, activation=gelu)
