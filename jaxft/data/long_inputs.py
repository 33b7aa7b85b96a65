"""Texts longer than max_seq_length tokens: keep their head and tail, or cut them into overlapping windows.

`data.long_inputs` picks what a text that does not fit becomes (`jaxft.data.tokenize.tokenize` dispatches
here for anything but "truncate", which keeps the first tokens as it always did):

- "head_tail": the first H and the last T tokens of the text, H + T being what truncation keeps (Sun et al.
  2019, "How to Fine-Tune BERT for Text Classification?": head 128 + tail 382 was best at 512 tokens).
  H is `data.head_tokens`, or a quarter of the kept tokens when it is -1 (127 + 383 at 512).
- "windows": the text is cut into windows of the tokens that fit beside the special tokens; consecutive
  windows share `data.window_stride` tokens (the Hugging Face tokenizers' `stride`), and every window is a row
  of its own, with [CLS] and [SEP]; "example_index" says whose window it is.

Both work on one untruncated encoding per example: its special tokens stay where the tokenizer's template put
them ([CLS] A [SEP] B [SEP], or RoBERTa's <s> A </s></s> B </s>), and only the positions of the text tokens
are chosen, so no template is rewritten by hand and the token type ids come along.

Pairs. head_tail: each text keeps as many tokens as "longest_first" truncation leaves it (usually the shorter
text whole and the rest for the longer one), and a text that loses tokens keeps its head and tail instead of
its start. windows: the longer text (the second on a tie) is cut into windows and the other one is in every
window, whole when it takes at most half the room, else its first half-room tokens.
"""

import dataclasses
import logging

import numpy as np

from jaxft.errors import UserError

logger = logging.getLogger(__name__)

MODES = ("truncate", "head_tail", "windows")


@dataclasses.dataclass(frozen=True)
class LongInputs:
    """What a text longer than max_seq_length tokens becomes (the `data.*` keys of the same meaning).

    Attributes:
        mode: "truncate", "head_tail" or "windows" (`data.long_inputs`).
        head_tokens: head_tail: tokens kept from the start of a cut text, the rest from its end; -1: a
            quarter of the tokens kept (`data.head_tokens`).
        stride: windows: tokens shared by consecutive windows (`data.window_stride`).
        max_windows: windows: at most this many windows per example, its first ones; 0: no cap
            (`data.max_windows`).
    """

    mode: str = "truncate"
    head_tokens: int = -1
    stride: int = 0
    max_windows: int = 0

    @classmethod
    def from_data(cls, data) -> "LongInputs":
        """The settings of a config's `data` section (checked by `jaxft.config.check`)."""
        return cls(
            str(data.long_inputs), int(data.head_tokens), int(data.window_stride), int(data.max_windows)
        )

    def key(self) -> dict | None:
        """The settings that decide the tokens, for the token cache's key; None for "truncate", whose key
        stays what it always was (its tokens do not depend on the other settings)."""
        if self.mode == "head_tail":
            return {"mode": self.mode, "head_tokens": self.head_tokens}
        if self.mode == "windows":
            return {"mode": self.mode, "stride": self.stride, "max_windows": self.max_windows}
        return None


TRUNCATE = LongInputs()


def truncated_lengths(lengths: list[int], room: int) -> list[int]:
    """The tokens each text keeps under "longest_first" truncation to `room` text tokens (as the Rust
    tokenizers compute it): a single text min(n, room); a pair that does not fit keeps the shorter text
    whole when it takes at most half the room and gives the rest to the longer one, else half each (the
    odd token to the longer, or to the second text on a tie)."""
    if len(lengths) == 1:
        return [min(lengths[0], room)]
    first, second = lengths
    if first + second <= room:
        return [first, second]
    swap = first > second
    short, long_ = (second, first) if swap else (first, second)
    long_ = short if short > room else max(short, room - short)
    if short + long_ > room:
        short = room // 2
        long_ = short + room % 2
    return [long_, short] if swap else [short, long_]


def select(
    sequence_ids: np.ndarray, max_seq_length: int, settings: LongInputs
) -> tuple[list[np.ndarray], bool]:
    """The positions of one untruncated encoding that each row keeps, and whether any token was left out.

    Args:
        sequence_ids: per position, the text it belongs to (0, or 1 for a pair's second) or -1 for a special
            token (the tokenizer's `sequence_ids` with None as -1).
        max_seq_length: the width of a row, special tokens included.
        settings: "head_tail" or "windows".

    Returns:
        (rows, cut): for "head_tail" one row, for "windows" one per window; each an increasing int array of
        positions, the special tokens among them.

    Raises:
        UserError: the special tokens leave no room for text, or a window holds no more text tokens than
            `data.window_stride`.
    """
    special = np.flatnonzero(sequence_ids < 0)
    texts = [np.flatnonzero(sequence_ids == s) for s in range(int(sequence_ids.max(initial=0)) + 1)]
    room = max_seq_length - len(special)
    if room < 1:
        raise UserError(
            f"config data.max_seq_length={max_seq_length} leaves no room for text after {len(special)} "
            "special tokens"
        )
    lengths = [len(t) for t in texts]
    if sum(lengths) <= room:
        return [np.arange(len(sequence_ids))], False
    if settings.mode == "head_tail":
        keep = [special]
        for text, kept in zip(texts, truncated_lengths(lengths, room), strict=True):
            head = min(kept // 4 if settings.head_tokens < 0 else settings.head_tokens, kept)
            keep += [text[:head], text[len(text) - (kept - head) :]]
        return [np.sort(np.concatenate(keep))], True
    if settings.mode != "windows":
        raise ValueError(f"no rows to select for long_inputs={settings.mode!r}")
    windowed = 0 if len(texts) == 1 or lengths[0] > lengths[1] else 1
    others = [t[: room // 2] for i, t in enumerate(texts) if i != windowed]
    width = room - sum(len(t) for t in others)
    if settings.stride >= width:
        raise UserError(
            f"config data.window_stride={settings.stride} must be less than the {width} text tokens a window "
            f"of data.max_seq_length={max_seq_length} holds here (after {len(special)} special tokens"
            + (f" and {room - width} of the other text)" if others else ")")
        )
    text = texts[windowed]
    count = 1 + -(-max(len(text) - width, 0) // (width - settings.stride))
    if settings.max_windows:
        count = min(count, settings.max_windows)
    step = width - settings.stride
    rows = [
        np.sort(np.concatenate([special, *others, text[k * step : k * step + width]])) for k in range(count)
    ]
    cut = sum(len(t) for t in others) < sum(lengths) - len(text) or (count - 1) * step + width < len(text)
    return rows, bool(cut)


def tokenize_long(
    examples: list, tokenizer, max_seq_length: int, settings: LongInputs, *, batch_size: int = 1000
) -> tuple[dict[str, np.ndarray], int]:
    """`jaxft.data.tokenize.tokenize` under "head_tail" or "windows": one untruncated tokenizer call per
    `batch_size` examples, then `select` on each.

    Returns:
        (features, num_cut): the features of `tokenize` (rows: examples for "head_tail", windows for
        "windows", which adds "example_index", int32 [rows]: the example of each row, increasing), and the
        examples that lost tokens (to head_tail's cut, to `max_windows`, or a pair's other text cut in half).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    has_pairs = bool(examples) and examples[0].text_pair is not None
    ids_rows, type_rows, owners = [], [], []
    num_cut = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        encoded = tokenizer(
            [example.text for example in chunk],
            [example.text_pair for example in chunk] if has_pairs else None,
            truncation=False,
            padding=False,
            return_token_type_ids=True,
            return_attention_mask=False,
            verbose=False,  # the "longer than the model's maximum" warning: cutting is what comes next
        )
        if encoded.encodings is None:
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer")
        for index, encoding in enumerate(encoded.encodings, start=start):
            ids = np.asarray(encoding.ids, np.int32)
            types = np.asarray(encoding.type_ids, np.int32)
            sequence_ids = np.array([-1 if s is None else s for s in encoding.sequence_ids], np.int64)
            rows, cut = select(sequence_ids, max_seq_length, settings)
            num_cut += cut
            for positions in rows:
                ids_rows.append(ids[positions])
                type_rows.append(types[positions])
                owners.append(index)
    count = len(ids_rows)
    input_ids = np.full((count, max_seq_length), pad_id, np.int32)
    token_type_ids = np.zeros((count, max_seq_length), np.int32)
    lengths = np.zeros(count, np.int32)
    for row, (ids, types) in enumerate(zip(ids_rows, type_rows, strict=True)):
        input_ids[row, : len(ids)] = ids
        token_type_ids[row, : len(types)] = types
        lengths[row] = len(ids)
    features = {"input_ids": input_ids, "token_type_ids": token_type_ids, "length": lengths}
    if settings.mode == "windows":
        features["example_index"] = np.asarray(owners, np.int32).reshape(count)
    if examples:
        logger.info(
            "Tokenized %d examples into %d rows (long_inputs=%s, max_seq_length=%d); %d (%.1f%%) lost tokens",
            len(examples),
            count,
            settings.mode,
            max_seq_length,
            num_cut,
            100.0 * num_cut / len(examples),
        )
    return features, num_cut
