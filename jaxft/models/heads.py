"""Task heads on top of `BertEncoder`, named like their Hugging Face counterparts.

`SequenceClassifier` has the top-level parameter keys `bert` and `classifier`, the names of
`BertForSequenceClassification` (`bert.*`, `classifier.weight`, `classifier.bias`), so a fine-tuned checkpoint
from either library converts to the other by renaming alone.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxft.models.bert import BertConfig, BertEncoder


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
        logits = nn.Dense(
            self.num_labels,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.normal(stddev=self.config.initializer_range),
            name="classifier",
        )(pooled)
        # Losses and metrics want float32 even when the encoder runs in bfloat16.
        return logits.astype(jnp.float32)
