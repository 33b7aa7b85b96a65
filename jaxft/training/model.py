"""The model a config asks for: the task's head over the encoder, with the config's PEFT method applied."""

import functools

import jax.numpy as jnp
import ml_collections

from jaxft import backend, tasks
from jaxft.models.bert import BertConfig
from jaxft.models.heads import (
    MaskedLMClassifier,
    RelationClassifier,
    SequenceClassifier,
    SpanExtractor,
    TokenClassifier,
)
from jaxft.strategies import peft as peft_lib


def create_model(config: ml_collections.ConfigDict, bert_config: BertConfig, num_labels: int, tokenizer=None):
    """The head the task asks for with `num_labels` outputs (compute dtype, attention implementation, remat),
    with the config's PEFT method applied (`peft.wrap`).

    Sequence tasks (classification, regression, multi-label) use `SequenceClassifier`, NER `TokenClassifier`,
    QA `SpanExtractor`, pet `MaskedLMClassifier`, whose verbaliser and mask token ids come from `tokenizer`,
    relation `RelationClassifier`, whose entity-marker ids do too (`tokenizer` is needed for those two only).
    """
    attention = config.model.attention
    if attention == "auto":
        attention = "cudnn" if backend.fused_attention(config.model.dtype) else "xla"
    task = tasks.from_config(config)
    heads = {"sequence": SequenceClassifier, "token": TokenClassifier, "span": SpanExtractor}
    head = {**heads, "mlm": MaskedLMClassifier, "relation": RelationClassifier}[task.head]
    if task.head == "relation":  # the entity markers' ids, which the model looks for in the input
        if tokenizer is None:
            raise ValueError(f"task.name={task.name!r}: create_model needs the tokenizer")
        head = functools.partial(head, **task.model_kwargs(tokenizer))
    if task.head == "mlm":
        if tokenizer is None:
            raise ValueError(f"task.name={task.name!r}: create_model needs the tokenizer")
        verbalizer_ids, mask_token_id = task.token_ids(tokenizer)
        head = functools.partial(head, verbalizer_ids=verbalizer_ids, mask_token_id=mask_token_id)
    model = head(
        config=bert_config,
        num_labels=num_labels,
        dtype=jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32,
        classifier_dropout=config.model.classifier_dropout,
        attention_impl=attention,
        remat=config.model.remat,
    )
    return peft_lib.wrap(model, peft_lib.from_config(config))
