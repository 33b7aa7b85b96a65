"""Tests for jaxft.data.readers and jaxft.data.labels."""

import collections
import gzip
import json
import os

import numpy as np
import pytest

from jaxft.data.labels import build_label_vocab, encode_labels, load_label_vocab, save_label_vocab
from jaxft.data.readers import Example, read_examples
from jaxft.errors import UserError


def write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def test_csv_with_header_and_quoting(tmp_path):
    path = write(tmp_path, "a.csv", 'text,label\n"hello, world",pos\n"a ""quoted""\nline",neg\n\nplain,pos\n')
    examples = read_examples(path, text_field="text", label_field="label")
    assert examples == [
        Example("hello, world", None, "pos", f"{path}:2"),
        Example('a "quoted"\nline', None, "neg", f"{path}:3"),
        Example("plain", None, "pos", f"{path}:6"),
    ]


def test_tsv_glue_style(tmp_path):
    # SST-2: a space before the tab; MRPC: a byte-order mark; MNLI: quotes are plain characters.
    content = "\ufeffsentence\tlabel\nhide new secretions \t0\nit 's \"a bad film\t1\r\n"
    path = write(tmp_path, "train.tsv", content)
    examples = read_examples(path, text_field="sentence", label_field="label")
    assert [(e.text, e.label) for e in examples] == [
        ("hide new secretions", "0"),
        ("it 's \"a bad film", "1"),
    ]
    assert examples[1].source == f"{path}:3"


def test_tsv_without_header_uses_column_indices(tmp_path):
    path = write(tmp_path, "cola.tsv", "gj04\t1\t\tThe sailors rode.\ngj04\t0\t*\tThe more we study.\n")
    examples = read_examples(path, text_field="3", label_field="1", has_header=False)
    assert [(e.text, e.label) for e in examples] == [("The sailors rode.", "1"), ("The more we study.", "0")]


def test_pairs_and_unlabelled_test_split(tmp_path):
    path = write(tmp_path, "test.tsv", "index\tq1\tq2\n0\tWhat?\tWhy?\n")
    [example] = read_examples(
        path, text_field="q1", text_pair_field="q2", label_field="label", require_label=False
    )
    assert (example.text, example.text_pair, example.label) == ("What?", "Why?", None)


def test_jsonl_and_gzip_and_env_expansion(tmp_path, monkeypatch):
    lines = '{"text": " good ", "label": 1, "p": "x"}\n\n{"text": 3, "label": true, "p": "y"}\n'
    plain = write(tmp_path, "a.jsonl", lines)
    write(tmp_path, "a.jsonl.gz", gzip.compress(lines.encode()))
    monkeypatch.setenv("JAXFT_TEST_DATA", str(tmp_path))
    for path in (plain, "$JAXFT_TEST_DATA/a.jsonl.gz"):
        examples = read_examples(path, text_field="text", label_field="label", text_pair_field="p")
        assert [(e.text, e.text_pair, e.label) for e in examples] == [("good", "x", "1"), ("3", "y", "true")]
    assert examples[1].source == f"{tmp_path}/a.jsonl.gz:3"


def test_jsonl_numbers_read_as_one_label_per_json_number(tmp_path):
    """1 and 1.0 are one JSON number, so one class; booleans keep JSON's spelling."""
    values = [0, 1, 1.0, -2.0, 0.5, 1e20, True, False]
    path = write(tmp_path, "n.jsonl", "".join(json.dumps({"t": "x", "y": v}) + "\n" for v in values))
    labels = [e.label for e in read_examples(path, text_field="t", label_field="y")]
    assert labels == ["0", "1", "1", "-2", "0.5", "100000000000000000000", "true", "false"]


def assert_user_error(path, *fragments, **kwargs):
    kwargs = {"text_field": "text", "label_field": "label", **kwargs}
    with pytest.raises(UserError) as info:
        read_examples(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize(
    "name, content, fragments",
    [
        ("empty.csv", "", ["contains no examples"]),
        ("header_only.tsv", "text\tlabel\n", ["contains no examples"]),
        ("col.csv", "sentence,label\nhi,1\n", [":1:", "'text'", "'sentence', 'label'"]),
        ("label.csv", "text,y\nhi,1\n", [":1:", "'label'", "'text', 'y'"]),
        ("short.tsv", "text\tlabel\nhi\t1\nbye\n", [":3:", "expected 2 columns, found 1"]),
        ("delim.csv", "text,label\nhi\t1\n", [":2:", "found 1", "tab-separated", "data.format"]),
        ("delim_header.csv", "text\tlabel\nhi\t1\n", [":1:", "tab-separated"]),
        ("blank.tsv", "text\tlabel\nok\t1\n  \t1\n", [":3:", "empty"]),
        ("nolabel.tsv", "text\tlabel\nok\t1\nfine\t \n", [":3:", "label", "empty"]),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 1}\n', [":2:", "invalid JSON"]),
        ("array.json", '[\n{"text": "a", "label": 1}\n]\n', [":1:", "not a JSON array"]),
        ("list.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', [":2:", "JSON object"]),
        ("null.jsonl", '{"text": null, "label": 1}\n', [":1:", "null"]),
        ("nested.jsonl", '{"text": {"a": 1}, "label": 1}\n', [":1:", "must be a string"]),
        ("key.jsonl", '{"sentence": "a", "label": 1}\n', [":1:", "'text'", "'sentence', 'label'"]),
        ("nulllabel.jsonl", '{"text": "a", "label": null}\n', [":1:", "label"]),
        ("crlf.csv", 'text,label\r\n"open quote,1\r\n', ["malformed CSV"]),
    ],
)
def test_errors_name_file_and_line(tmp_path, name, content, fragments):
    path = write(tmp_path, name, content)
    assert_user_error(path, path, *fragments)


def test_invalid_utf8_names_the_line(tmp_path):
    path = write(tmp_path, "latin1.tsv", "text\tlabel\ncafe\t1\ncaf\xe9\t0\n".encode("latin-1"))
    assert_user_error(path, f"{path}: line 3 is not valid UTF-8")


def test_file_level_errors(tmp_path):
    assert_user_error(str(tmp_path / "missing.csv"), "missing.csv", "no such file")
    assert_user_error(write(tmp_path, "a.txt", "x"), "a.txt", "data.format")
    assert_user_error(write(tmp_path, "a.tsv.gz", b"not gzip"), "a.tsv.gz", "cannot read")
    bad_index = write(tmp_path, "b.tsv", "a\t1\n")
    assert_user_error(bad_index, "b.tsv", "data.text_field", "column index", has_header=False)
    assert_user_error(bad_index, "b.tsv:1", "no column 5", text_field="5", has_header=False)
    pair = write(tmp_path, "pair.tsv", "text\tp\tlabel\nok\t \t1\n")
    assert_user_error(pair, "pair.tsv:2", "data.text_pair_field", "empty", text_pair_field="p")


def examples_with(labels):
    return [Example("t", None, label, f"f.tsv:{i + 2}") for i, label in enumerate(labels)]


def test_label_vocab_sorting():
    assert build_label_vocab(examples_with(["10", "2", "1", "2"])) == ["1", "2", "10"]
    assert build_label_vocab(examples_with(["pos", "neg", "pos"])) == ["neg", "pos"]
    assert build_label_vocab(examples_with(["-1", "1", "0"])) == ["-1", "0", "1"]


def test_given_label_vocab():
    assert build_label_vocab(examples_with(["a"]), given=("not_entailment", "entailment")) == [
        "not_entailment",
        "entailment",
    ]
    assert build_label_vocab([], given=(0, 1)) == ["0", "1"]
    with pytest.raises(UserError, match="twice"):
        build_label_vocab([], given=["a", "b", "a"])
    with pytest.raises(UserError, match="at least 2"):
        build_label_vocab(examples_with(["only", "only"]))


def test_encode_labels_and_unknown_label():
    examples = examples_with(["b", "a", "b"])
    ids = encode_labels(examples, ["a", "b"])
    assert ids.dtype == np.int32 and ids.tolist() == [1, 0, 1]
    with pytest.raises(UserError) as info:
        encode_labels(examples_with(["a", "c"]), ["a", "b"])
    assert str(info.value) == (
        "f.tsv:3: label 'c' is not in the label set ['a', 'b'] "
        "(labels come from the train split or data.labels)"
    )


def test_label_vocab_round_trip(tmp_path):
    path = str(tmp_path / "labels.json")
    save_label_vocab(path, ["neg", "pos", "é"])
    assert load_label_vocab(path) == ["neg", "pos", "é"]
    corrupt = write(tmp_path, "corrupt.json", '{"labels": ["a",')
    with pytest.raises(UserError, match="corrupt.json"):
        load_label_vocab(corrupt)
    with pytest.raises(UserError, match="not a label file"):
        load_label_vocab(write(tmp_path, "other.json", '{"classes": []}'))
    with pytest.raises(UserError, match="no such"):
        load_label_vocab(str(tmp_path / "absent.json"))


@pytest.mark.parametrize("fmt", ["auto", "jsonl"])
def test_a_directory_is_not_a_data_file(tmp_path, fmt):
    (tmp_path / "train").mkdir()
    message = assert_user_error(str(tmp_path / "train"), fmt=fmt)
    assert message.startswith(f"{tmp_path / 'train'}: ") and "directory" in message, message


# ---- the shared data sets as distributed (../shared/data; the smoke tests skip without it) -------------

DATA = os.environ.get("JAXFT_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
# Lines in STS-B's GLUE layout, written for this test: quotes inside a sentence, and one that starts with one.
STSB_LINES = [
    "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA boat is leaving the harbour."
    "\tA ship leaves the harbour.\t5.000",
    '1523\tmain-captions\timages\t2015\t0096\tnone\tnone\tA cat in a "chef" hat sits on a stool.\t'
    "A grey cat wearing a chef hat is sitting on a red stool.\t4.00",
    "698\tmain-forums\tanswers-forums\t2015\t0403\tnone\tnone\tThe rule is wrong, at least as you've "
    'put it here.\t"We have been told" reads fine, in the way you\'re using it.\t0.60',
]


def test_stsb_glue_tsv_reads_quotes_as_ordinary_characters(tmp_path):
    """The tsv reader splits on tabs only (GLUE's quotechar=None), so STS-B needs no reader of its own."""
    path = write(tmp_path, "train.tsv", "\n".join([STSB_HEADER, *STSB_LINES]) + "\n")
    examples = read_examples(path, text_field="sentence1", text_pair_field="sentence2", label_field="score")
    assert examples == [
        Example("A boat is leaving the harbour.", "A ship leaves the harbour.", "5.000", f"{path}:2"),
        Example(
            'A cat in a "chef" hat sits on a stool.',
            "A grey cat wearing a chef hat is sitting on a red stool.",
            "4.00",
            f"{path}:3",
        ),
        Example(
            "The rule is wrong, at least as you've put it here.",
            '"We have been told" reads fine, in the way you\'re using it.',
            "0.60",
            f"{path}:4",
        ),
    ]


def test_newsgroups_jsonl_gz_keeps_the_whole_message(tmp_path):
    record = {
        "id": "alt.atheism/49960",
        "label": "alt.atheism",
        "text": "From: a@b\nSubject: x\n\nBody \xe9\n",
    }
    path = write(tmp_path, "train.jsonl.gz", gzip.compress((json.dumps(record) + "\n").encode()))
    assert read_examples(path, text_field="text", label_field="label") == [
        Example("From: a@b\nSubject: x\n\nBody \xe9", None, "alt.atheism", f"{path}:1")
    ]


@pytest.mark.realdata
@pytest.mark.parametrize("split, count", [("train", 5749), ("dev", 1500)])
def test_real_stsb_files_hold_the_published_counts(split, count):
    path = os.path.join(DATA, "stsb", f"{split}.tsv")
    if not os.path.exists(path):
        pytest.skip(f"STS-B not found under {DATA}")
    examples = read_examples(path, text_field="sentence1", text_pair_field="sentence2", label_field="score")
    assert len(examples) == count  # data README: 5,749 / 1,500
    assert all(0 <= float(e.label) <= 5 for e in examples)
    assert (examples[0].label, examples[0].source) == ("5.000", f"{path}:2") and examples[0].text
    quoted = read_examples(
        path.replace(f"{split}.tsv", "test.tsv"),
        text_field="sentence1",
        text_pair_field="sentence2",
        label_field=None,
        require_label=False,
    )
    assert len(quoted) == 1379 and all(e.label is None for e in quoted)  # test: unlabelled


@pytest.mark.realdata
@pytest.mark.parametrize("split, count", [("train", 11314), ("test", 7532)])
def test_real_newsgroups_files_hold_the_published_counts(split, count):
    path = os.path.join(DATA, "20newsgroups", f"{split}.jsonl.gz")
    if not os.path.exists(path):
        pytest.skip(f"20 Newsgroups not found under {DATA}")
    examples = read_examples(path, text_field="text", label_field="label")
    assert len(examples) == count  # data README: 11,314 / 7,532
    groups = collections.Counter(e.label for e in examples)
    assert len(groups) == 20 and groups["alt.atheism"] == {"train": 480, "test": 319}[split]
    assert examples[0].text.startswith("From: ")  # headers kept, as distributed
