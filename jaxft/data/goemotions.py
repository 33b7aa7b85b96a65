"""GoEmotions files as distributed (train.tsv, dev.tsv, test.tsv of the "simplified" split): multi-label
examples whose labels are emotion names.

Each line is `text<TAB>label ids<TAB>comment id`, no header, the ids comma-separated (`3,27`). The names are
those of `emotions.txt` beside the data file, one per line in id order (28 in the release, 27 = neutral).
The files were written by pandas: a text holding a quote is quoted CSV-style (`"He said ""no"" "`, 1,097 of
the train lines), so each line is parsed as one tab-separated CSV record and such a text comes back as
`He said "no"`, as pandas and the `csv` module read it; no field spans lines. Texts are stripped of
surrounding whitespace. A line without exactly three fields, an unbalanced quote, an empty text or an id
that is not a listed one is a `UserError` naming file:line.

The reader is chosen by `data.format="goemotions"` (task.name="multilabel"), not by sniffing: a plain TSV
with a header-less id column is not recognisable as GoEmotions, and the format says where the names live.
"""

import csv
import os

from jaxft.data import lines
from jaxft.data.example import MultiLabelExample
from jaxft.errors import UserError

NAMES_FILE = "emotions.txt"


def label_names(path: str) -> list[str]:
    """The emotion names of `emotions.txt` in the directory of data file `path`, in id order.

    Raises:
        UserError: the file is missing, empty, or lists a name twice (naming the file and line).
    """
    names_path = os.path.join(os.path.dirname(path), NAMES_FILE)
    if not os.path.isfile(names_path):
        raise UserError(
            f"{names_path}: no such file (GoEmotions' label names, one per line in id order, are read from "
            f"beside {os.path.basename(path)})"
        )
    names = []
    for number, raw in lines.numbered_lines(names_path):
        name = raw.strip()
        if not name:
            continue
        if name in names:
            raise UserError(f"{names_path}:{number}: the name {name!r} is listed twice")
        names.append(name)
    if not names:
        raise UserError(f"{names_path}: lists no label names")
    return names


def _labels(where: str, cell: str, names: list[str]) -> tuple[str, ...]:
    labels = []
    for part in cell.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) >= len(names):
            raise UserError(
                f"{where}: label id {part!r} is not one of 0-{len(names) - 1} (the lines of {NAMES_FILE})"
            )
        labels.append(names[int(part)])
    return tuple(dict.fromkeys(labels))  # file order, duplicates gone


def read_goemotions(path: str, *, require_label: bool = True) -> list[MultiLabelExample]:
    """The examples of a GoEmotions TSV file (optionally .gz), in file order.

    Args:
        path: train.tsv, dev.tsv or test.tsv, with emotions.txt in the same directory.
        require_label: whether the label ids are read (and emotions.txt needed); False gives labels None.

    Returns:
        `MultiLabelExample`s with the emotion names of each line's ids (e.g. ("anger", "neutral")); source
        "path:line".

    Raises:
        UserError: naming file:line, for a malformed line, an empty text or an unknown label id.
    """
    names = label_names(path) if require_label else None
    examples = []
    for number, raw in lines.numbered_lines(path):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            fields = next(csv.reader([line], delimiter="\t", strict=True))
        except csv.Error as e:
            raise UserError(f"{where}: malformed quoting: {lines.one_line(e)}") from None
        if len(fields) != 3:
            raise UserError(
                f"{where}: expected 3 tab-separated fields (text, label ids, comment id), found {len(fields)}"
            )
        text = lines.check_unicode(where, fields[0].strip(), "the text")
        if not text:
            raise UserError(f"{where}: the text is empty")
        labels = None
        if names is not None:
            if not fields[1].strip():
                raise UserError(f"{where}: the label ids (second field) are empty")
            labels = _labels(where, fields[1], names)
        examples.append(MultiLabelExample(text, None, labels, where))
    if not examples:
        raise UserError(f"{path}: the file contains no examples")
    return examples
