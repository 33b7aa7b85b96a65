"""The ELECTRA discriminator: BERT's layers under embeddings that may be narrower than the hidden size.

The encoder is `BertEncoder` (the same parameter tree, `electra.*` in Hugging Face's names) configured by
`ElectraConfig`: word, position and token-type embeddings `embedding_size` wide, their LayerNorm, then
`embeddings_project` up to `hidden_size` when the two differ (ELECTRA-small: 128 -> 256). There is no pooler;
the classification head reads the first token through dense, GELU and a projection
(`jaxft.models.roberta.gelu_sequence_head`). A discriminator checkpoint has no masked-LM head (that is the
generator's), so prompt-based classification (`pet`) is refused for this family.
"""

import dataclasses
from typing import ClassVar

from jaxft.errors import UserError
from jaxft.models.bert import BertConfig


@dataclasses.dataclass(frozen=True)
class ElectraConfig(BertConfig):
    """`BertConfig` with the names and defaults of Hugging Face `ElectraConfig` (the discriminator's)."""

    embedding_size: int | None = 128
    hidden_size: int = 256
    num_attention_heads: int = 4
    intermediate_size: int = 1024

    model_type: ClassVar[str] = "electra"

    @classmethod
    def from_dict(cls, d: dict) -> "ElectraConfig":
        """Builds a config from a Hugging Face ELECTRA `config.json` dict (see `BertConfig.from_dict`)."""
        config = super().from_dict(d)
        size = d.get("embedding_size", cls.embedding_size)
        if size is None:
            raise UserError("embedding_size=None: an ELECTRA config names its embedding width")
        return dataclasses.replace(config, embedding_size=size)

    def to_hf_dict(self) -> dict:
        return {**super().to_hf_dict(), "embedding_size": self.embedding_size}
