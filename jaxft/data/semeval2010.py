"""SemEval-2010 Task 8 files as distributed (TRAIN_FILE.TXT, TEST_FILE_FULL.TXT): relation examples.

Each example is a block of four lines, CRLF-terminated in the official release (LF is read too):

    8001<TAB>"The <e1>leaflet</e1> explains the new <e2>timetable</e2>."
    Message-Topic(e1,e2)
    Comment: (free text, ignored)
    <blank>

The sentence sits between one pair of outer quotes (quotes inside it are kept as written); the tags are
removed and their places become the [start, end) character spans the relation task reads: `<e1>` is the
head, `<e2>` the tail, so the label is the file's directed one as written (19 classes: nine relations in
two directions, and `Other`), and [E1] marks the same nominal the label's "e1" names. Anything else (a line
out of place, a tag missing or doubled, a label outside the 19) is a `UserError` naming file:line.

This reader is chosen by `data.format="semeval2010"` rather than by sniffing the file: the release's
`.TXT` extension says nothing, and an explicit format lets the config check refuse it for other tasks.
"""

import re

from jaxft.data import lines
from jaxft.data.relations import MARKERS, RelationExample
from jaxft.errors import UserError

RELATIONS = (
    "Cause-Effect",
    "Component-Whole",
    "Content-Container",
    "Entity-Destination",
    "Entity-Origin",
    "Instrument-Agency",
    "Member-Collection",
    "Message-Topic",
    "Product-Producer",
)
OTHER = "Other"
# The scorer's 19 labels (semeval2010_task8_scorer-v1.2.pl accepts exactly these).
LABELS = tuple(f"{r}({d})" for r in RELATIONS for d in ("e1,e2", "e2,e1")) + (OTHER,)

_SENTENCE = re.compile(r'(\d+)\t"(.*)"')
_TAGS = ("<e1>", "</e1>", "<e2>", "</e2>")


def is_semeval_label_set(names) -> bool:
    """Whether every name is one of SemEval-2010's 19 labels (the set the official score is defined on)."""
    return bool(names) and set(names) <= set(LABELS)


def parse_sentence(where: str, line: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """(text without the tags, e1 span, e2 span) of a sentence line `id<TAB>"...<e1>..</e1>..<e2>..</e2>.."`.

    Raises:
        UserError: naming `where` when the line is not of that form.
    """
    match = _SENTENCE.fullmatch(line)
    if match is None:
        raise UserError(f'{where}: expected a sentence line `id<TAB>"text"`, found {line[:60]!r}')
    marked = match.group(2)
    for tag in _TAGS:
        if marked.count(tag) != 1:
            raise UserError(f"{where}: the sentence must hold {tag} exactly once, found {marked.count(tag)}")
    written = [marker for marker in MARKERS if marker in marked]
    if written:  # the task writes these around the entities: one in the text would stand for an entity
        raise UserError(f"{where}: the sentence contains {written[0]}, a marker the relation task writes")
    pieces = re.split(r"(</?e[12]>)", marked)  # text, tag, text, tag, ... in order
    order = pieces[1::2]
    if order not in (["<e1>", "</e1>", "<e2>", "</e2>"], ["<e2>", "</e2>", "<e1>", "</e1>"]):
        raise UserError(f"{where}: the entity tags are nested or out of order: {' '.join(order)}")
    text, starts, spans = "", {}, {}
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            text += piece
        elif piece.startswith("</"):
            spans[piece[2:4]] = (starts[piece[2:4]], len(text))
        else:
            starts[piece[1:3]] = len(text)
    for name, (start, end) in spans.items():
        if not text[start:end].strip():
            raise UserError(f"{where}: the entity <{name}> is empty")
    if not text.strip():
        raise UserError(f"{where}: the sentence is empty")
    return text, spans["e1"], spans["e2"]


def read_semeval2010(path: str, *, require_label: bool = True) -> list[RelationExample]:
    """The examples of a SemEval-2010 Task 8 file (optionally .gz), in file order.

    Args:
        path: TRAIN_FILE.TXT or TEST_FILE_FULL.TXT, or a file of the same blocks.
        require_label: whether each sentence must be followed by its label and Comment line. When False (to
            predict), a sentence line may stand alone (blank lines between sentences are optional); a label
            that is there is still read and checked.

    Returns:
        `RelationExample`s: the sentence without tags, head = the <e1> span, tail = the <e2> span, label = the
        directed label as written (e.g. "Cause-Effect(e2,e1)") or None; source "path:line" of the sentence.

    Raises:
        UserError: naming file:line, for a line out of place or malformed, or an unknown label.
    """
    examples = []
    expect = "sentence"  # then "label", "comment", "blank"
    current = None  # (text, head, tail, source) of the sentence whose block is open
    for number, raw in lines.numbered_lines(path):
        line = raw.rstrip("\r\n")
        where = f"{path}:{number}"
        if expect == "label" and (not line.strip() or _SENTENCE.fullmatch(line)):
            if require_label:
                raise UserError(f"{where}: expected the relation label of the sentence on line {number - 1}")
            examples.append(RelationExample(current[0], None, None, current[3], current[1], current[2]))
            expect = "sentence"
        if expect == "sentence":
            if not line.strip():
                continue
            text, head, tail = parse_sentence(where, line)
            current = (text, head, tail, where)
            expect = "label"
        elif expect == "label":
            label = line.strip()
            if label not in LABELS:
                raise UserError(
                    f"{where}: {label[:60]!r} is not a SemEval-2010 label (one of the nine relations with "
                    "(e1,e2) or (e2,e1), or Other)"
                )
            examples.append(RelationExample(current[0], None, label, current[3], current[1], current[2]))
            expect = "comment"
        elif expect == "comment":
            if not line.startswith("Comment:"):
                raise UserError(f"{where}: expected the `Comment:` line of the block, found {line[:60]!r}")
            expect = "blank"
        else:
            if line.strip():
                raise UserError(f"{where}: expected a blank line after the Comment line, found {line[:60]!r}")
            expect = "sentence"
    if expect == "label":
        if require_label:
            raise UserError(f"{path}: the file ends before the relation label of its last sentence")
        examples.append(RelationExample(current[0], None, None, current[3], current[1], current[2]))
    elif expect == "comment":
        raise UserError(f"{path}: the file ends before the `Comment:` line of its last block")
    if not examples:
        raise UserError(f"{path}: the file contains no examples")
    return examples
