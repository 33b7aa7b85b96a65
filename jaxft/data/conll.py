"""CoNLL column files: sentences of words with their IOB2 tags.

A CoNLL file holds one token per line, its columns separated by whitespace (CoNLL-2003: `token POS chunk
NER`), a blank line between sentences and `-DOCSTART-` lines between documents. Every problem (a line with
another number of columns than the file's first, a tag that is not `O`, `B-TYPE` or `I-TYPE`, bytes that are
not UTF-8) is a `UserError` naming the file and line. IOB1 files (CoNLL-2003) are converted to IOB2.
"""

import dataclasses
import re

from jaxft.data import lines
from jaxft.errors import UserError

TAG = re.compile(r"(?:[BI]-\S+|O)")
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

    for number, line in lines.numbered_lines(path):
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
            if not TAG.fullmatch(tag):
                raise UserError(
                    f"{path}:{number}: tag {tag!r} (column {tag_column}, task.tag_column) is not O, B-TYPE "
                    "or I-TYPE"
                )
            tags.append(tag)
    flush()
    if not sentences:
        raise UserError(f"{path}: the file contains no sentences")
    return sentences
