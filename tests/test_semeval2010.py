"""Tests for jaxft.data.semeval2010: the release's four-line blocks (CRLF) read into relation examples, every
malformed input a one-line `UserError` naming file:line, and the real files' counts (skipped without them)."""

import collections
import gzip
import json
import os

import numpy as np
import pytest

from jaxft.configs import relation
from jaxft.data.relations import RelationExample
from jaxft.data.semeval2010 import LABELS, is_semeval_label_set, read_semeval2010
from jaxft.errors import UserError
from jaxft.tasks.relation import Relation

DATA = os.environ.get("JAXFT_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
SEMEVAL = os.path.join(DATA, "semeval2010_task8")

# Three blocks written for these tests in the release's layout (id and quoted sentence, relation, comment,
# blank line; CRLF endings): the first has quotes inside the sentence, the last a test-file id.
BLOCKS = [
    '30\t"The <e1>lever</e1> of the <e2>press</e2> has a "safe stop" notch that keeps the "open" plate '
    'from closing on a hand."',
    "Component-Whole(e1,e2)",
    "Comment:",
    "",
    '2\t"The <e1>parcel</e1> was left on the step next to the <e2>bench</e2> by the driver."',
    "Other",
    "Comment:",
    "",
    '8002\t"The <e1>mill</e1> grinds local <e2>flour</e2>."',
    "Product-Producer(e2,e1)",
    "Comment: (a) is satisfied",
    "",
]


def write(tmp_path, lines, name="TRAIN_FILE.TXT", newline="\r\n") -> str:
    path = tmp_path / name
    path.write_bytes((newline.join(lines) + newline).encode())
    return str(path)


def test_blocks_become_relation_examples_with_spans_and_directed_labels(tmp_path):
    path = write(tmp_path, BLOCKS)
    lever = (
        'The lever of the press has a "safe stop" notch that keeps the "open" plate from closing on a hand.'
    )
    parcel = "The parcel was left on the step next to the bench by the driver."
    mill = "The mill grinds local flour."
    assert read_semeval2010(path) == [
        RelationExample(lever, None, "Component-Whole(e1,e2)", f"{path}:1", (4, 9), (17, 22)),
        RelationExample(parcel, None, "Other", f"{path}:5", (4, 10), (44, 49)),
        RelationExample(mill, None, "Product-Producer(e2,e1)", f"{path}:9", (4, 8), (22, 27)),
    ]
    example = read_semeval2010(path)[2]
    assert example.text[slice(*example.head)] == "mill" and example.text[slice(*example.tail)] == "flour"


def test_lf_endings_gzip_and_no_final_blank_line_read_the_same(tmp_path):
    expected = [(e.text, e.label, e.head, e.tail) for e in read_semeval2010(write(tmp_path, BLOCKS))]
    lf = write(tmp_path, BLOCKS[:-1], name="lf.txt", newline="\n")
    packed = tmp_path / "train.txt.gz"
    packed.write_bytes(gzip.compress(("\r\n".join(BLOCKS) + "\r\n").encode()))
    for path in (lf, str(packed)):
        assert [(e.text, e.label, e.head, e.tail) for e in read_semeval2010(path)] == expected


def test_e2_before_e1_gives_spans_in_text_order(tmp_path):
    path = write(tmp_path, ['7\t"A <e2>b</e2> c <e1>d</e1>."', "Other", "Comment:", ""])
    assert read_semeval2010(path) == [RelationExample("A b c d.", None, "Other", f"{path}:1", (6, 7), (2, 3))]


def test_unlabelled_sentences_when_labels_are_not_required(tmp_path):
    path = write(tmp_path, ['8001\t"The <e1>a</e1> <e2>b</e2>."', '8002\t"<e1>c</e1> d <e2>e</e2>."', ""])
    examples = read_semeval2010(path, require_label=False)
    assert [(e.text, e.label, e.head, e.tail) for e in examples] == [
        ("The a b.", None, (4, 5), (6, 7)),
        ("c d e.", None, (0, 1), (4, 5)),
    ]
    with pytest.raises(
        UserError, match=r"TRAIN_FILE.TXT:2: expected the relation label of the sentence on line 1"
    ):
        read_semeval2010(path)
    assert [e.label for e in read_semeval2010(write(tmp_path, BLOCKS), require_label=False)][:2] == [
        "Component-Whole(e1,e2)",
        "Other",
    ]


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ["<e1>a</e1> <e2>b</e2>", "Other", "Comment:", ""],
            r":1: expected a sentence line `id<TAB>\"text\"`",
        ),
        (
            ['1\t"<e1>a</e1> b"', "Other", "Comment:", ""],
            r":1: the sentence must hold <e2> exactly once, found 0",
        ),
        (['1\t"<e1>a <e2>b</e1> c</e2>"', "Other", "Comment:", ""], r":1: the entity tags are nested or out"),
        (['1\t"<e1> </e1> <e2>b</e2>"', "Other", "Comment:", ""], r":1: the entity <e1> is empty"),
        (['1\t"<e1>[E1]</e1> <e2>b</e2>"', "Other", "Comment:", ""], r":1: the sentence contains \[E1\]"),
        (
            ['1\t"<e1>a</e1> <e2>b</e2>"', "Cause-Effect", "Comment:", ""],
            r":2: 'Cause-Effect' is not a SemEval",
        ),
        (['1\t"<e1>a</e1> <e2>b</e2>"', "Other", "", ""], r":3: expected the `Comment:` line of the block"),
        (['1\t"<e1>a</e1> <e2>b</e2>"', "Other", "Comment:", "x"], r":4: expected a blank line after"),
        (
            ['1\t"<e1>a</e1> <e2>b</e2>"', "Other"],
            r"TRAIN_FILE.TXT: the file ends before the `Comment:` line",
        ),
        (["", ""], r"TRAIN_FILE.TXT: the file contains no examples"),
    ],
)
def test_malformed_input_is_one_line_naming_file_and_line(tmp_path, lines, message):
    with pytest.raises(UserError, match=message) as error:
        read_semeval2010(write(tmp_path, lines))
    assert "\n" not in str(error.value) and "TRAIN_FILE.TXT" in str(error.value)


def test_not_utf8_and_missing_file_name_the_file(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b'1\t"<e1>a</e1> <e2>b\xff</e2>"\r\nOther\r\nComment:\r\n\r\n')
    with pytest.raises(UserError, match="bad.txt: line 1 is not valid UTF-8"):
        read_semeval2010(str(path))
    with pytest.raises(UserError, match="nope.txt: no such file"):
        read_semeval2010(str(tmp_path / "nope.txt"))


def test_the_label_set_is_the_scorers_19():
    assert len(LABELS) == 19 and LABELS[-1] == "Other" and "Message-Topic(e2,e1)" in LABELS
    assert is_semeval_label_set(["Other", "Cause-Effect(e1,e2)"])
    assert not is_semeval_label_set(["Other", "lives_in"]) and not is_semeval_label_set([])


def test_the_relation_task_reads_it_by_data_format(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMEVAL_DIR", str(tmp_path))
    write(tmp_path, BLOCKS)
    data = relation.get_config("tiny").data
    assert data.format == "semeval2010"
    examples = Relation().read("$SEMEVAL_DIR/TRAIN_FILE.TXT", data)
    assert [e.label for e in examples] == ["Component-Whole(e1,e2)", "Other", "Product-Producer(e2,e1)"]
    data.format = "jsonl"  # the same file is not JSON lines
    with pytest.raises(UserError, match=r"TRAIN_FILE.TXT:1: invalid JSON"):
        Relation().read(str(tmp_path / "TRAIN_FILE.TXT"), data)


@pytest.mark.realdata
@pytest.mark.skipif(not os.path.isdir(SEMEVAL), reason=f"SemEval-2010 Task 8 not found under {DATA}")
@pytest.mark.parametrize(
    "name, count, other, cause_effect",
    [("TRAIN_FILE.TXT", 8000, 1410, 1003), ("TEST_FILE_FULL.TXT", 2717, 454, 328)],
)
def test_real_files_hold_the_published_counts(name, count, other, cause_effect):
    examples = read_semeval2010(os.path.join(SEMEVAL, name))
    labels = collections.Counter(e.label for e in examples)
    assert len(examples) == count and set(labels) == set(LABELS)  # data README: 8,000 / 2,717, 19 labels
    assert labels["Other"] == other  # data README: Other 1,410 in train, 454 in test
    assert labels["Cause-Effect(e1,e2)"] + labels["Cause-Effect(e2,e1)"] == cause_effect
    for e in examples:  # every span is a non-empty nominal of the cleaned sentence
        assert "<e" not in e.text and e.text[slice(*e.head)].strip() and e.text[slice(*e.tail)].strip()


def test_the_relation_report_adds_the_official_score_for_semeval_labels_only(tmp_path):
    from jaxft import evaluate

    names = ["Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Other"]
    confusion = np.array([[3, 1, 0], [0, 1, 1], [0, 1, 2]])
    totals = {"confusion": confusion, "loss_sum": 4.5, "count": 9}
    data = relation.get_config("tiny").data
    result = Relation().report(totals, None, names, data)
    # Cause-Effect: correct 4, predicted 3 + 3 = 6, support 6: P = R = F1 = 2/3, the only relation.
    assert result.metrics["semeval_macro_f1"] == pytest.approx(2 / 3)
    assert result.extra["semeval2010"]["relations"]["Cause-Effect"]["wrong_direction"] == 1
    assert "(official score)" in result.text and "macro avg" in result.text  # beside sklearn's report
    evaluate.write_result(str(tmp_path), "final_test", result, names, {"step": 9}, "relation")
    saved = json.loads((tmp_path / "final_test.json").read_text())
    assert saved["semeval2010"]["macro_f1"] == pytest.approx(2 / 3) and saved["step"] == 9
    assert "(official score)" in (tmp_path / "final_test.txt").read_text()
    plain = Relation().report(totals, None, ["a_head", "b_head", "c"], data)
    assert "semeval_macro_f1" not in plain.metrics and "semeval2010" not in plain.extra
    # training.best_metric may name it where the labels are sure to be SemEval's
    assert "semeval_macro_f1" in Relation().metric_names(data)
    data.format = "jsonl"
    assert "semeval_macro_f1" not in Relation().metric_names(data)
    data.labels = tuple(names)
    assert "semeval_macro_f1" in Relation().metric_names(data)
