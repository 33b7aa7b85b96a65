"""TFDS splits as a data source, read without TensorFlow, on TFDS's own mock data: text classification,
conll2003 as NER sentences (with a tiny end-to-end run) and squad as QA examples."""

import json
import sys

import numpy as np
import pytest
from seqeval.metrics.sequence_labeling import get_entities

from jaxft.configs import conll03
from jaxft.data import readers, squad, tokenize
from jaxft.errors import UserError
from jaxft.tasks import squad as squad_task
from jaxft.tasks.ner import Ner
from jaxft.tasks.qa import QuestionAnswering
from jaxft.training import train

tfds = pytest.importorskip("tensorflow_datasets")


def test_reads_mock_glue_sst2_with_class_names():
    with tfds.testing.mock_data(num_examples=6):
        examples = readers.read_examples("tfds:glue/sst2:train", text_field="sentence", label_field="label")
    assert len(examples) == 6
    assert all(isinstance(e.text, str) and e.text for e in examples)
    assert {e.label for e in examples} <= {"negative", "positive"}
    assert examples[0].source == "tfds:glue/sst2:train#0"
    assert "tensorflow" not in sys.modules  # TFDS without TensorFlow


def test_pairs_and_errors():
    with tfds.testing.mock_data(num_examples=3):
        pairs = readers.read_examples(
            "tfds:glue/mrpc:train", text_field="sentence1", text_pair_field="sentence2", label_field="label"
        )
        assert all(e.text_pair for e in pairs)
        with pytest.raises(UserError, match="no feature 'text'"):
            readers.read_examples("tfds:glue/sst2:train", text_field="text", label_field="label")
    with pytest.raises(UserError, match="tfds:NAME"):
        readers.read_examples("tfds:glue/sst2", text_field="sentence", label_field="label")


def test_an_unprepared_split_is_refused_without_a_download(tmp_path, monkeypatch):
    import tensorflow_datasets.text.glue  # noqa: F401  (registers glue, as the reader does)
    from tensorflow_datasets.core import constants, download

    def no_download(*args, **kwargs):
        raise AssertionError("TFDS was asked to download")

    monkeypatch.setattr(download.DownloadManager, "download", no_download)
    monkeypatch.setattr(download.DownloadManager, "download_and_extract", no_download)
    monkeypatch.setattr(constants, "DATA_DIR", str(tmp_path))  # an empty data dir, wherever tests run
    with pytest.raises(UserError) as raised:
        readers.read_examples("tfds:glue/sst2:train", text_field="sentence", label_field="label")
    message = str(raised.value)
    assert message.startswith(f"tfds:glue/sst2:train: not prepared in {tmp_path}/glue/sst2/"), message
    assert "jaxft never downloads" in message and "`tfds build glue/sst2`" in message


# ---- NER and QA splits ---------------------------------------------------------------------------------
# TFDS's random mock records do not hold together (tokens and tags of different lengths, answers that are not
# in their context), so these tests hand TFDS records of their own, shaped as real array_record data reads
# back: Text as bytes, ClassLabel sequences as int64 ids.

NER_NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
NER_WORDS = "the cat sat on a mat and dog is good bad movie film very not it was".split()


def _tagged(seed: int, count: int) -> list[tuple[list[str], list[str]]]:
    """`count` random sentences with valid IOB2 tags (entities of one to three words)."""
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(count):
        words, tags = [], []
        while len(words) < rng.integers(3, 12):
            kind = rng.choice(["PER", "ORG", "LOC", "MISC", None, None])
            size = 1 if kind is None else int(rng.integers(1, 4))
            words += [str(w) for w in rng.choice(NER_WORDS, size)]
            tags += ["O"] if kind is None else [f"B-{kind}"] + [f"I-{kind}"] * (size - 1)
        sentences.append((words, tags))
    return sentences


def _conll_record(words, tags) -> dict:
    return {
        "tokens": np.array([w.encode() for w in words], dtype=object),
        "pos": np.zeros(len(words), np.int64),
        "chunks": np.zeros(len(words), np.int64),
        "ner": np.array([NER_NAMES.index(t) for t in tags], np.int64),
    }


def _serve(records_by_split: dict):
    """A `mock_data(as_data_source_fn=...)` that serves `records_by_split[split]` as the split's records."""

    def as_data_source(builder, split, **kwargs):
        return records_by_split[split]

    return tfds.testing.mock_data(as_data_source_fn=as_data_source)


def test_conll2003_records_become_conll_sentences():
    sentences = _tagged(0, 6)
    records = [_conll_record(w, t) for w, t in sentences] + [_conll_record([], [])]  # an empty last record
    with _serve({"train": records}):
        read = Ner().read("tfds:conll2003:train", None)
        iob1 = Ner(tag_scheme="iob1").read("tfds:conll2003:train", None)
        words_only = Ner().read("tfds:conll2003:train", None, require_label=False)
    assert [(list(s.words), list(s.tags)) for s in read] == sentences  # the empty record is skipped
    assert iob1 == read  # IOB2 tags are left as they are by the IOB1 conversion
    assert [list(s.words) for s in words_only] == [w for w, _ in sentences] and words_only[0].tags is None
    assert read[2].where(3) == "tfds:conll2003:train#2:4"
    assert "tensorflow" not in sys.modules


def test_conll2003_iob1_tags_convert_and_bad_records_fail_naming_the_record():
    iob1 = _conll_record(["the", "cat", "sat", "dog"], ["I-PER", "I-PER", "O", "I-LOC"])
    with _serve({"train": [iob1]}):
        (sentence,) = Ner(tag_scheme="iob1").read("tfds:conll2003:train", None)
        assert sentence.tags == ("B-PER", "I-PER", "O", "B-LOC")
        # Column 1 is the part of speech; id 0 of its ClassLabel is the quote mark.
        with pytest.raises(UserError, match=r"tfds:conll2003:train#0: tag '\"' \(feature 'pos'"):
            Ner(tag_column=1).read("tfds:conll2003:train", None)
    ragged = {**_conll_record(["the", "cat"], ["O", "O"]), "ner": np.zeros(3, np.int64)}
    with _serve({"train": [_conll_record(["a"], ["O"]), ragged]}):
        with pytest.raises(UserError, match=r"conll2003:train#1: 2 tokens but 3 tags in feature 'ner'"):
            Ner().read("tfds:conll2003:train", None)
    with _serve({"train": [_conll_record([], [])]}):
        with pytest.raises(UserError, match="contains no sentences"):
            Ner().read("tfds:conll2003:train", None)
    with _serve({"train": [iob1]}), pytest.raises(UserError, match="task.tag_column=7 is outside"):
        Ner(tag_column=7).read("tfds:conll2003:train", None)


@pytest.mark.slow
def test_ner_run_from_conll2003_splits_writes_the_seqeval_report(tmp_path):
    train_sentences, dev_sentences = _tagged(1, 40), _tagged(2, 12)
    config = conll03.get_config("tiny")
    config.task.tag_scheme = "iob2"
    config.data.train_path, config.data.eval_path = "tfds:conll2003:train", "tfds:conll2003:dev"
    config.data.test_path = None
    config.training.num_train_steps = config.training.eval_every = config.training.checkpoint_every = 2
    records = {
        "train": [_conll_record(w, t) for w, t in train_sentences],
        "dev": [_conll_record(w, t) for w, t in dev_sentences],
    }
    with _serve(records):
        final = train.train_and_evaluate(config, str(tmp_path / "run"))
    saved = json.loads((tmp_path / "run/eval/final_eval.json").read_text())
    gold = [tags for _, tags in dev_sentences]
    assert saved["report"]["micro avg"]["support"] == sum(len(get_entities(t)) for t in gold)
    assert saved["num_words"] == sum(map(len, gold)) and final["eval"]["num_examples"] == len(gold)
    labels = json.loads((tmp_path / "run/labels.json").read_text())["labels"]
    assert labels == ["O"] + [f"{p}-{k}" for k in ("LOC", "MISC", "ORG", "PER") for p in "BI"]


def _squad_record(qid: str, question: str, context: str, answers: list[str]) -> dict:
    return {
        "id": qid.encode(),
        "title": b"an article",
        "question": question.encode(),
        "context": context.encode(),
        "answers": {
            "text": np.array([a.encode() for a in answers], dtype=object),
            "answer_start": np.array([context.index(a) for a in answers], np.int32),
        },
    }


SQUAD_RECORDS = [
    ("q0", "who sat on the mat?", "  the cat sat on the mat and the dog was not good.", ["the cat", "cat"]),
    ("q1", "was the film good?", "it was a very bad film, not a good movie.", ["very bad"]),
    ("q2", "what is the dog?", "the dog is good, the cat is bad, and the film is very good.", ["good"]),
]


def test_squad_records_become_qa_examples_whose_spans_map_back_to_the_answers(tiny_tokenizer_dir):
    records = [_squad_record(*r) for r in SQUAD_RECORDS]
    with _serve({"validation": records}):
        examples = QuestionAnswering().read("tfds:squad/v1.1:validation", None)
    where = "tfds:squad/v1.1:validation: question "
    expected = [
        squad.QAExample(qid, q, c, tuple((a, c.index(a)) for a in answers), where + qid)
        for qid, q, c, answers in SQUAD_RECORDS
    ]
    assert examples == expected  # the context keeps its leading spaces, so answer starts still hold
    tokenizer = tokenize.load_tokenizer(tiny_tokenizer_dir)
    features = squad_task.make_windows(examples, tokenizer, 32, doc_stride=8, max_query_length=12)
    assert features["example_index"].tolist() == [0, 1, 2]  # one window each
    for window, example in enumerate(examples):
        start, end = features["targets"][window]
        first, last = features["offsets"][window, start, 0], features["offsets"][window, end, 1]
        assert example.context[first:last] == example.answers[0][0]
    golden = {e.id: e.answers[-1][0] for e in examples}
    scores = squad_task.squad_scores(golden, examples)
    assert scores == {"exact_match": 100.0, "f1": 100.0, "num_questions": 3}


def test_bad_squad_records_fail_naming_the_question():
    moved = _squad_record("q9", "who?", "the cat sat", ["cat"])
    moved["answers"]["answer_start"] = np.array([0], np.int32)
    cases = [
        ([moved], "question q9: answer 'cat' is not at answer_start=0"),
        ([_squad_record("q1", "who?", "the cat", [])], "question q1: the question has no answer"),
        ([_squad_record("q1", "who?", "the cat", ["cat"])] * 2, "question q1: the id occurs twice"),
    ]
    for records, message in cases:
        with _serve({"train": records}), pytest.raises(UserError, match=message):
            QuestionAnswering().read("tfds:squad/v1.1:train", None)
    with _serve({"train": [_squad_record("q1", "who?", "the cat", [])]}):
        (unanswered,) = QuestionAnswering().read("tfds:squad/v1.1:train", None, require_label=False)
    assert unanswered.answers == ()
    with _serve({"train": [_conll_record(["a"], ["O"])]}), pytest.raises(UserError, match="no feature 'id'"):
        QuestionAnswering().read("tfds:conll2003:train", None)


def test_without_tensorflow_datasets_the_tasks_name_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import tensorflow_datasets` fails
    for task, spec in ((Ner(), "tfds:conll2003:train"), (QuestionAnswering(), "tfds:squad/v1.1:train")):
        with pytest.raises(UserError, match=r"pip install 'jaxft\[tfds\]'"):
            task.read(spec, None)
