"""Unlabelled text for masked-LM pre-training: a plain-text reader, and texts as rows of token ids.

A `.txt` file holds one document a line; blank lines are skipped. The texts become rows of
`data.max_seq_length` tokens one of two ways (`token_rows`):

- packed (run_mlm's `group_texts`): every document's tokens, joined by the separator token, form one stream
  that is cut into pieces of `max_seq_length - 2` tokens, each row [CLS] piece [SEP]. No padding but the
  last row's, and nothing is cut off; a document may span rows.
- one row per document, [CLS] text [SEP], the text cut to fit.

Beside the ids each row carries `word_pieces`: `SPECIAL` (0) for the special tokens and padding, which are
never masked (nor is a special token written in a text, [UNK] included, as in Hugging Face's collator),
`WORD_START` (1) for a word's first piece and `CONTINUATION` (2) for its other pieces, from the fast
tokenizer's word ids (WordPiece's `##` pieces, byte-level BPE's pieces within a space-separated word). A
piece right after a special token always counts as a word start, so that whole-word masking never reaches
back across [CLS] into a word that began in the row before.
"""

import logging

import numpy as np

from jaxft.data.example import Example
from jaxft.data.lines import check_unicode, numbered_lines
from jaxft.errors import UserError

logger = logging.getLogger(__name__)

SPECIAL, WORD_START, CONTINUATION = 0, 1, 2  # values of the `word_pieces` feature


def read_text_lines(path: str) -> list[Example]:
    """The documents of a plain-text file, one a line (gzip when it ends in .gz), blank lines skipped.

    Raises:
        UserError: a missing or unreadable file, a line that is not UTF-8 text, or no text at all.
    """
    examples = []
    for number, line in numbered_lines(path):
        text = line.strip()
        if text:
            where = f"{path}:{number}"
            examples.append(Example(check_unicode(where, text, "the text"), None, None, where))
    if not examples:
        raise UserError(f"{path}: the file contains no text (one document a line)")
    return examples


def _pieces(word_ids: list) -> np.ndarray:
    """`WORD_START` / `CONTINUATION` for each token of one text, from the tokenizer's word ids."""
    words = np.asarray([-1 if w is None else w for w in word_ids], np.int64)
    starts = np.ones(len(words), bool)
    starts[1:] = (words[1:] != words[:-1]) | (words[1:] < 0)
    return np.where(starts, WORD_START, CONTINUATION).astype(np.int8)


def _tokenized(texts: list[str], tokenizer, batch_size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each text's token ids (no special tokens) and their `word_pieces` values."""
    ids, pieces = [], []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size],
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # packed documents are longer than the model takes: that is the point
        )
        if encoded.encodings is None:
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer")
        for row, encoding in zip(encoded["input_ids"], encoded.encodings, strict=True):
            ids.append(np.asarray(row, np.int32))
            pieces.append(_pieces(encoding.word_ids))
    return ids, pieces


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(cls, sep, pad) ids of `tokenizer`; pad falls back to 0.

    Raises:
        UserError: a tokenizer without a classifier or separator token.
    """
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise UserError(
            "task.name='mlm' needs a tokenizer with a classifier and a separator token (BERT's [CLS] and "
            "[SEP], RoBERTa's <s> and </s>); this one lacks one"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return tokenizer.cls_token_id, tokenizer.sep_token_id, pad


def token_rows(
    examples: list[Example], tokenizer, max_seq_length: int, *, packing: bool, batch_size: int = 1000
) -> dict[str, np.ndarray]:
    """The examples' texts as rows of at most `max_seq_length` tokens (module docstring).

    Args:
        examples: the documents (their `text`; a text pair is not read).
        tokenizer: a fast tokenizer (`jaxft.data.tokenize.load_tokenizer`).
        max_seq_length: tokens per row, [CLS] and [SEP] included (at least 3).
        packing: pack the documents into full rows (True) or give each a row of its own (False).
        batch_size: texts per tokenizer call.

    Returns:
        "input_ids", "token_type_ids" (zeros) and "word_pieces" (int8), [R, max_seq_length], padded with the
        pad id and 0; "length" [R], tokens before padding; "example_index" [R], the document each row begins
        in (packed) or holds.
    """
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length {max_seq_length} leaves no room between [CLS] and [SEP]")
    cls_id, sep_id, pad_id = special_ids(tokenizer)
    ids, pieces = _tokenized([example.text for example in examples], tokenizer, batch_size)
    room = max_seq_length - 2
    if packing:
        rows_ids, rows_pieces, owner = _packed(ids, pieces, room, sep_id)
        tokens = sum(map(len, ids))
        logger.info("Packed %d documents (%d tokens) into %d rows of %d", len(ids), tokens, len(owner), room)
    else:
        rows_ids = [row[:room] for row in ids]
        rows_pieces = [row[:room] for row in pieces]
        owner = np.arange(len(ids), dtype=np.int32)
        cut = sum(len(row) > room for row in ids)
        logger.info("%d documents, a row each; %d cut to max_seq_length=%d", len(ids), cut, max_seq_length)
    n = len(rows_ids)
    features = {
        "input_ids": np.full((n, max_seq_length), pad_id, np.int32),
        "token_type_ids": np.zeros((n, max_seq_length), np.int32),
        "word_pieces": np.zeros((n, max_seq_length), np.int8),
        "length": np.zeros(n, np.int32),
        "example_index": np.asarray(owner, np.int32),
    }
    for row, (row_ids, row_pieces) in enumerate(zip(rows_ids, rows_pieces, strict=True)):
        size = len(row_ids)
        features["input_ids"][row, : size + 2] = [cls_id, *row_ids, sep_id]
        features["word_pieces"][row, 1 : size + 1] = row_pieces
        features["length"][row] = size + 2
    pieces = features["word_pieces"]
    # A special token written in a text ([MASK], [UNK], a separator) is never chosen either, as in Hugging
    # Face's collator; the piece after any special token starts a unit of its own.
    pieces[np.isin(features["input_ids"], list(tokenizer.all_special_ids))] = SPECIAL
    before = np.zeros_like(pieces)
    before[:, 1:] = pieces[:, :-1]
    pieces[(pieces == CONTINUATION) & (before == SPECIAL)] = WORD_START
    return features


def _packed(ids: list[np.ndarray], pieces: list[np.ndarray], room: int, sep_id: int):
    """The documents joined by `sep_id` and cut into pieces of `room` tokens: (ids, word_pieces, the document
    each piece begins in)."""
    kept = [i for i, row in enumerate(ids) if len(row)]  # a text of no tokens adds nothing but a separator
    if not kept:
        return [], [], np.zeros(0, np.int32)
    stream_ids, stream_pieces, stream_owner = [], [], []
    for position, i in enumerate(kept):
        if position:
            stream_ids.append(np.asarray([sep_id], np.int32))
            stream_pieces.append(np.asarray([SPECIAL], np.int8))
            stream_owner.append(np.asarray([i], np.int32))
        stream_ids.append(ids[i])
        stream_pieces.append(pieces[i])
        stream_owner.append(np.full(len(ids[i]), i, np.int32))
    all_ids, all_pieces = np.concatenate(stream_ids), np.concatenate(stream_pieces)
    all_owner = np.concatenate(stream_owner)
    starts = range(0, len(all_ids), room)
    return (
        [all_ids[s : s + room] for s in starts],
        [all_pieces[s : s + room] for s in starts],
        np.asarray([all_owner[s] for s in starts], np.int32),
    )
