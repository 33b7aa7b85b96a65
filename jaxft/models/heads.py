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
- `MaskedLMClassifier`: the masked-LM head of `BertForMaskedLM` (`cls.predictions.*`, decoder tied to the
  word embeddings) read at the [MASK] position, restricted to one verbaliser token per label: prompt-based
  classification (PET / LM-BFF, `jaxft.tasks.pet`). Its tree is `bert` (no pooler) and `cls`.
- `MaskedLM`: `BertForMaskedLM` itself, the same head over the whole vocabulary at every position (or at the
  positions given): continued masked-LM pre-training (`jaxft.tasks.mlm`).
- `RelationClassifier`: the vectors at the [E1] and [E2] entity markers (or the pooled [CLS]) -> one logit
  per relation (`jaxft.tasks.relation`).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxft.models import families
from jaxft.models.bert import _ACTIVATIONS, BertConfig, _dense, _layer_norm
from jaxft.models.bert import classifier as _classifier
from jaxft.models.dropout import Dropout


class EncoderHead(nn.Module):
    """What every head shares: the encoder under the name `bert`, and the dropout before the head.

    Attributes:
        config: the encoder architecture.
        num_labels: number of output logits (per example, or per position).
        dtype: compute dtype of the encoder and the head; logits are returned as float32.
        classifier_dropout: dropout before the head; None takes `config.hidden_dropout_prob`, as Hugging
            Face does.
        attention_impl: passed to `BertEncoder`.
        remat: passed to `BertEncoder`.
    """

    config: Any
    num_labels: int
    dtype: Any = jnp.float32
    classifier_dropout: float | None = None
    attention_impl: str | None = None
    remat: bool = False

    @property
    def family(self) -> families.Family:
        return families.of(self.config)

    def encoder(self, add_pooling_layer: bool) -> nn.Module:
        """The family's encoder as the submodule `bert` (call from the head's compact `__call__`)."""
        return self.family.encoder(
            self.config,
            self.dtype,
            self.attention_impl,
            self.remat,
            add_pooling_layer=add_pooling_layer,
            name="bert",
        )

    def dropout(self, x, deterministic: bool):
        """Dropout before the head, at `classifier_dropout` (or the encoder's hidden dropout)."""
        rate = self.config.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout
        return Dropout(rate)(x, deterministic=deterministic)

    def sequence_logits(self, input_ids, attention_mask, token_type_ids, deterministic: bool):
        """The encoder, then the family's sequence-classification head (`Family.sequence_head`)."""
        family = self.family
        hidden, pooled = self.encoder(add_pooling_layer=family.pooled_head)(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic, first_token_only=True
        )
        return family.sequence_head(
            self.config,
            hidden,
            pooled,
            num_labels=self.num_labels,
            dtype=self.dtype,
            classifier_dropout=self.classifier_dropout,
            deterministic=deterministic,
        )


class EncoderStates(EncoderHead):
    """The encoder alone, under the same name `bert` as in every head: a trained run's parameters (and its
    PEFT layers) apply to it unchanged, the head's own parameters are not read. `jaxft.api`'s `embed` pools
    its output.

    Attributes: as `EncoderHead` (`num_labels` is not used).
    """

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True):
        """Returns the last layer's hidden states, `[B, L, hidden]` float32 (padding positions too)."""
        encoder = self.encoder(add_pooling_layer=False)
        hidden, _ = encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic)
        return hidden.astype(jnp.float32)


class SequenceClassifier(EncoderHead):
    """The family's `*ForSequenceClassification`: for BERT, pooled output -> dropout -> Dense(num_labels).

    The heads read only the first token, so the encoder's last layer is computed at that position alone
    (`BertEncoder`'s `first_token_only`): the same logits with less work.

    Attributes: as `EncoderHead`.
    """

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
        return self.sequence_logits(input_ids, attention_mask, token_type_ids, deterministic)


class TokenClassifier(EncoderHead):
    """Sequence output -> dropout -> Dense(num_labels) at every position, as `BertForTokenClassification`.

    Attributes: as `EncoderHead`.
    """

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True):
        """Computes per-position logits.

        Args: as `SequenceClassifier`.

        Returns:
            `[B, L, num_labels]` float32 logits (padding positions too; the loss masks them).
        """
        encoder = self.encoder(add_pooling_layer=False)
        hidden, _ = encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic)
        return self.family.token_head(
            self.config,
            hidden,
            num_labels=self.num_labels,
            dtype=self.dtype,
            rate=self.classifier_dropout,
            deterministic=deterministic,
            name="classifier",
        )


class SpanExtractor(EncoderHead):
    """Sequence output -> Dense(2) (`qa_outputs`) at every position, as `BertForQuestionAnswering`.

    Attributes: as `EncoderHead` (`num_labels` is 2: start and end; `classifier_dropout` is unused: Hugging
    Face has no dropout before this head but DistilBERT's, at the config's `qa_dropout`).
    """

    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True):
        """Computes `[B, L, 2]` float32 start (`[..., 0]`) and end (`[..., 1]`) logits."""
        encoder = self.encoder(add_pooling_layer=False)
        hidden, _ = encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic)
        return self.family.token_head(
            self.config,
            hidden,
            num_labels=self.num_labels,
            dtype=self.dtype,
            rate=getattr(self.config, "qa_dropout", 0.0),  # BERT's QA head has no dropout; DistilBERT's has
            deterministic=deterministic,
            name="qa_outputs",
        )


class MlmTransform(nn.Module):
    """Dense -> activation -> LayerNorm before the vocabulary projection (`cls.predictions.transform`)."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden):
        hidden = _dense(self.config.hidden_size, self.config, self.dtype, "dense")(hidden)
        hidden = _ACTIVATIONS[self.config.hidden_act](hidden)
        return _layer_norm(self.config, self.dtype)(hidden)


class MlmPredictions(nn.Module):
    """`cls.predictions`: the transform, then the tied decoder plus a bias per vocabulary token.

    With `token_ids` only their rows are projected (the logits of every other token would be thrown away);
    None projects onto the whole vocabulary.
    """

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden, word_embeddings, token_ids: tuple[int, ...] | None):
        hidden = MlmTransform(self.config, self.dtype, name="transform")(hidden)
        bias = self.param("bias", nn.initializers.zeros, (self.config.vocab_size,), jnp.float32)
        if token_ids is not None:
            ids = jnp.asarray(token_ids, jnp.int32)
            word_embeddings, bias = word_embeddings[ids], bias[ids]  # [labels, H], [labels]
        return hidden @ word_embeddings.astype(self.dtype).T + bias.astype(self.dtype)


class MlmHead(nn.Module):
    """The `cls` scope of `BertForMaskedLM` (`BertOnlyMLMHead`), which holds `predictions`."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden, word_embeddings, token_ids: tuple[int, ...] | None):
        return MlmPredictions(self.config, self.dtype, name="predictions")(hidden, word_embeddings, token_ids)


def masked_lm_logits(head: EncoderHead, encoder: nn.Module, hidden, token_ids: tuple[int, ...] | None):
    """The family's masked-LM head over `hidden` (`[..., H]`) for `token_ids` (None: every token), called
    from `head`'s compact `__call__` after `encoder` ran: BERT's `cls` (`MlmHead`, decoder tied to the word
    embeddings), or the family's own (ModernBERT's `head` and `decoder`). Float32 logits."""
    embeddings = encoder.variables["params"]["embeddings"]
    if head.family.mlm_head is not None:
        logits = head.family.mlm_head(head.config, hidden, embeddings, token_ids, head.dtype)
    else:
        words = embeddings["word_embeddings"]["embedding"]
        logits = MlmHead(head.config, head.dtype, name="cls")(hidden, words, token_ids)
    return logits.astype(jnp.float32)


class MaskedLMClassifier(EncoderHead):
    """Encoder -> hidden state at the [MASK] -> masked-LM head -> the verbaliser tokens' logits.

    Equal to `BertForMaskedLM`'s logits at each row's first [MASK] position, indexed by `verbalizer_ids`.

    Attributes: as `EncoderHead` (`classifier_dropout` is unused: Hugging Face's masked-LM head has no
    dropout), and
        verbalizer_ids: the token id that stands for each label, in label order (one per label).
        mask_token_id: the tokenizer's [MASK] id; each row is read at its first [MASK] (position 0 in a row
            without one, i.e. a padding row, whose weight is 0).
    """

    verbalizer_ids: tuple[int, ...] = ()
    mask_token_id: int = 103

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True):
        """Computes `[B, num_labels]` float32 logits of the verbaliser tokens at the [MASK] position.

        Args: as `SequenceClassifier`.
        """
        if len(self.verbalizer_ids) != self.num_labels:
            raise ValueError(f"{len(self.verbalizer_ids)} verbaliser tokens for {self.num_labels} labels")
        encoder = self.encoder(add_pooling_layer=False)
        hidden, _ = encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic)
        position = jnp.argmax(input_ids == self.mask_token_id, axis=-1)  # the first True
        at_mask = jnp.take_along_axis(hidden, position[:, None, None], axis=1)[:, 0]  # [B, H]
        return masked_lm_logits(self, encoder, at_mask, self.verbalizer_ids)


class MaskedLM(EncoderHead):
    """The family's `*ForMaskedLM` (`BertForMaskedLM`): encoder -> masked-LM head -> a logit per vocabulary
    token, at every position or at the `positions` given (continued pre-training, `jaxft.tasks.mlm`). Its
    tree is `MaskedLMClassifier`'s: `bert` (no pooler) and `cls` (ModernBERT: `head` and `decoder`).

    Attributes: as `EncoderHead` (`num_labels` and `classifier_dropout` are unused: the logits are the
    vocabulary's, and Hugging Face's masked-LM head has no dropout).
    """

    @nn.compact
    def __call__(
        self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True, positions=None
    ):
        """Computes masked-LM logits.

        Args: as `SequenceClassifier`, and
            positions: None, or `[K]` int flat indices (row * L + position) of the tokens to predict: the
                head, whose vocabulary projection dominates the cost, then runs at those alone.

        Returns:
            `[B, L, vocab_size]` float32 logits (padding positions too), or `[K, vocab_size]` at `positions`.
        """
        encoder = self.encoder(add_pooling_layer=False)
        hidden, _ = encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic)
        if positions is not None:
            hidden = hidden.reshape(-1, hidden.shape[-1])[positions]
        return masked_lm_logits(self, encoder, hidden, None)


class RelationClassifier(EncoderHead):
    """The relation between two marked entities: encoder -> pair vector -> dropout -> Dense(num_labels).

    The text carries entity markers (`jaxft.tasks.relation`): [E1] ... [/E1] around the head entity and
    [E2] ... [/E2] around the tail. The pair vector is, by `pooling`:

    - "markers": the hidden states at the first [E1] and the first [E2], concatenated ([B, 2H]): the "entity
      start" representation of Baldini Soares et al. 2019. The encoder then has no pooler.
    - "cls": the pooled [CLS] output; the module is then `SequenceClassifier`, parameters and outputs alike
      (so it exports as `BertForSequenceClassification`).

    The model finds the markers in `input_ids` itself (their ids are attributes), so batches need no extra
    feature. A row without a marker (only padding rows: tokenisation keeps both markers) reads position 0.

    Attributes: as `EncoderHead` (the config's vocabulary holds the marker tokens), and
        pooling: "markers" or "cls" (`task.relation_pooling`).
        marker_ids: the token ids of [E1] and [E2], read with pooling "markers".
    """

    pooling: str = "markers"
    marker_ids: tuple[int, int] = (-1, -1)

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True):
        """Computes `[B, num_labels]` float32 relation logits.

        Args: as `SequenceClassifier`.
        """
        if self.pooling not in ("markers", "cls"):
            raise ValueError(f"pooling {self.pooling!r} is not 'markers' or 'cls'")
        if self.pooling == "markers" and min(self.marker_ids) < 0:
            raise ValueError("pooling 'markers' needs the token ids of [E1] and [E2] (marker_ids)")
        if self.pooling == "cls":
            return self.sequence_logits(input_ids, attention_mask, token_type_ids, deterministic)
        hidden, _ = self.encoder(add_pooling_layer=False)(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic
        )
        is_marker = input_ids[:, :, None] == jnp.asarray(self.marker_ids, input_ids.dtype)  # [B, L, 2]
        positions = jnp.argmax(is_marker, axis=1)  # [B, 2]: each marker's first position
        starts = jnp.take_along_axis(hidden, positions[:, :, None], axis=1)  # [B, 2, H]
        pair = starts.reshape(starts.shape[0], -1)  # [B, 2H]: head start, then tail start
        pair = self.dropout(pair, deterministic)
        return _classifier(self.num_labels, self.config, self.dtype)(pair).astype(jnp.float32)
