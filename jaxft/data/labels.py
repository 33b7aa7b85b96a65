"""The label vocabulary: raw label strings to contiguous class ids, and back.

The vocabulary is fixed once (from data.labels, or from the train split) and saved with the run, so that
evaluation, prediction and a resumed run map labels to the same ids as training did.
"""

import json
import re
from collections.abc import Sequence

import numpy as np

from jaxft import files
from jaxft.data.example import Example
from jaxft.data.records import source_of
from jaxft.errors import UserError

_INTEGER = re.compile(r"[+-]?\d+")
# Keys the evaluation reports hold beside one entry per label (sklearn's classification_report and
# seqeval's, jaxft.evaluate): a label of that name would overwrite them, or be overwritten.
REPORT_KEYS = ("accuracy", "macro avg", "weighted avg", "micro avg", "samples avg")
_ENTITY_REPORT_KEYS = ("micro avg", "macro avg", "weighted avg")  # seqeval's, beside one per entity type
_MAX_LABELS_SHOWN = 20


def build_label_vocab(examples: list[Example], given: Sequence[str] | None = None) -> list[str]:
    """Returns the ordered label vocabulary; a label's position is its class id.

    Args:
        examples: The train examples; their labels define the vocabulary when `given` is None.
        given: The vocabulary from data.labels, used in its order. Values that are not strings (a config
            that says `(0, 1)`) are converted with `str`, as the readers do for JSON labels.

    Returns:
        `given`, or the sorted unique labels of `examples`, numerically sorted when all look like integers
        (so "2" comes before "10").

    Raises:
        UserError: If `given` has duplicates, an example has no label, or there are fewer than two labels.
    """
    if given is not None:
        vocab = [str(label) for label in given]
        seen = set()
        for label in vocab:
            if label in seen:
                raise UserError(f"data.labels lists the label {label!r} twice")
            seen.add(label)
        if len(vocab) < 2:
            raise UserError(f"data.labels={vocab!r} must list at least 2 labels")
        return vocab
    unique = set()
    for example in examples:
        if example.label is None:
            raise UserError(f"{example.source}: the example has no label")
        unique.add(example.label)
    if all(_INTEGER.fullmatch(label) for label in unique):
        vocab = sorted(unique, key=lambda label: (int(label), label))
    else:
        vocab = sorted(unique)
    if len(vocab) < 2:
        where = source_of(examples[0].source) if examples else "the train split"
        raise UserError(
            f"{where}: found {len(vocab)} distinct label(s) {vocab!r}; classification needs at least 2"
        )
    return vocab


def _describe(vocab: list[str]) -> str:
    shown = ", ".join(map(repr, vocab[:_MAX_LABELS_SHOWN]))
    more = f", ... ({len(vocab)} labels)" if len(vocab) > _MAX_LABELS_SHOWN else ""
    return f"[{shown}{more}]"


def encode_labels(examples: list[Example], vocab: list[str]) -> np.ndarray:
    """Maps each example's label to its class id.

    Args:
        examples: Labelled examples.
        vocab: The label vocabulary from `build_label_vocab`.

    Returns:
        int32 class ids, shape [len(examples)].

    Raises:
        UserError: Naming the example's file and line, if a label is missing or not in `vocab`.
    """
    ids = {label: i for i, label in enumerate(vocab)}
    out = np.empty(len(examples), np.int32)
    for i, example in enumerate(examples):
        if example.label is None:
            raise UserError(f"{example.source}: the example has no label")
        if example.label not in ids:
            raise UserError(
                f"{example.source}: label {example.label!r} is not in the label set {_describe(vocab)} "
                "(labels come from the train split or data.labels)"
            )
        out[i] = ids[example.label]
    return out


def save_label_vocab(path: str, vocab: list[str]) -> None:
    """Writes `vocab` as JSON {"labels": [...]}, atomically so a crash never leaves half a file."""
    files.write_json_atomic(path, {"labels": list(vocab)}, ensure_ascii=False, indent=1)


def load_label_vocab(path: str) -> list[str]:
    """Reads a vocabulary written by `save_label_vocab`.

    Raises:
        UserError: If the file is missing, is not valid JSON, or does not hold a list of label strings.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such label file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the label file: {' '.join(str(e).split())}") from None
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise UserError(f'{path}: not a label file (expected {{"labels": [strings]}})')
    return labels


def check_report_names(names: list[str], where: str, *, tags: bool = False) -> None:
    """Raises `UserError` for a label the evaluation reports already use as a key (`REPORT_KEYS`).

    Args:
        names: the label set.
        where: where it came from (a file, or "config data.labels"), named in the message.
        tags: NER tags: their entity types (the part after "B-" / "I-") are the keys of seqeval's report.
    """
    reserved = _ENTITY_REPORT_KEYS if tags else REPORT_KEYS
    for name in names:
        key = name[2:] if tags and name[1:2] == "-" else name
        if key in reserved:
            raise UserError(
                f"{where}: label {name!r} clashes with the evaluation report's own {key!r} entry; rename it"
            )
