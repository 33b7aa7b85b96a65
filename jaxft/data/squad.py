"""SQuAD v1.1 files: the questions, their contexts and gold answers.

`read_squad` checks what the evaluation relies on: every answer is found at its `answer_start` in the
context, ids are unique, and each labelled question has an answer. `read_squad_records` reads the same
questions stored one per record, as Hugging Face's squad does, from any source `jaxft.data.records` reads.
"""

import dataclasses
import gzip
import json
import os

from jaxft.data import lines, records
from jaxft.errors import UserError


@dataclasses.dataclass(frozen=True)
class QAExample:
    """One question on one context.

    Attributes:
        id: the question id.
        question: the question text.
        context: the paragraph.
        answers: (text, character start) of each gold answer; empty for unlabelled input.
        source: where it came from, for messages ("path: question ID").
    """

    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    source: str


def _load_json(path: str):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a data file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read the file: {' '.join(str(e).split())}") from None


def _string(value, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: the {what} is missing, empty or not a string")
    return lines.check_unicode(where, value, f"the {what}")


def read_squad(path: str, *, require_answers: bool = True) -> list[QAExample]:
    """Reads a SQuAD v1.1 JSON file (`{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}`).

    Raises:
        UserError: naming the file (and the question id) of the first problem: invalid JSON, a missing
            field, a duplicate id, or an answer that is not found at its `answer_start` in the context.
    """
    root = _load_json(path)
    if not isinstance(root, dict) or not isinstance(root.get("data"), list):
        raise UserError(f'{path}: not a SQuAD file (expected {{"data": [articles]}} at the top)')
    examples, seen = [], set()
    for a, article in enumerate(root["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise UserError(f"{path}: article {a} has no list of paragraphs")
        for paragraph in paragraphs:
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(qas, list):
                raise UserError(f"{path}: a paragraph of article {a} has no list of questions (qas)")
            context = _string(paragraph.get("context"), f"{path}: article {a}", "context")
            for qa in qas:
                qid = str(qa.get("id")) if isinstance(qa, dict) else "?"
                lines.check_unicode(f"{path}: article {a}", qid, "a question id")
                where = f"{path}: question {qid}"
                if qid in seen:
                    raise UserError(f"{where}: the id occurs twice")
                seen.add(qid)
                question = _string(qa.get("question"), where, "question")
                answers = []
                for answer in qa.get("answers") or []:
                    text = _string(answer.get("text") if isinstance(answer, dict) else None, where, "answer")
                    start = answer.get("answer_start")
                    if not isinstance(start, int) or context[start : start + len(text)] != text:
                        raise UserError(
                            f"{where}: answer {text!r} is not at answer_start={start} of its context"
                        )
                    answers.append((text, start))
                if require_answers and not answers:
                    raise UserError(f"{where}: the question has no answer")
                examples.append(QAExample(qid, question, context, tuple(answers), where))
    if not examples:
        raise UserError(f"{path}: the file contains no questions")
    return examples


_RECORD_FIELDS = "SQuAD records hold id, question, context, answers"


def read_squad_records(path: str, fmt: str = "auto", *, require_answers: bool = True) -> list[QAExample]:
    """Reads SQuAD-style records, one question per row (`hf:rajpurkar/squad:validation`, its Parquet files).

    Fields `id`, `question`, `context` and `answers` (`{"text": [...], "answer_start": [...]}`) map to
    `QAExample` (a `title` is not used), with the checks of `read_squad`.

    Args:
        path: a source of records (`jaxft.data.records`: JSONL, Parquet, Arrow, datasets).
        fmt: data.format.
        require_answers: whether a question without answers is an error.

    Raises:
        UserError: naming the file and line or row of the first problem (a missing field, a duplicate id, an
            empty question or context, an answer that is not at its start).
    """
    examples, seen = [], set()
    for row, record in records.records(path, fmt):
        qid = records.string_field(row, record, "id", _RECORD_FIELDS, True)
        if qid is None or not qid.strip():
            raise UserError(f"{row}: the question id is missing or empty")
        where = f"{row}: question {qid}"
        if qid in seen:
            raise UserError(f"{where}: the id occurs twice")
        seen.add(qid)
        question = _string(records.field(row, record, "question", _RECORD_FIELDS), where, "question")
        context = _string(records.field(row, record, "context", _RECORD_FIELDS), where, "context")
        answers = []
        if require_answers or "answers" in record:
            value = records.field(row, record, "answers", _RECORD_FIELDS)
            texts = value.get("text") if isinstance(value, dict) else None
            starts = value.get("answer_start") if isinstance(value, dict) else None
            if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
                raise UserError(
                    f'{where}: answers must be {{"text": [...], "answer_start": [...]}} of one length, found '
                    f"{records.type_name(value)}"
                )
            for text, start in zip(texts, starts, strict=True):
                text = _string(text, where, "answer")
                if not isinstance(start, int) or context[start : start + len(text)] != text:
                    raise UserError(f"{where}: answer {text!r} is not at answer_start={start} of its context")
                answers.append((text, start))
        if require_answers and not answers:
            raise UserError(f"{where}: the question has no answer")
        examples.append(QAExample(qid, question, context, tuple(answers), where))
    if not examples:
        raise UserError(f"{path}: contains no questions")
    return examples


def is_text_file(path: str) -> bool:
    """True for prediction input given as rows of a question and a context (JSONL, CSV, TSV, Parquet, Arrow,
    a save_to_disk directory or an `hf:` split, by `records.detect_format`) rather than SQuAD JSON (.json)."""
    path = os.path.expanduser(os.path.expandvars(path))
    stem = path[: -len(".gz")] if path.endswith(".gz") else path
    if os.path.splitext(stem)[1].lower() == ".json":
        return False
    return records.detect_format(path) is not None
