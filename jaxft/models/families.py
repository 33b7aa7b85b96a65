"""The encoder families jaxft loads, by Hugging Face `model_type`: what differs between them, in one table.

Each `Family` names its config class (read from and written to `config.json`), its encoder module, its
sequence-classification head, how its checkpoint tensors are named, and the transformers classes an exported
run becomes. RoBERTa, XLM-RoBERTa, ELECTRA and DistilBERT run on BERT's layers (`BertEncoder`, configured by
their config class); their tensors are renamed to BERT's names on the way in (`to_bert_name`) and back on
the way out (`from_bert_name`), so the parameter tree, the PEFT target names and every head are BERT's.

In every family's tree the encoder sits under `bert` (the heads name their encoder submodule so), and the
head's parameters under the names its transformers class uses (`classifier`, `classifier/out_proj`,
`pre_classifier`, ...).
"""

import dataclasses
from collections.abc import Callable

from jaxft.errors import UserError
from jaxft.models import bert, distilbert, electra, roberta


def _same(name: str) -> str:
    return name


@dataclasses.dataclass(frozen=True)
class Family:
    """What jaxft needs to know of one encoder family.

    Attributes:
        config: the config class (`from_dict`, `to_hf_dict`, `model_type`).
        encoder: the encoder module class.
        prefix: the attribute of the base model in transformers' task classes (`roberta` in
            `roberta.encoder.layer.0...`).
        class_prefix: the transformers class names' stem (`Roberta` in `RobertaForSequenceClassification`).
        sequence_head: `f(config, hidden, pooled, *, num_labels, dtype, classifier_dropout, deterministic)`,
            the sequence-classification head, called inside a head module's compact `__call__`.
        pooled_head: whether `sequence_head` reads the encoder's pooler (then the encoder has one).
        to_bert_name, from_bert_name: the renaming of tensors (after `prefix.` became `bert.`) to BERT's
            names and back.
        masked_lm: whether the family's checkpoints carry a masked-LM head jaxft reads (prompt-based
            classification needs one).
    """

    config: type
    encoder: type
    prefix: str
    class_prefix: str
    sequence_head: Callable
    pooled_head: bool = False
    to_bert_name: Callable[[str], str] = _same
    from_bert_name: Callable[[str], str] = _same
    masked_lm: bool = False

    @property
    def model_type(self) -> str:
        return self.config.model_type


FAMILIES = {
    family.model_type: family
    for family in (
        Family(bert.BertConfig, bert.BertEncoder, "bert", "Bert", bert.sequence_head, True, masked_lm=True),
        Family(roberta.RobertaConfig, bert.BertEncoder, "roberta", "Roberta", roberta.sequence_head),
        Family(roberta.XLMRobertaConfig, bert.BertEncoder, "roberta", "XLMRoberta", roberta.sequence_head),
        Family(electra.ElectraConfig, bert.BertEncoder, "electra", "Electra", roberta.gelu_sequence_head),
        Family(
            distilbert.DistilBertConfig,
            bert.BertEncoder,
            "distilbert",
            "DistilBert",
            distilbert.sequence_head,
            to_bert_name=distilbert.to_bert_name,
            from_bert_name=distilbert.from_bert_name,
        ),
    )
}


def named(model_type: str) -> Family:
    """The family of `model_type`; UserError naming the supported ones if there is none."""
    if model_type not in FAMILIES:
        raise UserError(
            f"model_type {model_type!r} is not supported; jaxft reads {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def of(config) -> Family:
    """The family whose config class `config` is an instance of."""
    return named(type(config).model_type)
