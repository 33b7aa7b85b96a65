"""TensorFlow Datasets as a data source, without TensorFlow: `tfds:NAME[/CONFIG]:SPLIT` as a data path.

    --config.data.train_path=tfds:glue/sst2:train --config.data.eval_path=tfds:glue/sst2:validation \
    --config.data.text_field=sentence

Read through `tfds.data_source` (random access over array_record files), the one TFDS reader that works
without TensorFlow (docs/platform-notes.md); the dataset must already be prepared under TFDS's data dir
(`$TFDS_DATA_DIR`, default ~/tensorflow_datasets). Text comes back as bytes from real data and as str from
`tfds.testing.mock_data`; both become str. ClassLabel values become their names (e.g. "negative").

Per task: classification / regression read a text (pair) and label feature (`read_tfds`, e.g. glue/sst2,
imdb_reviews); `task.name="ner"` reads CoNLL-style splits (`read_tfds_sentences`, e.g.
`tfds:conll2003:train`, splits train/dev/test, tags already IOB2); `task.name="qa"` reads SQuAD-style splits
(`read_tfds_squad`, e.g. `tfds:squad/v1.1:validation`). Each gives the same examples as the task's file
reader. Install with `pip install 'jaxft[tfds]'`; TensorFlow itself is never needed.
"""

import importlib

import numpy as np

from jaxft.data import conll, squad
from jaxft.data.example import Example
from jaxft.errors import UserError

PREFIX = "tfds:"

# TFDS registers its classic dataset modules only when imported; these are the ones users ask for here.
_MODULES = (
    "tensorflow_datasets.text.glue",
    "tensorflow_datasets.text.imdb",
    "tensorflow_datasets.text.conll2003",
    "tensorflow_datasets.question_answering.squad",
)


def parse(spec: str) -> tuple[str, str]:
    """`tfds:glue/sst2:train` -> ("glue/sst2", "train")."""
    body = spec[len(PREFIX) :]
    name, _, split = body.rpartition(":")
    if not name or not split:
        raise UserError(f"{spec}: a TFDS path is tfds:NAME[/CONFIG]:SPLIT, e.g. tfds:glue/sst2:train")
    return name, split


def _decode(value, where: str, field: str) -> str:
    """A Text value as str, unchanged otherwise (SQuAD answer starts count characters of the exact text)."""
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{where}: field {field!r} is not valid UTF-8") from None
    return str(value)


def _text(value, where: str, field: str) -> str:
    return _decode(value, where, field).strip()


def _open(spec: str):
    """(builder, data source) of a `tfds:` path; UserErrors for a missing package, name, split or data."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(
            f"{spec}: TFDS sources need tensorflow-datasets (pip install 'jaxft[tfds]')"
        ) from None
    name, split = parse(spec)
    for module in _MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    builder = None
    try:
        builder = tfds.builder(name)
        source = tfds.data_source(name, split=split, download=False)  # never a download at run time
    except Exception as error:  # TFDS raises its own types for unknown names, splits and unprepared data
        if builder is not None and not builder.is_prepared():
            raise UserError(
                f"{spec}: not prepared in {builder.data_dir} (jaxft never downloads: prepare it once with "
                f"`tfds build {name}`, or set TFDS_DATA_DIR to where it is prepared)"
            ) from None
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{spec}: cannot open the TFDS split ({first})") from None
    return builder, source


def read_tfds(
    spec: str,
    *,
    text_field: str,
    label_field: str | None,
    text_pair_field: str | None = None,
    require_label: bool = True,
) -> list[Example]:
    """Reads every example of a TFDS split (see the module docstring for the path form)."""
    builder, source = _open(spec)
    features = builder.info.features
    for field in (text_field, text_pair_field, label_field):
        if field is not None and field not in features:
            raise UserError(f"{spec}: no feature {field!r}; the features are {', '.join(features.keys())}")
    names = getattr(features[label_field], "names", None) if label_field else None
    examples = []
    for i in range(len(source)):
        record, where = source[i], f"{spec}#{i}"
        text = _text(record[text_field], where, text_field)
        pair = _text(record[text_pair_field], where, text_pair_field) if text_pair_field else None
        if not text or (text_pair_field and not pair):
            raise UserError(f"{where}: empty text")
        label = None
        if label_field is not None:
            value = np.asarray(record[label_field]).item()
            label = (
                names[value]
                if names and isinstance(value, int) and value >= 0
                else _text(value, where, "label")
            )
            if require_label and (label == "" or (isinstance(value, int) and value < 0)):
                raise UserError(f"{where}: no label (an unlabelled split? GLUE test splits have label -1)")
        examples.append(Example(text=text, text_pair=pair, label=label, source=where))
    if not examples:
        raise UserError(f"{spec}: the split contains no examples")
    return examples


# ---- named-entity recognition: CoNLL-style datasets (conll2003) ----------------------------------------

# Where builders without a CoNLL column order (not ConllDatasetBuilder) keep the entity tags.
_TAG_FEATURES = ("ner", "ner_tags", "tags")


def _tag_feature(spec: str, builder, tag_column: int) -> str:
    """The feature holding the tags: column `tag_column` of a CoNLL builder's columns, as in a CoNLL file."""
    features = builder.info.features
    columns = list(getattr(getattr(builder, "builder_config", None), "ordered_features", None) or ())
    if columns:
        try:
            return columns[tag_column]
        except IndexError:
            raise UserError(
                f"{spec}: task.tag_column={tag_column} is outside the dataset's columns {columns}"
            ) from None
    for field in _TAG_FEATURES:
        if field in features:
            return field
    raise UserError(
        f"{spec}: no tag feature ({', '.join(_TAG_FEATURES)}); the features are {', '.join(features)}"
    )


def read_tfds_sentences(
    spec: str, *, tag_column: int = -1, scheme: str = "iob2", require_tags: bool = True
) -> list:
    """Reads a TFDS tagging split (`tfds:conll2003:train`) as the sentences `conll.read_conll` gives.

    Words are the `tokens` feature; tags are the feature in CoNLL column `tag_column` of the builder's column
    order (conll2003: tokens, pos, chunks, ner; -1 is `ner`), ClassLabel ids turned into their names. TFDS's
    conll2003 is the copy from data.deepai.org, whose tags are already IOB2 (Hugging Face's `conll2003`,
    built from the same archive, says so), unlike the original IOB1 files: use task.tag_scheme="iob2". With
    "iob1" nothing changes on IOB2 tags, since the conversion only rewrites an I- that starts an entity.

    Args:
        spec: `tfds:NAME[/CONFIG]:SPLIT`.
        tag_column: task.tag_column.
        scheme: task.tag_scheme, "iob1" (converted to IOB2) or "iob2".
        require_tags: False for prediction input: only the words are read.

    Returns:
        The sentences in stored order; record i has source `SPEC#i:1`, so `Sentence.where(k)` names its
        word k + 1. Empty records (TFDS's CoNLL builder writes one when a file ends in a blank line) are
        skipped, as the CoNLL reader skips blank lines.

    Raises:
        UserError: naming the record of the first problem (tokens and tags of different lengths, a tag that
            is not O, B-TYPE or I-TYPE, text that is not UTF-8).
    """
    builder, source = _open(spec)
    features = builder.info.features
    if "tokens" not in features:
        raise UserError(f"{spec}: no feature 'tokens' (the words); the features are {', '.join(features)}")
    field = _tag_feature(spec, builder, tag_column) if require_tags else None
    names = getattr(getattr(features[field], "feature", None), "names", None) if field else None
    sentences = []
    for i in range(len(source)):
        record, where = source[i], f"{spec}#{i}"
        words = tuple(_decode(word, where, "tokens") for word in record["tokens"])
        if not words:
            continue
        tags = None
        if require_tags:
            tags = [names[int(v)] if names else _text(v, where, field) for v in np.asarray(record[field])]
            if len(tags) != len(words):
                raise UserError(f"{where}: {len(words)} tokens but {len(tags)} tags in feature {field!r}")
            bad = next((tag for tag in tags if not conll.TAG.fullmatch(tag)), None)
            if bad is not None:
                raise UserError(
                    f"{where}: tag {bad!r} (feature {field!r}, task.tag_column={tag_column}) is not O, "
                    "B-TYPE or I-TYPE"
                )
            tags = tuple(conll.iob1_to_iob2(tags) if scheme == "iob1" else tags)
        sentences.append(conll.Sentence(words, tags, f"{where}:1"))
    if not sentences:
        raise UserError(f"{spec}: the split contains no sentences")
    return sentences


# ---- extractive question answering: SQuAD-style datasets (squad/v1.1) ----------------------------------

_QA_FEATURES = ("id", "question", "context", "answers")


def read_tfds_squad(spec: str, *, require_answers: bool = True) -> list:
    """Reads a TFDS SQuAD-style split (`tfds:squad/v1.1:validation`) as the examples `squad.read_squad` gives.

    Features `id`, `question`, `context` and `answers` ({text: [...], answer_start: [...]}) map to
    `squad.QAExample` (the `title` is not used). TFDS squad 3.0.0 re-aligned the answer starts that older
    versions had off; every answer must still sit at its start in the context, as in `read_squad`. Its
    splits are `train` and `validation` (the official dev set).

    Raises:
        UserError: naming the question of the first problem (a missing feature, a duplicate id, an empty
            question or context, an answer that is not at its start, a question without answers when
            `require_answers`: SQuAD v2.0's unanswerable questions are not supported).
    """
    builder, source = _open(spec)
    features = builder.info.features
    for field in _QA_FEATURES:
        if field not in features:
            raise UserError(
                f"{spec}: no feature {field!r} (a SQuAD-style split has {', '.join(_QA_FEATURES)}); "
                f"the features are {', '.join(features)}"
            )
    examples, seen = [], set()
    for i in range(len(source)):
        record = source[i]
        qid = _text(record["id"], f"{spec}#{i}", "id")
        where = f"{spec}: question {qid}"
        if qid in seen:
            raise UserError(f"{where}: the id occurs twice")
        seen.add(qid)
        question = _decode(record["question"], where, "question")
        context = _decode(record["context"], where, "context")
        if not question.strip() or not context.strip():
            raise UserError(f"{where}: the question or the context is empty")
        texts, starts = record["answers"]["text"], np.asarray(record["answers"]["answer_start"])
        if len(texts) != len(starts):
            raise UserError(f"{where}: {len(texts)} answer texts but {len(starts)} answer starts")
        answers = []
        for value, start in zip(texts, starts.tolist(), strict=True):
            text = _decode(value, where, "answers/text")
            if not text.strip() or context[start : start + len(text)] != text:
                raise UserError(f"{where}: answer {text!r} is not at answer_start={start} of its context")
            answers.append((text, start))
        if require_answers and not answers:
            raise UserError(
                f"{where}: the question has no answer (SQuAD v2.0's unanswerable ones are not supported)"
            )
        examples.append(squad.QAExample(qid, question, context, tuple(answers), where))
    if not examples:
        raise UserError(f"{spec}: the split contains no questions")
    return examples
