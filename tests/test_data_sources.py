"""Parquet, Arrow, `save_to_disk` directories and `hf:` splits as data sources: each gives the examples (and
the tokenised features) of the same records in a JSONL file, for pairs, multi-label lists and relation spans;
ClassLabel ids become names; bad rows name the file and row in one line; an `hf:` split outside the local
cache is one line naming the cache; a tiny end-to-end run trains on Parquet. Nothing is downloaded."""

import json
import os
import shutil

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")

from jaxft.configs import common, default, tiny  # noqa: E402
from jaxft.data import readers, records, tokenize  # noqa: E402
from jaxft.data.relations import read_relations  # noqa: E402
from jaxft.errors import UserError  # noqa: E402
from jaxft.tasks import tagging  # noqa: E402
from jaxft.tasks.multilabel import MultiLabel  # noqa: E402
from jaxft.tasks.ner import Ner  # noqa: E402
from jaxft.tasks.qa import QuestionAnswering  # noqa: E402
from jaxft.tasks.relation import Relation, tokenize_relations  # noqa: E402
from jaxft.training import train  # noqa: E402

# Records written for these tests: a text pair, a label, a label set and two entity spans per row.
ROWS = [
    {
        "text": "The ferry left at dawn.",
        "pair": "A boat departed early.",
        "label": "yes",
        "tags": ["travel", "time"],
        "head": [4, 9],
        "tail": [18, 22],
    },
    {
        "text": "  Soup was cold  ",
        "pair": "The meal was warm.",
        "label": "no",
        "tags": [],
        "head": [2, 6],
        "tail": [11, 15],
    },
    {
        "text": "Lena plays chess in Graz.",
        "pair": "Someone plays a game.",
        "label": "yes",
        "tags": ["sport"],
        "head": [0, 4],
        "tail": [20, 24],
    },
]
SOURCES = ("parquet", "arrow-stream", "arrow-file", "saved", "hf-folder")


def _columns(rows: list[dict]) -> dict:
    return {key: [row[key] for row in rows] for key in rows[0]}


def _write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _write(tmp_path, kind: str, dataset) -> str:
    """`dataset` written as source `kind`; returns the path jaxft reads it by."""
    if kind == "parquet":
        dataset.to_parquet(str(tmp_path / "data.parquet"))
        return str(tmp_path / "data.parquet")
    if kind == "arrow-stream":  # the stream datasets writes (its cache and save_to_disk files)
        dataset.save_to_disk(str(tmp_path / "for_arrow"))
        shutil.copy(tmp_path / "for_arrow" / "data-00000-of-00001.arrow", tmp_path / "data.arrow")
        return str(tmp_path / "data.arrow")
    if kind == "arrow-file":  # the IPC file format, with the features datasets writes into the schema
        table = dataset.data.table
        with pa.ipc.new_file(str(tmp_path / "file.arrow"), table.schema) as writer:
            writer.write_table(table, max_chunksize=2)  # two record batches: rows count on across them
        return str(tmp_path / "file.arrow")
    if kind == "saved":
        dataset.save_to_disk(str(tmp_path / "saved"))
        return str(tmp_path / "saved")
    if (
        kind == "hf-folder"
    ):  # what load_dataset reads from a folder of data files (cached in HF_DATASETS_CACHE)
        (tmp_path / "folder").mkdir()
        dataset.to_parquet(str(tmp_path / "folder" / "train.parquet"))
        return f"hf:{tmp_path / 'folder'}:train"
    raise ValueError(kind)


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    """Every test's `hf:` loads use an empty cache of its own, never the user's."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _data(**keys):
    data = default.get_config().data
    for key, value in keys.items():
        data[key] = value
    return data


def _tokenizer():
    return tokenize.load_tokenizer(common.shipped("tiny_tokenizer"))


# ---- one records layer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SOURCES)
def test_pairs_read_as_the_jsonl_file_and_tokenise_the_same(tmp_path, kind):
    jsonl = _write_jsonl(tmp_path / "data.jsonl", ROWS)
    path = _write(tmp_path, kind, datasets.Dataset.from_dict(_columns(ROWS)))
    fields = dict(text_field="text", text_pair_field="pair", label_field="label")
    reference = readers.read_examples(jsonl, **fields)
    examples = readers.read_examples(path, **fields)
    assert [(e.text, e.text_pair, e.label) for e in examples] == [
        ("The ferry left at dawn.", "A boat departed early.", "yes"),
        ("Soup was cold", "The meal was warm.", "no"),
        ("Lena plays chess in Graz.", "Someone plays a game.", "yes"),
    ]
    assert [(e.text, e.text_pair, e.label) for e in examples] == [
        (e.text, e.text_pair, e.label) for e in reference
    ]
    assert [e.source for e in examples] == [f"{path} row {i}" for i in (1, 2, 3)]
    assert [e.source for e in reference] == [f"{jsonl}:{i}" for i in (1, 2, 3)]
    tokenizer = _tokenizer()
    got, _ = tokenize.tokenize(examples, tokenizer, 24)
    want, _ = tokenize.tokenize(reference, tokenizer, 24)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("kind", SOURCES)
def test_multilabel_list_columns_read_as_the_jsonl_lists(tmp_path, kind):
    rows = [{"text": row["text"], "labels": row["tags"]} for row in ROWS]
    jsonl = _write_jsonl(tmp_path / "data.jsonl", rows)
    features = datasets.Features(
        {"text": datasets.Value("string"), "labels": datasets.List(datasets.Value("string"))}
    )
    path = _write(tmp_path, kind, datasets.Dataset.from_dict(_columns(rows), features=features))
    task, data = MultiLabel(), _data(label_field="labels")
    examples, reference = task.read(path, data), task.read(jsonl, data)
    assert [e.labels for e in examples] == [("travel", "time"), (), ("sport",)]
    assert [(e.text, e.labels) for e in examples] == [(e.text, e.labels) for e in reference]
    names = task.label_names(examples, data)
    assert names == ["sport", "time", "travel"]
    np.testing.assert_array_equal(task.encode(examples, names), task.encode(reference, names))
    np.testing.assert_array_equal(
        tokenize.tokenize(examples, _tokenizer(), 16)[0]["input_ids"],
        tokenize.tokenize(reference, _tokenizer(), 16)[0]["input_ids"],
    )
    unlabelled = task.read(path, data, require_label=False)
    assert [(e.text, e.labels) for e in unlabelled] == [(e.text, None) for e in reference]


@pytest.mark.parametrize("kind", SOURCES)
def test_relation_span_columns_read_as_the_jsonl_spans(tmp_path, kind):
    rows = [{key: row[key] for key in ("text", "head", "tail", "label")} for row in ROWS]
    jsonl = _write_jsonl(tmp_path / "data.jsonl", rows)
    path = _write(tmp_path, kind, datasets.Dataset.from_dict(_columns(rows)))
    data = _data()
    examples = read_relations(path, data, "head", "tail", require_label=True)
    reference = read_relations(jsonl, data, "head", "tail", require_label=True)
    assert [(e.text, e.head, e.tail, e.label) for e in examples] == [
        (row["text"], tuple(row["head"]), tuple(row["tail"]), row["label"]) for row in rows
    ]
    assert [(e.text, e.head, e.tail, e.label) for e in examples] == [
        (e.text, e.head, e.tail, e.label) for e in reference
    ]
    tokenizer = _tokenizer()
    Relation().prepare_tokenizer(tokenizer)
    got, want = tokenize_relations(examples, tokenizer, 24), tokenize_relations(reference, tokenizer, 24)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_ner_and_qa_prediction_input_from_parquet(tmp_path):
    rows = [
        {"question": "Who plays chess?", "context": "Lena plays chess in Graz."},
        {"question": "Where?", "context": "In Graz ."},
    ]
    jsonl = _write_jsonl(tmp_path / "in.jsonl", rows)
    parquet = str(tmp_path / "in.parquet")
    datasets.Dataset.from_dict(_columns(rows)).to_parquet(parquet)
    data = _data(text_field="context")
    sentences, reference = (Ner().read(p, data, require_label=False) for p in (parquet, jsonl))
    assert [s.words for s in sentences] == [("Lena", "plays", "chess", "in", "Graz."), ("In", "Graz", ".")]
    assert [s.words for s in sentences] == [s.words for s in reference]
    data = _data(text_field="question", text_pair_field="context")
    questions, reference = (QuestionAnswering().read(p, data, require_label=False) for p in (parquet, jsonl))
    assert [(q.id, q.question, q.context) for q in questions] == [
        ("0", "Who plays chess?", "Lena plays chess in Graz."),
        ("1", "Where?", "In Graz ."),
    ]
    assert [(q.id, q.question, q.context) for q in questions] == [
        (q.id, q.question, q.context) for q in reference
    ]


# Sentences written for these tests, with CoNLL-2003's tag names.
SENTENCES = [
    (["Lena", "flew", "to", "New", "York", "."], ["B-PER", "O", "O", "B-LOC", "I-LOC", "O"]),
    (["Rain", "again"], ["O", "O"]),
    (["Oslo", "and", "Graz"], ["B-LOC", "O", "B-LOC"]),
]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.mark.parametrize("kind", ("parquet", "saved", "hf-folder"))
def test_ner_sentences_from_records_equal_the_conll_file(tmp_path, kind):
    conll = tmp_path / "train.conll"
    blocks = ["\n".join(f"{w} {t}" for w, t in zip(words, tags, strict=True)) for words, tags in SENTENCES]
    conll.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    features = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=TAGS)),
        }
    )
    columns = {
        "tokens": [w for w, _ in SENTENCES],
        "ner_tags": [[TAGS.index(t) for t in tags] for _, tags in SENTENCES],
    }
    path = _write(
        tmp_path, kind, datasets.Dataset.from_dict(columns, features=features)
    )  # tags stored as ids
    task, data = Ner(), _data(text_field="tokens", label_field="ner_tags")
    sentences, reference = task.read(path, data), task.read(str(conll), data)
    assert [(s.words, s.tags) for s in sentences] == [(tuple(w), tuple(t)) for w, t in SENTENCES]
    assert [(s.words, s.tags) for s in sentences] == [(s.words, s.tags) for s in reference]
    assert [s.source for s in sentences] == [f"{path} row {i}" for i in (1, 2, 3)]
    names = task.label_names(sentences, data)
    assert names == task.label_names(reference, data)
    got = task.tokenize(sentences, _tokenizer(), data, None, path, names)
    want = task.tokenize(reference, _tokenizer(), data, None, str(conll), names)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    with pytest.raises(UserError) as info:
        tagging.encode_tags(sentences, ["O", "B-LOC", "I-LOC"])
    assert str(info.value).startswith(f"{path} row 1, word 1: tag 'B-PER'")


def test_bad_ner_records_name_file_and_row(tmp_path):
    data = _data(text_field="tokens", label_field="ner_tags")
    cases = [
        (
            {"tokens": [["a", "b"], ["c"]], "ner_tags": [["O", "O"], ["O", "O"]]},
            "row 2: 1 words but 2 tags in 'ner_tags'",
        ),
        (
            {"tokens": [["a"]], "ner_tags": [["PER"]]},
            "row 1: tag 'PER' ('ner_tags', data.label_field) is not O",
        ),
        (
            {"tokens": [["a", " "]], "ner_tags": [["O", "O"]]},
            "row 1: word 2 of 'tokens' (data.text_field) is empty",
        ),
        ({"words": [["a"]], "ner_tags": [["O"]]}, "row 1: no column 'tokens' (data.text_field)"),
    ]
    for i, (columns, message) in enumerate(cases):
        path = str(tmp_path / f"{i}.parquet")
        datasets.Dataset.from_dict(columns).to_parquet(path)
        with pytest.raises(UserError) as info:
            Ner().read(path, data)
        assert str(info.value).startswith(f"{path} {message}"), str(info.value)


QUESTIONS = [
    {
        "id": "q1",
        "title": "Ferries",
        "question": "When did the ferry leave?",
        "context": "The ferry left at dawn.",
        "answers": {"text": ["at dawn", "dawn"], "answer_start": [15, 18]},
    },
    {
        "id": "q2",
        "title": "Chess",
        "question": "Where does Lena play?",
        "context": "Lena plays chess in Graz.",
        "answers": {"text": ["Graz"], "answer_start": [20]},
    },
]


@pytest.mark.parametrize("kind", ("parquet", "arrow-stream", "hf-folder"))
def test_qa_records_equal_the_squad_file(tmp_path, kind):
    squad_json = tmp_path / "dev.json"
    paragraphs = [
        {
            "context": q["context"],
            "qas": [
                {
                    "id": q["id"],
                    "question": q["question"],
                    "answers": [
                        {"text": t, "answer_start": s}
                        for t, s in zip(q["answers"]["text"], q["answers"]["answer_start"], strict=True)
                    ],
                }
            ],
        }
        for q in QUESTIONS
    ]
    squad_json.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}), encoding="utf-8")
    path = _write(tmp_path, kind, datasets.Dataset.from_dict(_columns(QUESTIONS)))
    task, data = (
        QuestionAnswering(max_seq_length=32, doc_stride=8, max_query_length=12),
        _data(max_seq_length=32),
    )
    questions, reference = task.read(path, data), task.read(str(squad_json), data)
    assert [(q.id, q.question, q.context, q.answers) for q in questions] == [
        ("q1", "When did the ferry leave?", "The ferry left at dawn.", (("at dawn", 15), ("dawn", 18))),
        ("q2", "Where does Lena play?", "Lena plays chess in Graz.", (("Graz", 20),)),
    ]
    assert [(q.id, q.question, q.context, q.answers) for q in questions] == [
        (q.id, q.question, q.context, q.answers) for q in reference
    ]
    got = task.tokenize(questions, _tokenizer(), data, None, path, ["start", "end"])
    want = task.tokenize(reference, _tokenizer(), data, None, str(squad_json), ["start", "end"])
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    bad = dict(QUESTIONS[1], answers={"text": ["Oslo"], "answer_start": [20]})
    (tmp_path / "bad").mkdir()
    path = _write(tmp_path / "bad", "parquet", datasets.Dataset.from_dict(_columns([QUESTIONS[0], bad])))
    with pytest.raises(UserError) as info:
        task.read(path, data)
    assert (
        str(info.value)
        == f"{path} row 2: question q2: answer 'Oslo' is not at answer_start=20 of its context"
    )


def test_class_labels_become_their_names(tmp_path):
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["neg", "pos"]),
            "tags": datasets.List(datasets.ClassLabel(names=["a", "b", "c"])),
        }
    )
    dataset = datasets.Dataset.from_dict(
        {"text": ["x y", "z", "w"], "label": [1, 0, -1], "tags": [[2, 0], [], [1]]}, features=features
    )
    for kind in ("parquet", "arrow-stream", "saved"):
        (tmp_path / kind).mkdir()
        path = _write(tmp_path / kind, kind, dataset)
        assert [record for _, record in records.records(path)] == [
            {"text": "x y", "label": "pos", "tags": ["c", "a"]},
            {"text": "z", "label": "neg", "tags": []},
            {"text": "w", "label": None, "tags": ["b"]},  # -1: datasets' "no label"
        ], kind
        examples = readers.read_examples(path, text_field="text", label_field="label", require_label=False)
        assert [e.label for e in examples] == ["pos", "neg", None]
        with pytest.raises(UserError) as info:
            readers.read_examples(path, text_field="text", label_field="label")
        assert str(info.value) == f"{path} row 3: the label ('label', data.label_field) is missing or empty"


# ---- errors name the file and row ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ("parquet", "arrow-stream", "saved"))
def test_a_missing_column_and_a_wrong_type_name_file_and_row(tmp_path, kind):
    path = _write(tmp_path, kind, datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": ["x", "y"]}))
    with pytest.raises(UserError) as info:
        readers.read_examples(path, text_field="text", label_field="label")
    assert str(info.value) == (
        f"{path} row 1: no column 'text' (data.text_field); the columns are 'sentence', 'label'"
    )
    (tmp_path / "typed").mkdir()
    typed = datasets.Dataset.from_dict({"text": [["a"], ["b", "c"]], "label": ["x", "y"]})
    path = _write(tmp_path / "typed", kind, typed)
    with pytest.raises(UserError) as info:
        readers.read_examples(path, text_field="text", label_field="label")
    assert str(info.value) == f"{path} row 1: 'text' (data.text_field) must be a string, found an array"
    (tmp_path / "spans").mkdir()
    spans = datasets.Dataset.from_dict(
        {"text": ["Ada in Lyon", "Bo in Oslo"], "head": [[0, 3], [0, 2]], "tail": [[7, 11], [6, 9.5]]}
    )
    path = _write(tmp_path / "spans", kind, spans)
    with pytest.raises(UserError) as info:
        read_relations(path, _data(), "head", "tail", require_label=False)
    assert str(info.value) == (
        f"{path} row 1: 'tail' (task.tail_field) must be [start, end] character offsets, found [7.0, 11.0]"
    )
    (tmp_path / "tags").mkdir()
    tags = datasets.Dataset.from_dict({"text": ["a", "b"], "labels": [1, 2]})
    path = _write(tmp_path / "tags", kind, tags)
    with pytest.raises(UserError) as info:
        MultiLabel().read(path, _data(label_field="labels"))
    message = str(info.value)
    assert (
        message.startswith(f"{path} row 1: the labels (data.label_field) must be a list")
        and "\n" not in message
    )


def test_file_level_problems_are_one_line(tmp_path):
    def error(path, **kwargs) -> str:
        with pytest.raises(UserError) as info:
            readers.read_examples(path, text_field="text", label_field="label", **kwargs)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert error(str(tmp_path / "absent.parquet")) == f"{tmp_path / 'absent.parquet'}: no such file"
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    assert error(str(tmp_path / "broken.parquet")).startswith(
        f"{tmp_path / 'broken.parquet'}: cannot read the Parquet file"
    )
    (tmp_path / "broken.arrow").write_bytes(b"\x00" * 16)
    assert error(str(tmp_path / "broken.arrow")).startswith(f"{tmp_path / 'broken.arrow'}: cannot read")
    empty = datasets.Dataset.from_dict({"text": [], "label": []})
    (tmp_path / "empty").mkdir()
    assert error(_write(tmp_path / "empty", "parquet", empty)).endswith("the file contains no examples")
    datasets.DatasetDict({"train": empty, "test": empty}).save_to_disk(str(tmp_path / "dict"))
    assert error(str(tmp_path / "dict")) == (
        f"{tmp_path / 'dict'}: a DatasetDict saved with save_to_disk (splits train, test); give the "
        f"directory of one split, e.g. {tmp_path / 'dict' / 'train'}"
    )
    assert "data.format" in error(_write_jsonl(tmp_path / "a.jsonl", ROWS), fmt="feather")
    assert error(_write_jsonl(tmp_path / "b.jsonl", ROWS), fmt="parquet").startswith(
        f"{tmp_path / 'b.jsonl'}: cannot read the Parquet file"
    )


def test_data_format_names_the_source_whatever_the_extension(tmp_path):
    dataset = datasets.Dataset.from_dict(_columns(ROWS))
    dataset.to_parquet(str(tmp_path / "train.bin"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    shutil.copy(tmp_path / "saved" / "data-00000-of-00001.arrow", tmp_path / "stream.bin")
    want = [row["text"].strip() for row in ROWS]
    for name, fmt in (("train.bin", "parquet"), ("stream.bin", "arrow"), ("saved", "hf")):
        examples = readers.read_examples(
            str(tmp_path / name), text_field="text", label_field="label", fmt=fmt
        )
        assert [e.text for e in examples] == want, fmt
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError) as info:
        readers.read_examples(str(tmp_path / "plain"), text_field="text", label_field="label", fmt="hf")
    assert str(info.value) == (
        f"{tmp_path / 'plain'}: not a directory written by datasets' save_to_disk (no state.json)"
    )


# ---- hf: paths -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("hf:stanfordnlp/imdb:train", ("stanfordnlp/imdb", None, "train")),
        ("hf:nyu-mll/glue:sst2:validation", ("nyu-mll/glue", "sst2", "validation")),
        ("hf:glue:sst2:train[:10%]", ("glue", "sst2", "train[:10%]")),
        ("hf:/data/reviews:train[2:5]", ("/data/reviews", None, "train[2:5]")),
    ],
)
def test_hf_paths_parse_by_their_colons(spec, parsed):
    assert records.parse_hf(spec) == parsed


@pytest.mark.parametrize("spec", ["hf:imdb", "hf:a:b:c:d", "hf::train", "hf:imdb:"])
def test_malformed_hf_paths_say_the_rule(spec):
    with pytest.raises(UserError, match="an hf: path is hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT"):
        readers.read_examples(spec, text_field="text", label_field="label")


def test_an_uncached_split_is_one_line_naming_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_DATASETS_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    environ = dict(os.environ)
    offline = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    with pytest.raises(UserError) as info:
        readers.read_examples("hf:someone/absent_set:train", text_field="text", label_field="label")
    cache = tmp_path / "hf_home" / "datasets"
    assert str(info.value) == (
        f"hf:someone/absent_set:train: not in the datasets cache {cache}; jaxft reads hf: paths offline: "
        "load the split once with datasets.load_dataset while online, or set HF_DATASETS_CACHE (or HF_HOME) "
        "to the cache that holds it"
    )
    assert dict(os.environ) == environ  # offline for the call only
    assert (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE) == offline
    with pytest.raises(UserError, match=r"^hf:/no/such/dir:train: no such directory /no/such/dir$"):
        readers.read_examples("hf:/no/such/dir:train", text_field="text", label_field="label")


def test_a_cached_dataset_reads_offline_by_name_config_and_split(tmp_path, monkeypatch):
    """A data set load_dataset cached once is read back by its name, as a Hub download would be."""
    folder = tmp_path / "toy_reviews"
    folder.mkdir()
    dataset = datasets.Dataset.from_dict(_columns(ROWS))
    dataset.to_parquet(str(folder / "train.parquet"))
    dataset.select([2, 0]).to_parquet(str(folder / "test.parquet"))
    fields = dict(text_field="text", text_pair_field="pair", label_field="label")
    reference = readers.read_examples(_write_jsonl(tmp_path / "data.jsonl", ROWS), **fields)

    def read(spec):
        return [(e.text, e.text_pair, e.label) for e in readers.read_examples(spec, **fields)]

    want = [(e.text, e.text_pair, e.label) for e in reference]
    assert read(f"hf:{folder}:train") == want  # prepares the cache: HF_DATASETS_CACHE/toy_reviews/...
    (tmp_path / "elsewhere").mkdir()  # a name that is a directory where we stand would be that directory
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert read("hf:toy_reviews:train") == want
    assert read("hf:toy_reviews:test") == [want[2], want[0]]
    assert read("hf:toy_reviews:default:train[1:]") == want[1:]
    os.rename(tmp_path / "hf_cache" / "toy_reviews", tmp_path / "hf_cache" / "someone___toy_reviews")
    assert read("hf:someone/toy_reviews:train") == want  # owner/name, as a Hub id
    with pytest.raises(UserError) as info:
        readers.read_examples("hf:someone/toy_reviews:validation", **fields)
    message = str(info.value)
    assert (
        message.startswith("hf:someone/toy_reviews:validation: not in the datasets cache")
        and "\n" not in message
    )
    assert "validation" in message and "train" in message  # datasets' own words name the splits there are


# ---- end to end ------------------------------------------------------------------------------------------


def test_a_tiny_run_trains_on_parquet_and_evaluates_a_saved_dataset(tmp_path):
    config = tiny.get_config()
    train_rows = [json.loads(line) for line in open(config.data.train_path, encoding="utf-8")]
    dev_rows = [json.loads(line) for line in open(config.data.eval_path, encoding="utf-8")]
    datasets.Dataset.from_dict(_columns(train_rows)).to_parquet(str(tmp_path / "train.parquet"))
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    dev = datasets.Dataset.from_dict(_columns(dev_rows), features=features)  # stored as ids, read as names
    dev.save_to_disk(str(tmp_path / "dev"))
    config.data.train_path = str(tmp_path / "train.parquet")
    config.data.eval_path = str(tmp_path / "dev")
    config.training.num_train_steps = 4
    config.training.eval_every = 4
    config.training.checkpoint_every = 4
    workdir = tmp_path / "run"
    final = train.train_and_evaluate(config, str(workdir))
    assert json.loads((workdir / "labels.json").read_text())["labels"] == ["negative", "positive"]
    report = json.loads((workdir / "eval" / "final_eval.json").read_text())
    assert report["report"]["macro avg"]["support"] == len(dev_rows)
    assert sum(map(sum, report["confusion_matrix"])) == len(dev_rows)
    truth = [row["label"] for row in dev_rows]
    assert [sum(row) for row in report["confusion_matrix"]] == [
        truth.count("negative"),
        truth.count("positive"),
    ]
    assert final["eval"]["accuracy"] == pytest.approx(report["report"]["accuracy"])
