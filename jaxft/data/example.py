"""The records the text readers return: a text (or text pair), its raw label (or label set) and its source."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Example:
    """One text (or text pair) with its raw label.

    Attributes:
        text: The text, with surrounding whitespace stripped.
        text_pair: The second text of a sentence-pair task, or None.
        label: The raw label as a string (JSON numbers and booleans become `str(value)`), or None when the
            file has no labels and labels are not required.
        source: "path:line", for error messages about this example.
    """

    text: str
    text_pair: str | None
    label: str | None
    source: str


@dataclasses.dataclass(frozen=True)
class MultiLabelExample:
    """A text (pair) with its set of raw labels (in file order, without duplicates)."""

    text: str
    text_pair: str | None
    labels: tuple[str, ...] | None
    source: str
