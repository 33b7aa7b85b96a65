"""Task heads on top of the BERT encoder, named like their Hugging Face counterparts.

Both heads have the top-level parameter keys `bert` and `classifier`, the names of
`BertForSequenceClassification` and `BertForTokenClassification` (`bert.*`, `classifier.weight`,
`classifier.bias`), so a fine-tuned checkpoint from either library converts to the other by renaming alone.

- `SequenceClassifier`: pooled [CLS] -> one logit per label. The same module serves single-label
  classification, regression (`num_labels=1`) and multi-label classification (one logit per label): as in
  Hugging Face, where one class covers the three `problem_type`s, only the loss differs (see `jaxft.tasks`).
- `TokenClassifier`: every position -> one logit per tag. Like `BertForTokenClassification` it has no pooler
  (`bert.pooler.*` of a pretrained checkpoint is left out when loading).
- `SpanExtractor`: every position -> a start and an end logit, as `BertForQuestionAnswering` (no pooler, no
  dropout before the head, which is named `qa_outputs`).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxft.models.bert import BertConfig, BertEncoder


def _classifier(num_labels: int, config: BertConfig, dtype) -> nn.Dense:
    return nn.Dense(
        num_labels,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(stddev=config.initializer_range),
        name="classifier",
    )


class SequenceClassifier(nn.Module):
    """Pooled output -> dropout -> Dense(num_labels), as `BertForSequenceClassification`.

    Attributes:
        config: the encoder architecture.
        num_labels: number of output logits.
        dtype: compute dtype of the encoder and the classifier; logits are returned as float32.
        classifier_dropout: dropout before the classifier; None takes `config.hidden_dropout_prob`, as
            Hugging Face does.
        attention_impl: passed to `BertEncoder`.
        remat: passed to `BertEncoder`.
    """

    config: BertConfig
    num_labels: int
    dtype: Any = jnp.float32
    classifier_dropout: float | None = None
    attention_impl: str | None = None
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True):
        """Computes classification logits.

        Args:
            input_ids: `[B, L]` int token ids.
            attention_mask: `[B, L]` with 1 for real tokens and 0 for padding.
            token_type_ids: `[B, L]` segment ids (None: all zeros).
            deterministic: disables dropout; when False a `"dropout"` RNG must be provided.

        Returns:
            `[B, num_labels]` float32 logits.
        """
        encoder = BertEncoder(self.config, self.dtype, self.attention_impl, self.remat, name="bert")
        _, pooled = encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic)
        rate = self.config.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout
        pooled = nn.Dropout(rate)(pooled, deterministic=deterministic)
        logits = _classifier(self.num_labels, self.config, self.dtype)(pooled)
        # Losses and metrics want float32 even when the encoder runs in bfloat16.
        return logits.astype(jnp.float32)


class TokenClassifier(nn.Module):
    """Sequence output -> dropout -> Dense(num_labels) at every position, as `BertForTokenClassification`.

    Attributes: as `SequenceClassifier`.
    """

    config: BertConfig
    num_labels: int
    dtype: Any = jnp.float32
    classifier_dropout: float | None = None
    attention_impl: str | None = None
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True):
        """Computes per-position logits.

        Args: as `SequenceClassifier`.

        Returns:
            `[B, L, num_labels]` float32 logits (padding positions too; the loss masks them).
        """
        encoder = BertEncoder(
            self.config, self.dtype, self.attention_impl, self.remat, add_pooling_layer=False, name="bert"
        )
        hidden, _ = encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic)
        rate = self.config.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout
        hidden = nn.Dropout(rate)(hidden, deterministic=deterministic)
        return _classifier(self.num_labels, self.config, self.dtype)(hidden).astype(jnp.float32)


class SpanExtractor(nn.Module):
    """Sequence output -> Dense(2) (`qa_outputs`) at every position, as `BertForQuestionAnswering`.

    Attributes: as `SequenceClassifier` (`num_labels` is 2: start and end; no classifier dropout, as in
    Hugging Face).
    """

    config: BertConfig
    num_labels: int = 2
    dtype: Any = jnp.float32
    classifier_dropout: float | None = None
    attention_impl: str | None = None
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True):
        """Computes `[B, L, 2]` float32 start (`[..., 0]`) and end (`[..., 1]`) logits."""
        encoder = BertEncoder(
            self.config, self.dtype, self.attention_impl, self.remat, add_pooling_layer=False, name="bert"
        )
        hidden, _ = encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic)
        head = nn.Dense(
            self.num_labels,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.normal(stddev=self.config.initializer_range),
            name="qa_outputs",
        )
        return head(hidden).astype(jnp.float32)
