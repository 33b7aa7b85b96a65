"""Tests for jaxft.strategies.augment: the four EDA operations, seeding, the shipped synonym list, the
paraphrase routes, the train-only pipeline stage, bad input, and a tiny run with augmentation on."""

import collections
import json
import logging
import os

import numpy as np
import pytest

from jaxft.configs import default, tiny
from jaxft.data.readers import Example
from jaxft.errors import UserError
from jaxft.strategies import augment
from jaxft.tasks.ner import Ner
from jaxft.tasks.regression import Regression
from jaxft.training import pipeline, train

SYNONYMS = {
    "great": ("superb", "terrific"),
    "dull": ("boring", "tedious", "flat"),
    "movie": ("film", "picture"),
    "acting": ("performances",),
}
# Eleven words, four of which ("movie", "great", "acting", "dull") have synonyms.
WORDS = "the movie looked great , the acting felt dull in every scene".split()


def _rng(seed=0):
    return np.random.default_rng(seed)


def _is_subsequence(short, long):
    remaining = iter(long)
    return all(any(word == other for other in remaining) for word in short)


# ---- the four operations -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 4])
def test_synonym_replacement_changes_exactly_n_words_to_listed_synonyms(n):
    for seed in range(20):
        out = augment.synonym_replacement(WORDS, n, SYNONYMS, _rng(seed))
        changed = [i for i, (a, b) in enumerate(zip(WORDS, out, strict=True)) if a != b]
        assert len(changed) == n
        assert all(out[i] in SYNONYMS[WORDS[i]] for i in changed)


def test_synonym_replacement_is_capped_by_the_words_that_have_synonyms():
    out = augment.synonym_replacement(WORDS, 9, SYNONYMS, _rng())
    assert sum(a != b for a, b in zip(WORDS, out, strict=True)) == 4
    assert augment.synonym_replacement(["a", "cat"], 2, SYNONYMS, _rng()) == ["a", "cat"]


def test_replacement_keeps_punctuation_and_capitals():
    out = augment.synonym_replacement(["Great!", "(DULL)"], 2, SYNONYMS, _rng())
    assert out[0] in ("Superb!", "Terrific!")
    assert out[1] in ("(BORING)", "(TEDIOUS)", "(FLAT)")


def test_random_insertion_adds_only_synonyms_of_words_in_the_sentence():
    allowed = {s for word in WORDS for s in SYNONYMS.get(word, ())}
    for seed in range(20):
        out = augment.random_insertion(WORDS, 3, SYNONYMS, _rng(seed))
        added = collections.Counter(out) - collections.Counter(WORDS)
        assert len(out) == len(WORDS) + 3 and sum(added.values()) == 3
        assert set(added) <= allowed
        assert _is_subsequence(WORDS, out)  # the original words, in order, nothing removed
    assert augment.random_insertion(["a", "cat"], 2, SYNONYMS, _rng()) == ["a", "cat"]


def test_random_swap_keeps_the_multiset_and_one_swap_moves_two_words():
    for seed in range(20):
        out = augment.random_swap(WORDS, 3, _rng(seed))
        assert sorted(out) == sorted(WORDS)
        distinct = ["one", "two", "three", "four", "five", "six"]
        once = augment.random_swap(distinct, 1, _rng(seed))
        i, j = [k for k, (a, b) in enumerate(zip(distinct, once, strict=True)) if a != b]
        assert (once[i], once[j]) == (distinct[j], distinct[i])
    assert augment.random_swap(["alone"], 5, _rng()) == ["alone"]


def test_random_deletion_only_removes_and_never_empties():
    lengths = set()
    for seed in range(50):
        out = augment.random_deletion(WORDS, 0.5, _rng(seed))
        assert 1 <= len(out) <= len(WORDS) and _is_subsequence(out, WORDS)
        lengths.add(len(out))
    assert len(lengths) > 3  # the number deleted varies with the draw
    for seed in range(5):
        out = augment.random_deletion(WORDS, 1.0, _rng(seed))  # everything would go: one word stays
        assert len(out) == 1 and out[0] in WORDS
    assert augment.random_deletion(["alone"], 1.0, _rng()) == ["alone"]


def test_eda_applies_one_operation_with_n_from_alpha():
    text = " ".join(WORDS)
    # alpha 0.2 of 11 words: n = round(2.2) = 2 replacements.
    out = augment.eda(text, ("synonym",), 0.2, SYNONYMS, _rng()).split()
    assert sum(a != b for a, b in zip(WORDS, out, strict=True)) == 2
    out = augment.eda(text, ("insert",), 0.2, SYNONYMS, _rng()).split()
    assert len(out) == len(WORDS) + 2
    # One op per copy: with swap and delete both allowed, a result is a permutation or a shorter subsequence.
    for seed in range(20):
        out = augment.eda(text, ("swap", "delete"), 0.3, SYNONYMS, _rng(seed)).split()
        is_swap = sorted(out) == sorted(WORDS)
        is_delete = len(out) < len(WORDS) and _is_subsequence(out, WORDS)
        assert is_swap != is_delete


def test_eda_is_reproducible_from_the_seed():
    texts = ["the movie looked great", "dull acting in a dull movie", "great great great"]
    ops = augment.OPS

    def run(seed):
        rng = _rng(seed)
        return [augment.eda(t, ops, 0.3, SYNONYMS, rng) for t in texts for _ in range(3)]

    assert run(5) == run(5)
    assert run(5) != run(6)


# ---- the shipped synonym list --------------------------------------------------------------------------
def test_shipped_synonyms_have_the_documented_size():
    table = augment.load_synonyms()
    assert len(table) == 805
    assert sum(len(synonyms) for synonyms in table.values()) == 3224
    assert all(w == w.lower() and w not in s and len(set(s)) == len(s) for w, s in table.items())
    # The same numbers are written in the module docstring and in docs/strategies.md.
    assert "805 head words and 3,224 (word, synonym) pairs" in augment.__doc__
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "strategies.md"), encoding="utf-8") as f:
        assert "805 head words, 3,224" in " ".join(f.read().split())
    assert table["boring"][:2] == ("dull", "tedious")


def test_load_synonyms_reads_a_user_file_and_merges_repeats(tmp_path):
    path = tmp_path / "syn.tsv"
    path.write_text("# a comment\n\nHappy\tglad, cheerful ,happy\nhappy\tjoyful,glad\n", encoding="utf-8")
    assert augment.load_synonyms(str(path)) == {"happy": ("glad", "cheerful", "joyful")}


@pytest.mark.parametrize(
    "content, message",
    [
        ("happy glad\n", r"syn\.tsv:1: expected 'word<TAB>synonym"),
        ("happy\t\n", r"syn\.tsv:1: expected"),
        ("# only a comment\n", r"augment\.synonyms=.*no synonym entries"),
    ],
)
def test_bad_synonym_files(tmp_path, content, message):
    path = tmp_path / "syn.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        augment.load_synonyms(str(path))
    with pytest.raises(UserError, match=r"config augment\.synonyms=.*missing\.tsv: no such file"):
        augment.load_synonyms(str(tmp_path / "missing.tsv"))


# ---- paraphrases ---------------------------------------------------------------------------------------
EXAMPLES = [
    Example("The soup was cold.", "second text one", "negative", "train.jsonl:1"),
    Example("Staff were friendly.", None, "positive", "train.jsonl:2"),
    Example("Nothing to say here.", None, "positive", "train.jsonl:3"),
]


def test_paraphrase_with_a_callable():
    table = {
        "The soup was cold.": ["The soup arrived cold.", "", "The soup was cold.", "Cold soup, sadly."],
        "Staff were friendly.": ["The staff were kind.", "The staff were kind."],
    }
    out = augment.paraphrase(EXAMPLES, lambda text: table.get(text, []), 5, _rng())
    assert out[:3] == EXAMPLES  # originals kept, first
    # Empty strings, repeats and the text itself dropped; all the rest kept when fewer than num.
    assert [e.text for e in out[3:]] == [
        "The soup arrived cold.",
        "Cold soup, sadly.",
        "The staff were kind.",
    ]
    assert [(e.text_pair, e.label, e.source) for e in out[3:]] == [
        ("second text one", "negative", "train.jsonl:1"),
        ("second text one", "negative", "train.jsonl:1"),
        (None, "positive", "train.jsonl:2"),
    ]
    one = augment.paraphrase(EXAMPLES, lambda text: table.get(text, []), 1, _rng())
    assert len(one) == 5 and one[3].text in ("The soup arrived cold.", "Cold soup, sadly.")


def test_paraphrases_from_file_round_trip(tmp_path):
    path = tmp_path / "para.jsonl"
    lines = [
        {"text": " The soup was cold. ", "paraphrases": ["The soup arrived cold."]},
        {"text": "The soup was cold.", "paraphrases": ["Cold soup, sadly."]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    assert augment.paraphrases_from_file(str(path)) == {
        "The soup was cold.": ["The soup arrived cold.", "Cold soup, sadly."]
    }


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"para\.jsonl:2: not JSON"),
        ('{"text": "a", "paraphrases": "b"}', r'para\.jsonl:2: expected \{"text"'),
        ('["a", ["b"]]', r'para\.jsonl:2: expected \{"text"'),
    ],
)
def test_bad_paraphrase_files(tmp_path, line, message):
    path = tmp_path / "para.jsonl"
    path.write_text('{"text": "a", "paraphrases": ["b"]}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message + r".*augment\.paraphrases_path"):
        augment.paraphrases_from_file(str(path))
    with pytest.raises(UserError, match=r"config augment\.paraphrases_path=.*nope\.jsonl: no such file"):
        augment.paraphrases_from_file(str(tmp_path / "nope.jsonl"))


# ---- the pipeline stage ----------------------------------------------------------------------------------
TRAIN = [
    ("An absolutely great movie with superb acting.", "positive"),
    ("The plot was dull and the ending was predictable.", "negative"),
    ("I loved every scene, the music was wonderful.", "positive"),
    ("A boring film, I wanted my money back.", "negative"),
    ("The cast was charming and the story was clever.", "positive"),
]
DEV = [("Really enjoyable from start to finish.", "positive"), ("Awful, slow and pointless.", "negative")]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _data(tmp_path, label=str):
    data = default.get_config().data
    data.train_path = _write_jsonl(
        tmp_path / "train.jsonl", [{"text": t, "label": label(y)} for t, y in TRAIN]
    )
    data.eval_path = _write_jsonl(tmp_path / "dev.jsonl", [{"text": t, "label": label(y)} for t, y in DEV])
    return data


def _augment_config(**overrides):
    config = default.get_config().augment
    config.update(overrides)
    return config


def test_augmented_train_split_keeps_originals_and_labels_and_leaves_eval_alone(tmp_path, caplog):
    data = _data(tmp_path)
    names, plain = pipeline.read_splits(data, None, seed=3)
    config = _augment_config(eda_ops=("synonym", "insert", "swap", "delete"), num_augmented=3)
    with caplog.at_level(logging.INFO):
        names_aug, splits = pipeline.read_splits(data, None, seed=3, augment_config=config)
    assert "augment: 15 training examples added (15 EDA, 0 paraphrases) to 5" in caplog.text
    assert names_aug == names == ["negative", "positive"]
    train, originals = splits["train"], plain["train"].examples
    assert len(train.examples) == 5 + 3 * 5 and train.labels.shape == (20,)
    assert train.examples[:5] == originals
    # Copy j of example i sits at 5 + 3 * i + j and carries the example's label, pair and source.
    for k, copy in enumerate(train.examples[5:]):
        original = originals[k // 3]
        assert (copy.label, copy.text_pair, copy.source) == (
            original.label,
            original.text_pair,
            original.source,
        )
        assert train.labels[5 + k] == plain["train"].labels[k // 3]
    assert [names[i] for i in train.labels] == [e.label for e in train.examples]
    assert any(copy.text != originals[k // 3].text for k, copy in enumerate(train.examples[5:]))
    assert splits["eval"].examples == plain["eval"].examples
    np.testing.assert_array_equal(splits["eval"].labels, plain["eval"].labels)
    # Same seed, same split; another seed, other copies.
    again = pipeline.read_splits(data, None, seed=3, augment_config=config)[1]["train"]
    other = pipeline.read_splits(data, None, seed=4, augment_config=config)[1]["train"]
    assert again.examples == train.examples and other.examples != train.examples
    # Off (the default section, or no section at all) leaves the split as it was.
    for off in (_augment_config(), None):
        assert pipeline.read_splits(data, None, seed=3, augment_config=off)[1]["train"].examples == originals


def test_paraphrase_file_route_through_read_splits_with_float_targets(tmp_path):
    data = _data(tmp_path, label=lambda y: 1.0 if y == "positive" else 0.0)
    data.label_field = "label"
    para = _write_jsonl(
        tmp_path / "para.jsonl",
        [
            {"text": TRAIN[1][0], "paraphrases": ["The story was flat; I saw the ending coming."]},
            {"text": "Not a training text.", "paraphrases": ["Never used."]},
        ],
    )
    config = _augment_config(paraphrases_path=para, num_augmented=2)
    _, splits = pipeline.read_splits(data, None, seed=0, task=Regression(), augment_config=config)
    train = splits["train"]
    assert [e.text for e in train.examples[5:]] == ["The story was flat; I saw the ending coming."]
    np.testing.assert_array_equal(train.labels, np.array([1, 0, 1, 0, 1, 0], np.float32))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"eda_ops": ("swap", "shuffle")}, r"augment\.eda_ops: 'shuffle' is not one of"),
        ({"eda_ops": ("swap",), "eda_alpha": 0.0}, r"augment\.eda_alpha=0\.0 must be in \(0, 1\]"),
        ({"eda_ops": ("swap",), "eda_alpha": 1.5}, r"augment\.eda_alpha=1\.5 must be in \(0, 1\]"),
        ({"eda_ops": ("swap",), "num_augmented": 0}, r"augment\.num_augmented=0 must be an integer >= 1"),
        ({"eda_ops": ("synonym",), "synonyms": "/no/such/syn.tsv"}, r"augment\.synonyms=/no/such/syn\.tsv"),
        ({"paraphrases_path": "/no/such/p.jsonl"}, r"augment\.paraphrases_path=/no/such/p\.jsonl"),
    ],
)
def test_bad_augment_keys_name_the_key(tmp_path, overrides, message):
    data = _data(tmp_path)
    with pytest.raises(UserError, match=message):
        pipeline.read_splits(data, None, augment_config=_augment_config(**overrides))


def test_tasks_whose_labels_point_into_the_text_refuse_augmentation():
    with pytest.raises(UserError, match=r"augment\.eda_ops: .*not 'ner'"):
        augment.augment_train(EXAMPLES, _augment_config(eda_ops=("swap",)), 0, Ner().name)
    with pytest.raises(UserError, match=r"augment\.paraphrases_path: .*not 'qa'"):
        augment.augment_train(EXAMPLES, _augment_config(paraphrases_path="p.jsonl"), 0, "qa")
    # Off, any task passes through untouched.
    assert augment.augment_train(EXAMPLES, _augment_config(), 0, "ner") is EXAMPLES


# ---- a whole run -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_run_with_eda_finishes(tmp_path, caplog):
    config = tiny.get_config()
    config.augment.eda_ops = ("swap", "delete")
    config.training.num_train_steps = 4
    config.training.eval_every = 4
    config.training.checkpoint_every = 4
    with caplog.at_level(logging.INFO):
        final = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert "augment: 404 training examples added (404 EDA, 0 paraphrases) to 404" in caplog.text
    assert 0 <= final["eval"]["accuracy"] <= 1
    report = json.loads((tmp_path / "run/eval/final_eval.json").read_text())
    assert report["report"]["macro avg"]["support"] == 100  # eval untouched: every dev example once
