"""Tests for jaxft.data.goemotions: GoEmotions' TSV (ids named by emotions.txt, pandas-style quoting) read
into multi-label examples with emotion names, malformed lines named by file:line, the multilabel task's
label set in id order, and the real files' counts (skipped without them)."""

import collections
import os

import pytest

from jaxft import config as config_lib
from jaxft.configs import multilabel
from jaxft.data.example import MultiLabelExample
from jaxft.data.goemotions import label_names, read_goemotions
from jaxft.errors import UserError
from jaxft.tasks.multilabel import MultiLabel

DATA = os.environ.get("JAXFT_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
GOEMOTIONS = os.path.join(DATA, "goemotions")
EMOTIONS = ["admiration", "amusement", "anger", "neutral"]  # a short emotions.txt, in id order

# Real lines of train.tsv (the second quoted by pandas, its inner quotes doubled), ids renumbered to EMOTIONS.
LINES = [
    "The soup was fine, I didn't expect much from a train station.\t3\tid0001",
    '"[NAME] keeps calling it the ""final final"" draft and I can\'t stop laughing, it is the fifth '
    'one"" this week. "\t2,1\tid0002',
    "Wait, so what exactly is the plan for tomorrow?\t2,0,2\tid0003",
]


def write(tmp_path, lines, name="train.tsv", emotions=EMOTIONS) -> str:
    if emotions is not None:
        (tmp_path / "emotions.txt").write_text("".join(f"{e}\n" for e in emotions), encoding="utf-8")
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def test_lines_become_examples_with_emotion_names(tmp_path):
    path = write(tmp_path, LINES)
    og = (
        '[NAME] keeps calling it the "final final" draft and I can\'t stop laughing, it is the fifth '
        'one" this week.'
    )
    assert read_goemotions(path) == [
        MultiLabelExample(
            "The soup was fine, I didn't expect much from a train station.", None, ("neutral",), f"{path}:1"
        ),
        MultiLabelExample(og, None, ("anger", "amusement"), f"{path}:2"),
        MultiLabelExample(
            "Wait, so what exactly is the plan for tomorrow?", None, ("anger", "admiration"), f"{path}:3"
        ),
    ]
    assert [e.labels for e in read_goemotions(path, require_label=False)] == [None, None, None]


def test_the_multilabel_task_reads_it_by_data_format_with_the_names_in_id_order(tmp_path):
    path = write(tmp_path, LINES)
    config = multilabel.get_config("tiny")
    assert config.data.format == "goemotions"
    task = MultiLabel()
    examples = task.read(path, config.data)
    assert task.label_names(examples, config.data) == EMOTIONS  # every name, even one no example has
    assert task.encode(examples, EMOTIONS).tolist() == [[0, 0, 0, 1], [0, 1, 1, 0], [1, 0, 1, 0]]


@pytest.mark.parametrize(
    "line, message",
    [
        (
            "text only\t3",
            r"train.tsv:2: expected 3 tab-separated fields \(text, label ids, comment id\), found 2",
        ),
        ("  \t3\tid", r"train.tsv:2: the text is empty"),
        ("hi\t\tid", r"train.tsv:2: the label ids \(second field\) are empty"),
        ("hi\t4\tid", r"train.tsv:2: label id '4' is not one of 0-3 \(the lines of emotions.txt\)"),
        ("hi\tjoy\tid", r"train.tsv:2: label id 'joy' is not one of 0-3"),
        ('"hi"there\t1\tid', r"train.tsv:2: malformed quoting"),
    ],
)
def test_malformed_lines_are_one_line_naming_file_and_line(tmp_path, line, message):
    with pytest.raises(UserError, match=message) as error:
        read_goemotions(write(tmp_path, [LINES[0], line]))
    assert "\n" not in str(error.value)


def test_emotions_file_missing_or_doubled(tmp_path):
    path = write(tmp_path, LINES, emotions=None)
    with pytest.raises(UserError, match=r"emotions.txt: no such file \(GoEmotions' label names"):
        read_goemotions(path)
    assert len(read_goemotions(path, require_label=False)) == 3  # names are needed for labels only
    (tmp_path / "emotions.txt").write_text("joy\nanger\njoy\n")
    with pytest.raises(UserError, match=r"emotions.txt:3: the name 'joy' is listed twice"):
        label_names(path)
    with pytest.raises(UserError, match=r"train.tsv: the file contains no examples"):
        read_goemotions(write(tmp_path, ["", " "]))


def test_the_format_belongs_to_the_multilabel_task():
    config = multilabel.get_config("tiny")
    config.task.name = "classification"
    with pytest.raises(UserError, match="data.format='goemotions' is read by task.name='multilabel', not"):
        config_lib.check(config)


@pytest.mark.realdata
@pytest.mark.skipif(not os.path.isdir(GOEMOTIONS), reason=f"GoEmotions not found under {DATA}")
@pytest.mark.parametrize(
    "split, count, quoted", [("train", 43410, 1097), ("dev", 5426, 137), ("test", 5427, 149)]
)
def test_real_files_hold_the_published_counts(split, count, quoted):
    path = os.path.join(GOEMOTIONS, f"{split}.tsv")
    names = label_names(path)
    assert len(names) == 28 and names[27] == "neutral"  # data README: 28 labels, 27 = neutral
    examples = read_goemotions(path)
    assert len(examples) == count  # data README: 43,410 / 5,426 / 5,427
    used = collections.Counter(label for e in examples for label in e.labels)
    assert set(used) == set(names)  # all 28 labels used
    assert all(1 <= len(e.labels) for e in examples)
    # The lines pandas quoted (every line with a quote starts with one) keep their quotes, unquoted.
    assert sum('"' in e.text for e in examples) == quoted
