"""The model a config asks for: the task's head over the encoder, with the config's PEFT method applied."""

import functools

import jax.numpy as jnp
import ml_collections

from jaxft import backend, tasks
from jaxft.errors import UserError
from jaxft.models import families
from jaxft.models.bert import BertConfig
from jaxft.models.heads import (
    EncoderStates,
    MaskedLM,
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
    relation `RelationClassifier`, whose entity-marker ids do too (`tokenizer` is needed for those two only),
    mlm `MaskedLM` (the whole vocabulary's logits; `num_labels` is not read).
    """
    task = tasks.from_config(config)
    heads = {"sequence": SequenceClassifier, "token": TokenClassifier, "span": SpanExtractor}
    head = {**heads, "mlm": MaskedLMClassifier, "relation": RelationClassifier, "lm": MaskedLM}[task.head]
    if task.head == "relation":  # the entity markers' ids, which the model looks for in the input
        if tokenizer is None:
            raise ValueError(f"task.name={task.name!r}: create_model needs the tokenizer")
        head = functools.partial(head, **task.model_kwargs(tokenizer))
    if task.head == "mlm":
        if tokenizer is None:
            raise ValueError(f"task.name={task.name!r}: create_model needs the tokenizer")
        verbalizer_ids, mask_token_id = task.token_ids(tokenizer)
        head = functools.partial(head, verbalizer_ids=verbalizer_ids, mask_token_id=mask_token_id)
    model = head(config=bert_config, num_labels=num_labels, **module_options(config))
    peft = peft_lib.from_config(config)
    check_peft(peft, families.of(bert_config))
    return peft_lib.wrap(model, peft)


def create_encoder(config: ml_collections.ConfigDict, bert_config: BertConfig):
    """The encoder alone (`EncoderStates`: the last hidden states), as `create_model` builds it for the
    same run, with its PEFT method: a trained run's parameters apply to it."""
    model = EncoderStates(config=bert_config, num_labels=0, **module_options(config))
    return peft_lib.wrap(model, peft_lib.from_config(config))


def module_options(config: ml_collections.ConfigDict) -> dict:
    """The head's settings the `model` section gives: compute dtype (parameters stay float32), classifier
    dropout, attention implementation ("auto": the fused kernel where the backend has it) and remat."""
    attention = config.model.attention
    if attention == "auto":
        attention = "cudnn" if backend.fused_attention(config.model.dtype) else "xla"
    return {
        "dtype": jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32,
        "classifier_dropout": config.model.classifier_dropout,
        "attention_impl": attention,
        "remat": config.model.remat,
    }


def check_peft(peft: peft_lib.PeftConfig, family: families.Family) -> None:
    """Refuses, in one line, a PEFT method the family's encoder cannot take (it would change nothing)."""
    if peft.method == "prefix" and not family.prefix_tuning:
        raise UserError(
            f"peft.method='prefix' is not supported for model_type {family.model_type!r}: its attention "
            "scores depend on each key's relative position, which prefix vectors do not have"
        )
    if peft.method == "lora":
        missing = [t for t in peft.lora_targets if t not in family.encoder.dense_targets]
        if missing:
            raise UserError(
                f"peft.lora_targets {missing[0]!r} names no layer of model_type {family.model_type!r}; "
                f"its targets are {', '.join(family.encoder.dense_targets)}"
            )
