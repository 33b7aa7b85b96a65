"""Word-level tagging: tag vocabularies, and word <-> sub-token alignment (the files: `jaxft.data.conll`).

Alignment: BERT sees sub-tokens, the report counts words. Each word's *first* sub-token carries its label and
its prediction; with `subword_labels="all"` the other sub-tokens are trained too (a `B-X` word's later pieces
as `I-X`, so the token sequence stays valid IOB2) but predictions are still read from the first piece.
Words with no sub-token inside `max_seq_length` (cut by truncation, or empty after tokenisation) are
*predicted "O"*: they stay in the evaluation, so truncation lowers recall instead of silently dropping words.
"""

import logging

import numpy as np

from jaxft.data.conll import TAG, Sentence
from jaxft.errors import UserError
from jaxft.tasks.base import IGNORE


def tag_vocab(sentences: list[Sentence], given=None) -> list[str]:
    """The tag set: `given` (data.labels), else "O" then B-/I- of every entity type seen, sorted by type.

    Both B- and I- of every type are included even when one never occurs in train, so an evaluation file is
    not refused for an I- tag of a type whose train entities were all one word long.
    """
    if given is not None:
        names = [str(tag) for tag in given]
        bad = [tag for tag in names if not TAG.fullmatch(tag)]
        if bad:
            raise UserError(f"data.labels: tag {bad[0]!r} is not O, B-TYPE or I-TYPE")
        if len(set(names)) != len(names) or "O" not in names:
            raise UserError(f"data.labels={names} must list each tag once, and 'O'")
        return names
    types = sorted({tag[2:] for sentence in sentences for tag in sentence.tags if tag != "O"})
    return ["O"] + [f"{prefix}-{name}" for name in types for prefix in "BI"]


def encode_tags(sentences: list[Sentence], names: list[str]) -> list[np.ndarray]:
    """Tag ids per sentence; a tag outside `names` is a `UserError` naming its file and line."""
    ids = {name: i for i, name in enumerate(names)}
    out = []
    for sentence in sentences:
        for i, tag in enumerate(sentence.tags):
            if tag not in ids:
                raise UserError(
                    f"{sentence.where(i)}: tag {tag!r} (in IOB2, as tags are read) is not in the tag set "
                    f"{names} (tags come from the train split or data.labels)"
                )
        out.append(np.array([ids[tag] for tag in sentence.tags], np.int32))
    return out


def continuation_ids(names: list[str]) -> np.ndarray:
    """For each tag id, the id a word's later sub-tokens get with subword_labels="all": B-X -> I-X."""
    ids = {name: i for i, name in enumerate(names)}
    return np.array(
        [ids.get("I-" + name[2:], i) if name.startswith("B-") else i for i, name in enumerate(names)]
    )


def tokenize_words(
    sentences: list[Sentence],
    tokenizer,
    max_seq_length: int,
    tag_ids: list[np.ndarray] | None,
    *,
    subword_labels: str = "first",
    continuation: np.ndarray | None = None,
    batch_size: int = 1000,
) -> dict[str, np.ndarray]:
    """Tokenises pre-split words and aligns word tags to sub-tokens.

    Returns:
        "input_ids", "token_type_ids" (int32 [N, max_seq_length]), "length" (int32 [N]) as
        `jaxft.data.tokenize.tokenize` gives, plus "labels" (int32 [N, max_seq_length]: the tag id at trained
        positions, IGNORE elsewhere; all IGNORE without `tag_ids`) and "word_index" (int32 [N,
        max_seq_length]: the word whose first sub-token sits there, -1 elsewhere).
    """
    n = len(sentences)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    features = {
        "input_ids": np.full((n, max_seq_length), pad_id, np.int32),
        "token_type_ids": np.zeros((n, max_seq_length), np.int32),
        "length": np.zeros(n, np.int32),
        "labels": np.full((n, max_seq_length), IGNORE, np.int32),
        "word_index": np.full((n, max_seq_length), -1, np.int32),
    }
    lost_words = lost_sentences = 0
    for begin in range(0, n, batch_size):
        chunk = sentences[begin : begin + batch_size]
        encoded = tokenizer(
            [list(sentence.words) for sentence in chunk],
            is_split_into_words=True,
            truncation=True,
            max_length=max_seq_length,
            return_token_type_ids=True,
            return_attention_mask=False,
        )
        for row, sentence in enumerate(chunk, start=begin):
            ids = encoded["input_ids"][row - begin]
            word_ids = np.array([-1 if w is None else w for w in encoded.word_ids(row - begin)], np.int64)
            features["input_ids"][row, : len(ids)] = ids
            features["token_type_ids"][row, : len(ids)] = encoded["token_type_ids"][row - begin]
            features["length"][row] = len(ids)
            previous = np.concatenate([[-1], word_ids[:-1]])
            first = (word_ids >= 0) & (word_ids != previous)
            features["word_index"][row, : len(ids)] = np.where(first, word_ids, -1)
            missing = len(sentence.words) - int(first.sum())
            lost_words += missing
            lost_sentences += missing > 0
            if tag_ids is not None:
                tags = tag_ids[row]
                labels = np.full(len(ids), IGNORE, np.int64)
                labels[first] = tags[word_ids[first]]
                if subword_labels == "all":
                    later = (word_ids >= 0) & ~first
                    labels[later] = continuation[tags[word_ids[later]]]
                features["labels"][row, : len(ids)] = labels
    if lost_words:
        logging.info(
            "%d words in %d of %d sentences have no sub-token within max_seq_length=%d (cut by truncation or "
            "empty after tokenisation): they are predicted 'O' and still count in the evaluation",
            lost_words,
            lost_sentences,
            n,
            max_seq_length,
        )
    return features


def word_predictions(
    sentence: Sentence, token_predictions: np.ndarray, word_index: np.ndarray, names
) -> list:
    """Tags per word from a sentence's per-position predictions; words without a first sub-token get "O"."""
    tags = ["O"] * len(sentence.words)
    positions = np.flatnonzero(word_index >= 0)
    for position in positions:
        tags[word_index[position]] = names[int(token_predictions[position])]
    return tags
