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
from jaxft.models import bert, deberta, distilbert, electra, modernbert, roberta


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
        mlm_names: the family's masked-LM head tensors -> BERT's (`cls.predictions.*`), where they differ.
        mlm_head: `f(config, hidden, embeddings, token_ids, dtype)`, the family's own masked-LM head (None:
            BERT's, `jaxft.models.heads.MlmHead`), and mlm_groups, the parameter groups it creates.
        converter: a module with the family's own `hf_to_flax(state_dict)` and `flax_to_hf(params)`, for
            families whose tree is not BERT's (None: BERT's conversion, through the renames above).
        token_head: `f(config, hidden, *, num_labels, dtype, rate, deterministic, name)`, the head of the
            token classification and question answering classes over every position.
        qa_name: the name of the question-answering projection in the family's transformers class.
        prefix_tuning: whether the attention takes extra keys and values (`extend_keys_values`).
        dropout_fields: the config fields `model.hidden_dropout` and `model.attention_dropout` set.
        shape_fields: the config fields that decide the parameters' shapes (a resumed or warm-started run
            must agree on them).
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
    mlm_names: dict = dataclasses.field(default_factory=dict)
    mlm_head: Callable | None = None
    mlm_groups: tuple[str, ...] = ("cls",)
    converter: object = None
    token_head: Callable = bert.token_head
    qa_name: str = "qa_outputs"
    prefix_tuning: bool = True
    dropout_fields: tuple[tuple[str, ...], tuple[str, ...]] = (
        ("hidden_dropout_prob",),
        ("attention_probs_dropout_prob",),
    )
    shape_fields: tuple[str, ...] = (*bert.SHAPE_FIELDS, "embedding_size")

    @property
    def model_type(self) -> str:
        return self.config.model_type


FAMILIES = {
    family.model_type: family
    for family in (
        Family(bert.BertConfig, bert.BertEncoder, "bert", "Bert", bert.sequence_head, True, masked_lm=True),
        Family(
            roberta.RobertaConfig,
            bert.BertEncoder,
            "roberta",
            "Roberta",
            roberta.sequence_head,
            masked_lm=True,
            mlm_names=roberta.MLM_NAMES,
        ),
        Family(
            roberta.XLMRobertaConfig,
            bert.BertEncoder,
            "roberta",
            "XLMRoberta",
            roberta.sequence_head,
            masked_lm=True,
            mlm_names=roberta.MLM_NAMES,
        ),
        Family(electra.ElectraConfig, bert.BertEncoder, "electra", "Electra", roberta.gelu_sequence_head),
        Family(
            distilbert.DistilBertConfig,
            bert.BertEncoder,
            "distilbert",
            "DistilBert",
            distilbert.sequence_head,
            to_bert_name=distilbert.to_bert_name,
            from_bert_name=distilbert.from_bert_name,
            masked_lm=True,
            mlm_names=distilbert.MLM_NAMES,
        ),
        Family(
            deberta.DebertaV2Config,
            deberta.DebertaV2Encoder,
            "deberta",
            "DebertaV2",
            deberta.sequence_head,
            converter=deberta,
            prefix_tuning=False,
            masked_lm=True,
            mlm_names=deberta.MLM_NAMES,
            shape_fields=deberta.SHAPE_FIELDS,
        ),
        Family(
            modernbert.ModernBertConfig,
            modernbert.ModernBertEncoder,
            "model",
            "ModernBert",
            modernbert.sequence_head,
            pooled_head=True,
            converter=modernbert,
            token_head=modernbert.token_head,
            masked_lm=True,
            mlm_head=modernbert.mlm_head,
            mlm_groups=("head", "decoder"),
            qa_name="classifier",
            shape_fields=modernbert.SHAPE_FIELDS,
            dropout_fields=(("embedding_dropout", "mlp_dropout"), ("attention_dropout",)),
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
