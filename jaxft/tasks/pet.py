"""Prompt-based classification through the masked-LM head (PET, Schick & Schütze 2021; LM-BFF, Gao et al.).

Each example is written into a template such as "{text} It was [MASK]." and the pretrained masked-LM head
scores one verbaliser word per label at the [MASK] ("bad" / "good"): the label's logit is that word's logit
(`jaxft.models.heads.MaskedLMClassifier`). Everything after the logits (softmax cross-entropy, confusion
matrix, sklearn report, predictions) is single-label classification, so `Pet` inherits it.

Tokenisation: the template's literal pieces and each text are tokenised separately and joined as one
sequence, [CLS] pieces [SEP], with token type 0 throughout. When the whole does not fit
`data.max_seq_length`, only the texts are cut (the longest first, from its end), never the template, so
the [MASK] always survives. A [MASK] written inside a text becomes [UNK]: the model reads the template's.
Splits are tokenised anew on every run (no token cache).
"""

import dataclasses
import logging
import re

import ml_collections
import numpy as np

from jaxft.config import MASK
from jaxft.errors import UserError
from jaxft.tasks.classification import Classification

_SLOT = re.compile(r"(\{text\}|\{text_pair\})")


def _fit(lengths: list[int], budget: int) -> list[int]:
    """Lengths cut to sum to at most `budget` by always shortening the longest (Hugging Face's
    "longest_first"): every length is capped at one level, the first few that reach it keep one more."""
    if sum(lengths) <= budget:
        return list(lengths)
    low, high = 0, max(lengths)  # the highest cap whose capped lengths fit the budget
    while low < high:
        cap = (low + high + 1) // 2
        low, high = (cap, high) if sum(min(n, cap) for n in lengths) <= budget else (low, cap - 1)
    spare = budget - sum(min(n, low) for n in lengths)
    keep = []
    for n in lengths:
        extra = int(n > low and spare > 0)
        spare -= extra
        keep.append(min(n, low) + extra)
    return keep


@dataclasses.dataclass(frozen=True)
class Pet(Classification):
    """Classification whose logits are the masked-LM logits of one verbaliser token per label.

    Attributes:
        template: the prompt, with {text} (and {text_pair}) filled in and one [MASK].
        verbalizer: one word per label, in label order; each must be a single token of the tokenizer.
    """

    name = "pet"
    head = "mlm"

    template: str = "{text} It was [MASK]."
    verbalizer: tuple[str, ...] = ()

    def check_label_names(self, names: list[str], data: ml_collections.ConfigDict) -> None:
        super().check_label_names(names, data)
        if len(self.verbalizer) != len(names):
            raise UserError(
                f"config task.verbalizer has {len(self.verbalizer)} word(s) {list(self.verbalizer)} but the "
                f"label set has {len(names)} {names}: give one word per label, in that order"
            )

    def token_ids(self, tokenizer) -> tuple[tuple[int, ...], int]:
        """(verbaliser token ids in label order, mask token id) of `tokenizer`: what the model needs.

        Raises:
            UserError: a verbaliser word that is not exactly one known token, two labels with the same
                word, or a tokenizer without a mask token.
        """
        if tokenizer.mask_token_id is None:
            raise UserError("config task.name='pet' needs a tokenizer with a mask token; this one has none")
        ids = []
        for word in self.verbalizer:
            pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(pieces) != 1 or pieces[0] == tokenizer.unk_token_id:
                shown = tokenizer.convert_ids_to_tokens(pieces)
                raise UserError(
                    f"config task.verbalizer: {word!r} must be one known token of the tokenizer, "
                    f"not {shown}; choose another word"
                )
            ids.append(pieces[0])
        if len(set(ids)) != len(ids):
            raise UserError(f"config task.verbalizer={list(self.verbalizer)}: two labels share a token")
        return tuple(ids), tokenizer.mask_token_id

    def tokenize(self, examples: list, tokenizer, data, cache_dir: str | None, path: str, names) -> dict:
        return self.features_for_prediction(examples, tokenizer, data.max_seq_length)

    def _layout(self, tokenizer, max_seq_length: int) -> tuple[dict, list[str], int]:
        """(token ids of the template's literal pieces by index, its slots in order, tokens left for the
        texts), the template checked."""
        pieces = _SLOT.split(self.template.replace(MASK, tokenizer.mask_token))
        literal = {i: tokenizer(p, add_special_tokens=False)["input_ids"] for i, p in enumerate(pieces[::2])}
        slots = [p[1:-1] for p in pieces[1::2]]  # "text" / "text_pair", in template order
        if sum(piece.count(tokenizer.mask_token_id) for piece in literal.values()) != 1:
            raise UserError(
                f"config task.template={self.template!r} must give exactly one mask token "
                f"({tokenizer.mask_token}) when tokenised"
            )
        budget = max_seq_length - 2 - sum(map(len, literal.values()))  # [CLS] and [SEP] as well
        if budget < len(slots):
            raise UserError(
                f"config task.template={self.template!r} leaves no room for the text in "
                f"data.max_seq_length={max_seq_length}"
            )
        return literal, slots, budget

    def text_positions(self, examples: list, tokenizer, max_seq_length: int) -> list[dict[str, tuple]]:
        """Where each example's texts sit in its row of `features_for_prediction`: for each slot ("text",
        "text_pair") its first position and the number of its tokens kept (from its start)."""
        literal, slots, budget = self._layout(tokenizer, max_seq_length)
        texts = {slot: self._token_lists(examples, slot, tokenizer) for slot in slots}
        out = []
        for row in range(len(examples)):
            keep = _fit([len(texts[slot][row]) for slot in slots], budget)
            position, spans = 1, {}  # after [CLS]
            for i, slot in enumerate(slots):
                position += len(literal[i])
                spans[slot] = (position, keep[i])
                position += keep[i]
            out.append(spans)
        return out

    def features_for_prediction(self, examples: list, tokenizer, max_seq_length: int) -> dict:
        """The filled templates as arrays of `jaxft.data.tokenize.tokenize`'s layout (`input_ids`,
        `token_type_ids`, `length`); see the module docstring for how texts are cut."""
        literal, slots, budget = self._layout(tokenizer, max_seq_length)
        texts = {slot: self._token_lists(examples, slot, tokenizer) for slot in slots}
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        mask_id, unk_id = tokenizer.mask_token_id, tokenizer.unk_token_id
        input_ids = np.full((len(examples), max_seq_length), pad_id, np.int32)
        lengths = np.zeros(len(examples), np.int32)
        truncated = 0
        for row in range(len(examples)):
            full = [len(texts[slot][row]) for slot in slots]
            keep = _fit(full, budget)
            truncated += keep != full
            ids = [tokenizer.cls_token_id]
            for i, slot in enumerate(slots):
                # The model reads the first [MASK] of a row: only the template's may be one.
                ids += literal[i] + [unk_id if t == mask_id else t for t in texts[slot][row][: keep[i]]]
            ids += literal[len(slots)] + [tokenizer.sep_token_id]
            input_ids[row, : len(ids)] = ids
            lengths[row] = len(ids)
        if examples:
            logging.info(
                "Filled %d templates; %d had their text cut to max_seq_length=%d",
                len(examples),
                truncated,
                max_seq_length,
            )
        return {"input_ids": input_ids, "token_type_ids": np.zeros_like(input_ids), "length": lengths}

    @staticmethod
    def _token_lists(examples: list, slot: str, tokenizer) -> list[list[int]]:
        texts = [getattr(example, slot) for example in examples]
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def export_config(self, names: list[str]) -> dict:
        """`BertForMaskedLM`: the label probabilities are the softmax of its logits at the [MASK] over the
        verbaliser tokens, for the template filled in as described in the module docstring."""
        return {
            "architectures": ["BertForMaskedLM"],
            "jaxft_prompt": {
                "template": self.template,
                "labels": list(names),
                "verbalizer": list(self.verbalizer),
            },
        }
