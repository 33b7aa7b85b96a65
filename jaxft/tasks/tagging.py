"""Word-level tagging data: CoNLL column files, IOB1 -> IOB2, and word <-> sub-token alignment.

A CoNLL file holds one token per line, its columns separated by whitespace (CoNLL-2003: `token POS chunk
NER`), a blank line between sentences and `-DOCSTART-` lines between documents. Every problem (a line with
another number of columns than the file's first, a tag that is not `O`, `B-TYPE` or `I-TYPE`, bytes that are
not UTF-8) is a `UserError` naming the file and line.

Alignment: BERT sees sub-tokens, the report counts words. Each word's *first* sub-token carries its label and
its prediction; with `subword_labels="all"` the other sub-tokens are trained too (a `B-X` word's later pieces
as `I-X`, so the token sequence stays valid IOB2) but predictions are still read from the first piece.
Words with no sub-token inside `max_seq_length` (cut by truncation, or empty after tokenisation) are
*predicted "O"*: they stay in the evaluation, so truncation lowers recall instead of silently dropping words.
"""

import dataclasses
import logging
import re

import numpy as np

from jaxft.data import readers
from jaxft.errors import UserError
from jaxft.tasks.base import IGNORE

_TAG = re.compile(r"(?:[BI]-\S+|O)")
DOCSTART = "-DOCSTART-"


@dataclasses.dataclass(frozen=True)
class Sentence:
    """Words with their tags (IOB2 after reading), and where the sentence starts.

    Attributes:
        words: the tokens, as in the file.
        tags: one tag per word, or None for unlabelled input (prediction).
        source: "path:line" of the first word; word i is on line `line + i`.
    """

    words: tuple[str, ...]
    tags: tuple[str, ...] | None
    source: str

    def where(self, index: int) -> str:
        """ "path:line" of word `index`."""
        path, line = self.source.rsplit(":", 1)
        return f"{path}:{int(line) + index}"


def iob1_to_iob2(tags: list[str] | tuple[str, ...]) -> list[str]:
    """IOB1 (I- starts an entity unless it follows one of its type) to IOB2 (B- starts every entity)."""
    out = []
    for tag in tags:
        if tag.startswith("I-"):
            previous = out[-1] if out else "O"
            if previous == "O" or previous[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        out.append(tag)
    return out


def read_conll(path: str, *, tag_column: int = -1, scheme: str = "iob2", require_tags: bool = True):
    """Reads the sentences of a CoNLL column file.

    Args:
        path: the file (optionally `.gz`).
        tag_column: the column holding the tag (-1: the last).
        scheme: "iob1" (converted to IOB2, as CoNLL-2003 needs) or "iob2" (taken as is).
        require_tags: False for prediction input: only the first column (the word) is read.

    Returns:
        The sentences in file order.

    Raises:
        UserError: naming the file and line of the first problem.
    """
    sentences, words, tags, start, columns = [], [], [], 0, None

    def flush():
        if words:
            converted = iob1_to_iob2(tags) if scheme == "iob1" else tags
            sentences.append(
                Sentence(tuple(words), tuple(converted) if require_tags else None, f"{path}:{start}")
            )
        words.clear()
        tags.clear()

    for number, line in readers.numbered_lines(path):
        line = line.rstrip("\r\n")
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            flush()
            continue
        if columns is None:
            columns = len(fields)
            if require_tags and columns < 2:
                raise UserError(
                    f"{path}:{number}: found 1 column; a CoNLL line is `word ... tag`, whitespace-separated"
                )
            if require_tags and (tag_column == 0 or not -columns < tag_column < columns):
                raise UserError(
                    f"{path}:{number}: task.tag_column={tag_column} is outside the line's {columns} columns "
                    f"(the tag is column 1 to {columns - 1}, or -1 for the last; column 0 is the word)"
                )
        if len(fields) != columns:
            raise UserError(
                f"{path}:{number}: expected {columns} columns (as on the file's first line), "
                f"found {len(fields)}"
            )
        if not words:
            start = number
        words.append(fields[0])
        if require_tags:
            tag = fields[tag_column]
            if not _TAG.fullmatch(tag):
                raise UserError(
                    f"{path}:{number}: tag {tag!r} (column {tag_column}, task.tag_column) is not O, B-TYPE "
                    "or I-TYPE"
                )
            tags.append(tag)
    flush()
    if not sentences:
        raise UserError(f"{path}: the file contains no sentences")
    return sentences


def tag_vocab(sentences: list[Sentence], given=None) -> list[str]:
    """The tag set: `given` (data.labels), else "O" then B-/I- of every entity type seen, sorted by type.

    Both B- and I- of every type are included even when one never occurs in train, so an evaluation file is
    not refused for an I- tag of a type whose train entities were all one word long.
    """
    if given is not None:
        names = [str(tag) for tag in given]
        bad = [tag for tag in names if not _TAG.fullmatch(tag)]
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
