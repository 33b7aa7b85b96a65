"""Every task on the shared steps: output shapes, masked losses (padding rows and ignored positions do not
count), 8 devices equal 1, and evaluation that places every example's outputs exactly once."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxft import tasks
from jaxft.models.heads import SequenceClassifier, SpanExtractor, TokenClassifier
from jaxft.tasks import IGNORE
from jaxft.tasks.multilabel import MultiLabel
from jaxft.tasks.ner import Ner
from jaxft.tasks.qa import QuestionAnswering
from jaxft.tasks.regression import Regression
from jaxft.training import pipeline, steps
from tests.helpers import eval_totals, init_params, loss_and_grads, padded_batch, rel_error, tiny_bert

CONFIG = tiny_bert(50)
LENGTH, TAGS, LABELS = 12, 5, 4
TASKS = {
    "regression": (Regression(), lambda: SequenceClassifier(CONFIG, num_labels=1)),
    "multilabel": (MultiLabel(threshold=0.5), lambda: SequenceClassifier(CONFIG, num_labels=LABELS)),
    "ner": (Ner(max_seq_length=20), lambda: TokenClassifier(CONFIG, num_labels=TAGS)),
    "qa": (QuestionAnswering(max_seq_length=20), lambda: SpanExtractor(CONFIG)),
}


def _labels(name: str, rng, lengths) -> np.ndarray:
    size = len(lengths)
    if name == "regression":
        return rng.normal(size=size).astype(np.float32)
    if name == "multilabel":
        return (rng.random((size, LABELS)) < 0.4).astype(np.float32)
    if name == "qa":  # start <= end inside the row; 0 ([CLS]) for some
        start = rng.integers(0, lengths)
        return np.stack([start, rng.integers(start, lengths)], 1).astype(np.int32)
    labels = rng.integers(0, TAGS, (size, LENGTH)).astype(np.int32)
    labels[rng.random((size, LENGTH)) < 0.3] = IGNORE  # later sub-tokens, [CLS], [SEP]
    labels[np.arange(LENGTH)[None] >= lengths[:, None]] = IGNORE  # padding positions
    return labels


def _batch(name: str, size: int, padding_rows: int = 0, seed: int = 0) -> dict:
    def labels(rng, lengths, mask):
        drawn = _labels(name, rng, lengths)
        if name == "ner":  # padding rows of a real batch carry IGNORE; garbage proves the weight masks them
            drawn[size - padding_rows :] = rng.integers(0, TAGS, (padding_rows, LENGTH))
        return drawn

    return padded_batch(
        size, CONFIG.vocab_size, labels, length=LENGTH, min_length=3, padding_rows=padding_rows, seed=seed
    )


def _loss_and_grads(name, params, batch, num_devices, accum_steps=1):
    task, make_model = TASKS[name]
    return loss_and_grads(make_model(), params, batch, num_devices, accum_steps, task=task)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_output_shapes(name):
    task, make_model = TASKS[name]
    model = make_model()
    params, batch = init_params(model), _batch(name, 8)
    logits = model.apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
    expected = {
        "regression": (8, 1),
        "multilabel": (8, LABELS),
        "ner": (8, LENGTH, TAGS),
        "qa": (8, LENGTH, 2),
    }[name]
    assert logits.shape == expected and logits.dtype == jnp.float32
    loss_sum, weight = task.loss(logits, batch)
    assert loss_sum.shape == weight.shape == ()
    outputs = task.eval_outputs(logits, batch)
    if name == "qa":
        assert {k: v.shape for k, v in outputs[tasks.PER_EXAMPLE].items()} == {
            "start_logits": (8, 20),
            "end_logits": (8, 20),
        }
        assert task.predict_outputs(logits).shape == (8, 20, 2)
    else:
        per_example = {"regression": (8,), "multilabel": (8, LABELS), "ner": (8, 20)}[name]
        key = "probability" if name == "multilabel" else "prediction"
        assert outputs[tasks.PER_EXAMPLE][key].shape == per_example  # ner: padded to max_seq_length
        assert task.predict_outputs(logits).shape == per_example
    if name in ("ner", "qa"):
        assert "pooler" not in params["bert"]  # as BertForTokenClassification


@pytest.mark.parametrize("name", sorted(TASKS))
def test_loss_is_the_mean_over_real_rows_or_labelled_positions_on_any_split(name):
    """Padding rows (even with labels), 8 devices and 2 micro-batches change neither loss nor gradients."""
    _, make_model = TASKS[name]
    model = make_model()
    params, padded = init_params(model), _batch(name, 16, padding_rows=4)
    real = {k: v[:12] for k, v in padded.items()}
    loss, grads, count = _loss_and_grads(name, params, real, 1)
    loss_split, grads_split, count_split = _loss_and_grads(name, params, padded, 8, accum_steps=2)
    assert count_split == count
    assert abs(loss_split - loss) <= 1e-6 * abs(loss)
    assert rel_error(grads_split, grads) <= 1e-6
    logits = np.asarray(
        model.apply({"params": params}, real["input_ids"], real["attention_mask"], real["token_type_ids"]),
        np.float64,
    )
    labels = real["labels"]
    if name == "regression":
        expected, expected_count = np.mean((logits[:, 0] - labels) ** 2), 12
    elif name == "multilabel":
        bce = np.logaddexp(0, logits) - logits * labels  # -[y log s(x) + (1 - y) log(1 - s(x))]
        expected, expected_count = bce.mean(), 12
    elif name == "qa":  # mean of start and end cross-entropy over each row's unpadded positions
        masked = np.where(real["attention_mask"][..., None] > 0, logits, -np.inf)
        log_probs = masked - np.logaddexp.reduce(masked, axis=1, keepdims=True)
        rows = np.arange(12)
        expected = -0.5 * (log_probs[rows, labels[:, 0], 0] + log_probs[rows, labels[:, 1], 1]).mean()
        expected_count = 12
    else:
        keep = labels != IGNORE
        log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        expected = -np.take_along_axis(log_probs, np.where(keep, labels, 0)[..., None], -1)[..., 0][
            keep
        ].mean()
        expected_count = keep.sum()
    assert count == expected_count
    assert loss == pytest.approx(expected, rel=1e-5)


def test_ner_ignored_positions_do_not_count():
    """Rows whose positions are all IGNORE add nothing, whatever their tokens: like padding rows."""
    _, make_model = TASKS["ner"]
    params, batch = init_params(make_model()), _batch("ner", 16)
    real = {k: v[:12] for k, v in batch.items()}
    ignored = {k: v.copy() for k, v in batch.items()}
    ignored["labels"][12:] = IGNORE  # weight 1, but nothing labelled
    loss_real, grads_real, count_real = _loss_and_grads("ner", params, real, 1)
    loss, grads, count = _loss_and_grads("ner", params, ignored, 8)
    assert count == count_real == (real["labels"] != IGNORE).sum()
    assert abs(loss - loss_real) <= 1e-6 * loss_real
    assert rel_error(grads, grads_real) <= 1e-6


_REFERENCE = {}


def _reference(name, model, params, ids, lengths):
    """Every example's logits from one unbucketed host batch (cached: the same for every device count)."""
    if name not in _REFERENCE:
        mask = (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int32)
        _REFERENCE[name] = np.asarray(model.apply({"params": params}, ids, mask, None))
    return _REFERENCE[name]


@pytest.mark.parametrize("num_devices", [1, 3, 8])
@pytest.mark.parametrize("name", sorted(TASKS))
def test_evaluation_places_every_example_exactly_once(name, num_devices):
    task, make_model = TASKS[name]
    model = make_model()
    params = init_params(model)
    num_examples = 25
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 20, num_examples).astype(np.int32)
    ids = (
        rng.integers(1, CONFIG.vocab_size, (num_examples, 20)) * (np.arange(20) < lengths[:, None])
    ).astype(np.int32)
    features = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "length": lengths}
    if name == "ner":
        features["labels"] = np.where(np.arange(20) < lengths[:, None], 1, IGNORE).astype(np.int32)
        labels = np.zeros(num_examples, np.int32)
    else:
        labels = _labels(name, rng, lengths)
    split = pipeline.Split("dev", "dev", [None] * num_examples, labels, features)
    totals = eval_totals(model, params, split, num_devices, buckets=[8, 20], batch_size=8, task=task)
    assert int(totals["count"]) == (lengths.sum() if name == "ner" else num_examples)
    placed = totals[tasks.PER_EXAMPLE].get("probability" if name == "multilabel" else "prediction")
    for i, logits in enumerate(_reference(name, model, params, ids, lengths)):
        n = lengths[i]
        if name == "regression":
            np.testing.assert_allclose(placed[i], logits[0], rtol=1e-5, atol=1e-6)
        elif name == "multilabel":  # probabilities; the host thresholds them
            np.testing.assert_allclose(placed[i], jax.nn.sigmoid(logits), rtol=1e-5, atol=1e-6)
        elif name == "qa":
            for k, key in enumerate(("start_logits", "end_logits")):
                np.testing.assert_allclose(
                    totals[tasks.PER_EXAMPLE][key][i, :n], logits[:n, k], rtol=1e-5, atol=1e-5
                )
                assert (totals[tasks.PER_EXAMPLE][key][i, n:] == -1e9).all()  # padding never wins
        else:
            top_two = np.sort(logits[:n], -1)[:, -2:]
            assert (top_two[:, 1] - top_two[:, 0]).min() > 1e-5, "a tag too close to a tie (as multilabel)"
            np.testing.assert_array_equal(placed[i, :n], np.argmax(logits[:n], -1))  # the rest: never read


def test_classification_is_the_default_and_unchanged():
    """Without a task the steps are the classification ones (and its loss is the cross-entropy mean)."""
    model = SequenceClassifier(CONFIG, num_labels=3)
    params = init_params(model)
    batch = _batch("regression", 8)
    batch["labels"] = np.arange(8, dtype=np.int32) % 3
    logits = model.apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
    loss_sum, count = steps.weighted_loss_sum(model, params, batch, None, True)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).sum()
    assert float(loss_sum) == pytest.approx(float(expected), rel=1e-6) and float(count) == 8
    outputs = steps.eval_step(params, batch, model=model, num_labels=3)
    assert set(outputs) == {"confusion", "loss_sum", "count", "per_example"}
    np.testing.assert_array_equal(outputs["per_example"]["predicted"], np.argmax(logits, -1))
