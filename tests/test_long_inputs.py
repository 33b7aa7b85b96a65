"""data.long_inputs: "truncate" is today's tokenisation; "head_tail" is a hand cut of the untruncated ids;
"windows" cover every token, overlap by the stride and map back to their text, whose prediction is the mean
of its windows' logits, counted once in the evaluation (1 and 8 devices alike) and in `jaxft.predict`; a tiny
run trains and evaluates on windows; bad settings are one-line `UserError`s."""

import json

import jax
import numpy as np
import pytest

from jaxft import config as config_lib
from jaxft import evaluate, predict, tasks
from jaxft.configs import common, imdb, tiny
from jaxft.data import tokenize
from jaxft.data.example import Example
from jaxft.data.long_inputs import LongInputs, truncated_lengths
from jaxft.errors import UserError
from jaxft.models.heads import SequenceClassifier
from jaxft.tasks.classification import Classification, mean_by_example
from jaxft.training import pipeline, train
from jaxft.training.model import create_model
from tests.helpers import eval_totals, init_params, tiny_bert

# Words of the shipped tiny tokenizer's vocabulary; texts drawn from them have (almost) no [UNK], so a
# misplaced cut shows as other ids.
WORDS = (
    "the movie was good and food bad but we never once one game are has time just made new left within us "
    "minutes three no hours even about without staff book half over first room after enough into two week "
    "film great kept everything nothing through single who came coffee water day gave phone arrived still"
).split()
WIDTH = 16  # max_seq_length of these tests: 14 text tokens beside [CLS] and [SEP]
WINDOWS = LongInputs("windows", stride=4)


def _text(rng, num_words: int) -> str:
    return " ".join(rng.choice(WORDS, num_words))


def _examples(counts, pair_counts=None, seed=0, labels=None) -> list[Example]:
    rng = np.random.default_rng(seed)
    pairs = pair_counts or [None] * len(counts)
    return [
        Example(
            _text(rng, n),
            None if m is None else _text(rng, m),
            None if labels is None else labels[i % len(labels)],
            f"x:{i}",
        )
        for i, (n, m) in enumerate(zip(counts, pairs, strict=True))
    ]


@pytest.fixture(scope="module")
def tokenizer():
    return tokenize.load_tokenizer(common.shipped("tiny_tokenizer"))


def _rows(features, i):
    """The unpadded ids of feature row i."""
    return features["input_ids"][i, : features["length"][i]].tolist()


# ---- truncate: unchanged -----------------------------------------------------------------------------------


def test_truncate_gives_exactly_todays_features_and_cache_key(tokenizer):
    singles = _examples([3, 10, 40, 90])
    pairs = _examples([3, 30, 12, 50], [20, 4, 12, 50])
    for examples, num_cut in ((singles, 2), (pairs, 4)):  # 14 (pairs: 13) text tokens fit
        today, cut_today = tokenize.tokenize(examples, tokenizer, WIDTH)
        features, cut = tokenize.tokenize(examples, tokenizer, WIDTH, long_inputs=LongInputs())
        assert cut == cut_today == num_cut and set(features) == {"input_ids", "token_type_ids", "length"}
        for key in today:
            np.testing.assert_array_equal(features[key], today[key])
        for i, example in enumerate(examples):  # the tokenizer's own truncation, untouched
            reference = tokenizer(example.text, example.text_pair, truncation=True, max_length=WIDTH)
            assert _rows(features, i) == reference["input_ids"]
        # The classification task's default (a default config) tokenises the same way.
        config = tiny.get_config()
        task = tasks.from_config(config)
        assert task == Classification() and task.long_inputs == LongInputs()
        data = config.data
        data.max_seq_length = WIDTH
        data.text_pair_field = "pair" if examples is pairs else None
        for key, value in task.tokenize(examples, tokenizer, data, None, "p", ["a"]).items():
            np.testing.assert_array_equal(value, today[key])
    key = tokenize.cache_key(singles, tokenizer, WIDTH, {"path": "p"})
    assert tokenize.cache_key(singles, tokenizer, WIDTH, {"path": "p"}, LongInputs(stride=3)) == key
    others = {
        tokenize.cache_key(singles, tokenizer, WIDTH, {"path": "p"}, settings)
        for settings in (
            LongInputs("head_tail"),
            LongInputs("head_tail", head_tokens=2),
            WINDOWS,
            LongInputs("windows", stride=5),
            LongInputs("windows", stride=4, max_windows=2),
        )
    }
    assert len(others) == 5 and key not in others


# ---- head_tail ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_tokens, head", [(-1, 3), (0, 0), (5, 5), (14, 14)])
def test_head_tail_is_a_hand_cut_of_the_untruncated_ids(tokenizer, head_tokens, head):
    examples = _examples([2, 14, 15, 40, 90])
    features, cut = tokenize.tokenize(
        examples, tokenizer, WIDTH, long_inputs=LongInputs("head_tail", head_tokens=head_tokens)
    )
    assert "example_index" not in features and features["input_ids"].shape == (5, WIDTH)
    assert cut == 3
    for i, example in enumerate(examples):
        full = tokenizer(example.text)["input_ids"]  # [CLS] text [SEP], untruncated
        text = full[1:-1]
        expected = (
            full if len(text) <= 14 else [full[0], *text[:head], *text[len(text) - (14 - head) :], full[-1]]
        )
        assert _rows(features, i) == expected
        assert not features["token_type_ids"][i].any()


def test_head_tail_pairs_keep_truncations_share_and_cut_each_text_in_the_middle(tokenizer):
    examples = _examples([3, 30, 12, 50, 8, 9], [20, 4, 12, 50, 9, 8])
    truncated, _ = tokenize.tokenize(examples, tokenizer, WIDTH)
    features, cut = tokenize.tokenize(
        examples, tokenizer, WIDTH, long_inputs=LongInputs("head_tail", head_tokens=2)
    )
    assert cut == 6
    np.testing.assert_array_equal(features["length"], truncated["length"])
    np.testing.assert_array_equal(features["token_type_ids"], truncated["token_type_ids"])
    for i, example in enumerate(examples):
        first = tokenizer(example.text, add_special_tokens=False)["input_ids"]
        second = tokenizer(example.text_pair, add_special_tokens=False)["input_ids"]
        kept = truncated_lengths([len(first), len(second)], WIDTH - 3)
        # The tokenizer's "longest_first" share of the room, for each text.
        assert features["token_type_ids"][i].sum() == kept[1] + 1
        cuts = [
            text if len(text) == k else [*text[: min(2, k)], *text[len(text) - (k - min(2, k)) :]]
            for text, k in zip((first, second), kept, strict=True)
        ]
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        assert _rows(features, i) == [cls, *cuts[0], sep, *cuts[1], sep]


# ---- windows: tokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [0, 4, 13])
def test_windows_cover_every_token_overlap_by_the_stride_and_map_back(tokenizer, stride):
    examples = _examples([2, 14, 15, 40, 90, 0])
    settings = LongInputs("windows", stride=stride)
    features, cut = tokenize.tokenize(examples, tokenizer, WIDTH, long_inputs=settings, batch_size=4)
    owner = features["example_index"]
    assert cut == 0 and owner.dtype == np.int32 and (np.diff(owner) >= 0).all()
    for i, example in enumerate(examples):
        full = tokenizer(example.text)["input_ids"]
        text = full[1:-1]
        rows = [_rows(features, r) for r in np.flatnonzero(owner == i)]
        step = 14 - stride
        assert len(rows) == 1 + max(0, -(-(len(text) - 14) // step))
        for k, row in enumerate(rows):
            assert row[0] == full[0] and row[-1] == full[-1]  # [CLS] ... [SEP] in every window
            assert row[1:-1] == text[k * step : k * step + 14]  # window k starts `step` after window k-1
            if k:
                assert row[1 : 1 + stride] == rows[k - 1][-1 - stride : -1]  # shares `stride` tokens
        covered = rows[0][1:-1] + [t for row in rows[1:] for t in row[1 + stride : -1]]
        assert covered == text  # every token, in order, nothing twice outside the overlaps
    capped, cut = tokenize.tokenize(
        examples, tokenizer, WIDTH, long_inputs=LongInputs("windows", stride=stride, max_windows=2)
    )
    assert np.bincount(capped["example_index"]).tolist() == np.minimum(np.bincount(owner), 2).tolist()
    assert cut == int((np.bincount(owner) > 2).sum())
    keep = np.concatenate([np.flatnonzero(owner == i)[:2] for i in range(len(examples))])
    np.testing.assert_array_equal(capped["input_ids"], features["input_ids"][keep])


def test_windows_of_pairs_window_the_longer_text_beside_the_other(tokenizer):
    examples = _examples([40, 5, 30], [5, 40, 30])
    features, cut = tokenize.tokenize(examples, tokenizer, WIDTH, long_inputs=WINDOWS)
    assert cut == 1  # the third pair: the other text keeps only its first half-room (6) tokens
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for i, example in enumerate(examples):
        first = tokenizer(example.text, add_special_tokens=False)["input_ids"]
        second = tokenizer(example.text_pair, add_special_tokens=False)["input_ids"]
        windowed, other = (first, second) if len(first) > len(second) else (second, first)
        other = other[: min(len(other), 13 // 2)]
        width = 13 - len(other)
        rows = [_rows(features, r) for r in np.flatnonzero(features["example_index"] == i)]
        assert len(rows) == 1 + -(-(len(windowed) - width) // (width - 4))
        for k, row in enumerate(rows):
            piece = windowed[k * (width - 4) : k * (width - 4) + width]
            parts = (piece, other) if windowed is first else (other, piece)
            assert row == [cls, *parts[0], sep, *parts[1], sep]


def test_the_token_cache_keeps_windows_and_misses_on_a_changed_setting(tokenizer, tmp_path):
    examples = _examples([40, 3, 90])
    first = tokenize.cached_tokenize(examples, tokenizer, WIDTH, str(tmp_path), {"path": "p"}, WINDOWS)

    class Refusing:  # what the cache key reads; tokenising would fail
        name_or_path, vocab_size = tokenizer.name_or_path, tokenizer.vocab_size
        backend_tokenizer, pad_token_id = tokenizer.backend_tokenizer, tokenizer.pad_token_id

        def __call__(self, *args, **kwargs):
            raise AssertionError("tokenized again")

    again = tokenize.cached_tokenize(examples, Refusing(), WIDTH, str(tmp_path), {"path": "p"}, WINDOWS)
    for key in first:
        np.testing.assert_array_equal(again[key], first[key])
    assert set(again) == {"input_ids", "token_type_ids", "length", "example_index"}
    for changed in (LongInputs("windows", stride=3), LongInputs("windows", stride=4, max_windows=1)):
        with pytest.raises(AssertionError, match="tokenized again"):
            tokenize.cached_tokenize(examples, Refusing(), WIDTH, str(tmp_path), {"path": "p"}, changed)


# ---- windows: the model, evaluation and training batches ---------------------------------------------------


def _window_logits(model, params, features) -> np.ndarray:
    """Each window's logits, computed alone: a batch of one, its padding masked."""
    apply = jax.jit(lambda ids, mask, types: model.apply({"params": params}, ids, mask, types))
    out = []
    for r in range(len(features["length"])):
        mask = (np.arange(features["input_ids"].shape[1]) < features["length"][r])[None].astype(np.int32)
        ids, types = features["input_ids"][r : r + 1], features["token_type_ids"][r : r + 1]
        out.append(np.asarray(apply(ids, mask, types))[0])
    return np.stack(out)


def _unit_scale(params, seed=0):
    """Every weight matrix and embedding drawn from N(0, 1) (LayerNorm and biases as they are): unlike
    BERT's initialisation (0.02), texts then differ in their predicted class, and no two logits nearly tie."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        return x if "LayerNorm" in name or "bias" in name else rng.normal(size=x.shape).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(draw, params)


def test_evaluation_counts_each_text_once_with_its_mean_window_logits_on_1_and_8_devices(tokenizer):
    labels = ["neg", "pos", "mid"]
    examples = _examples([40, 3, 90, 15, 28, 60, 1], seed=1, labels=labels)
    features, _ = tokenize.tokenize(examples, tokenizer, WIDTH, long_inputs=WINDOWS)
    num_windows = len(features["length"])
    assert num_windows == 4 + 1 + 9 + 2 + 3 + 6 + 1  # 1 + ceil((tokens - 14) / 10) each
    targets = np.array([0, 1, 2, 0, 1, 2, 0], np.int32)
    split = pipeline.Split("eval", "eval", examples, targets, features)
    model = SequenceClassifier(tiny_bert(len(tokenizer), max_position_embeddings=WIDTH), num_labels=3)
    params = _unit_scale(init_params(model))
    logits = mean_by_example(_window_logits(model, params, features), features["example_index"], 7)
    ordered = np.sort(logits, -1)
    assert (ordered[:, -1] - ordered[:, -2]).min() > 1e-4, "a near tie would make argmax fragile"
    assert len(set(logits.argmax(-1))) == 3
    expected_confusion = evaluate.confusion_matrix_from_predictions(targets, logits.argmax(-1), 3)
    shifted = logits - logits.max(-1, keepdims=True)
    losses = np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(7), targets]
    task = Classification(long_inputs=WINDOWS)
    data = tiny.get_config().data
    results = []
    for num_devices in (1, 8):
        totals = eval_totals(model, params, split, num_devices, buckets=[WIDTH], batch_size=8, task=task)
        assert int(totals["windows"]) == num_windows
        result = task.report(totals, split, labels, data)
        np.testing.assert_array_equal(result.confusion, expected_confusion)
        assert result.metrics["num_examples"] == 7 and result.confusion.sum() == 7
        assert result.metrics["loss"] == pytest.approx(losses.mean(), rel=1e-5)
        assert result.extra == {"windows": num_windows}
        results.append(result)
    assert results[0].report == results[1].report and results[0].text == results[1].text
    assert results[0].metrics == pytest.approx(results[1].metrics, rel=1e-6)


def test_training_windows_carry_their_texts_label(tokenizer):
    examples = _examples([40, 3, 90, 15], labels=["a", "b"])
    features, _ = tokenize.tokenize(examples, tokenizer, WIDTH, long_inputs=WINDOWS)
    targets = np.array([0, 1, 0, 1], np.int32)
    split = pipeline.Split("train", "train", examples, targets, features)
    seen = []
    batches = pipeline.train_batches(split, [8, WIDTH], 4, seed=0, start_step=0)
    for _ in range(pipeline.steps_per_epoch(split, [8, WIDTH], 4)):
        batch = next(batches)
        real = batch["index"] >= 0
        rows = batch["index"][real]
        np.testing.assert_array_equal(batch["labels"][real], targets[features["example_index"][rows]])
        seen += rows.tolist()
    assert sorted(seen) == list(range(len(features["length"])))  # every window once an epoch


# ---- a run on windows, evaluated and predicted ------------------------------------------------------------


def _write(path, examples):
    with open(path, "w") as f:
        for example in examples:
            f.write(json.dumps({"text": example.text, "label": example.label}) + "\n")


@pytest.fixture(scope="module")
def windows_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("long_inputs")
    rng = np.random.default_rng(5)
    train_examples = _examples(rng.integers(3, 60, 24).tolist(), seed=2, labels=["negative", "positive"])
    dev_examples = _examples([50, 4, 31, 12, 70], seed=3, labels=["positive", "negative"])
    _write(root / "train.jsonl", train_examples)
    _write(root / "dev.jsonl", dev_examples)
    config = tiny.get_config()
    config.data.train_path, config.data.eval_path = str(root / "train.jsonl"), str(root / "dev.jsonl")
    config.data.max_seq_length = WIDTH
    config.data.long_inputs, config.data.window_stride, config.data.max_windows = "windows", 4, 5
    config.training.num_train_steps, config.training.eval_every = 4, 2
    final = train.train_and_evaluate(config, str(root / "run"))
    return root, final, dev_examples


def test_a_run_on_windows_reports_one_result_per_text(windows_run):
    root, final, dev_examples = windows_run
    assert final["eval"]["num_examples"] == len(dev_examples) == 5
    saved = json.loads((root / "run/eval/final_eval.json").read_text())
    assert saved["report"]["macro avg"]["support"] == 5 and np.sum(saved["confusion_matrix"]) == 5
    assert saved["windows"] == 5 + 1 + 3 + 1 + 5  # the last text: 5 of its 7 (data.max_windows)
    step = json.loads((root / "run/eval/eval_step00000002.json").read_text())
    assert step["report"]["macro avg"]["support"] == 5


def test_predict_gives_each_text_the_mean_of_its_window_logits(windows_run):
    root, final, dev_examples = windows_run
    run = predict.load_run(str(root / "run"))
    assert run.config.data.long_inputs == "windows"
    probabilities, features = predict.predict_outputs(run, dev_examples, batch_size=8)
    assert probabilities.shape == (5, 2) and len(features["length"]) == 15
    model = create_model(run.config, run.bert_config, 2, run.tokenizer)
    logits = mean_by_example(_window_logits(model, run.params, features), features["example_index"], 5)
    np.testing.assert_allclose(probabilities, jax.nn.softmax(logits, -1), rtol=1e-5, atol=1e-6)
    # The final evaluation used the same parameters: its accuracy and loss are those of these texts.
    truth = np.array([run.label_names.index(e.label) for e in dev_examples])
    accuracy = float((probabilities.argmax(-1) == truth).mean())
    assert final["eval"]["accuracy"] == pytest.approx(accuracy)
    loss = -np.log(probabilities[np.arange(5), truth]).mean()
    assert final["eval"]["loss"] == pytest.approx(loss, rel=1e-4)
    task = tasks.from_config(run.config)
    records = list(task.prediction_records(dev_examples, probabilities, features, run.label_names))
    assert [r["text"] for r in records] == [e.text for e in dev_examples]
    assert [r["label"] for r in records] == [run.label_names[k] for k in probabilities.argmax(-1)]


# ---- bad settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"data.long_inputs": "sliding"},
            "config data.long_inputs='sliding' must be one of truncate, head_tail, windows",
        ),
        (
            {"data.long_inputs": "windows", "data.window_stride": 30},
            "data.window_stride=30 must be less than 30",
        ),
        (
            {"data.long_inputs": "windows", "data.window_stride": 32},
            "data.window_stride=32 must be less than 30",
        ),
        (
            {"data.long_inputs": "windows", "data.window_stride": 15, "data.text_pair_field": "b"},
            "data.window_stride=15 must be less than 15",
        ),
        (
            {"data.long_inputs": "windows", "data.window_stride": -1},
            "data.window_stride=-1 must not be negative",
        ),
        ({"data.long_inputs": "windows", "data.max_windows": -2}, "data.max_windows=-2 must not be negative"),
        ({"data.long_inputs": "head_tail", "data.head_tokens": 31}, "data.head_tokens=31 must be at most 30"),
        ({"data.head_tokens": -2}, "data.head_tokens=-2 must be a number of tokens, or -1"),
        (
            {"data.long_inputs": "windows", "task.name": "regression"},
            "applies to task.name in classification",
        ),
        ({"data.long_inputs": "windows", "task.name": "multilabel"}, "not 'multilabel' \\(use 'truncate'\\)"),
        ({"data.long_inputs": "head_tail", "task.name": "ner"}, "data.long_inputs='head_tail' applies"),
        (
            {
                "data.long_inputs": "windows",
                "task.name": "qa",
                "task.max_query_length": 8,
                "task.doc_stride": 4,
            },
            "not 'qa'",
        ),
        (
            {"data.long_inputs": "windows", "task.name": "pet", "task.verbalizer": ("bad", "good")},
            "not 'pet'",
        ),
        ({"data.long_inputs": "windows", "task.name": "relation"}, "not 'relation'"),
    ],
)
def test_bad_settings_are_one_line_user_errors(overrides, message):
    config = tiny.get_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(UserError, match=message) as error:
        config_lib.check(config)
    assert "\n" not in str(error.value)


def test_good_settings_pass_and_a_window_too_small_for_the_stride_is_refused_on_tokenising(tokenizer):
    config = tiny.get_config()
    config.data.long_inputs, config.data.window_stride = "windows", 29  # 30 text tokens per window
    config_lib.check(config)
    config.data.long_inputs, config.data.head_tokens = "head_tail", 30
    config_lib.check(config)
    # Called directly (no config check), a stride no window can hold is still one line naming the key.
    with pytest.raises(
        UserError, match=r"data.window_stride=14 must be less than the 14 text tokens"
    ) as error:
        tokenize.tokenize(_examples([40]), tokenizer, WIDTH, long_inputs=LongInputs("windows", stride=14))
    assert "\n" not in str(error.value)


def test_the_imdb_long_review_variants_read_one_subset_three_ways():
    configs = {v: imdb.get_config(f"cpu_{v}") for v in ("truncate", "windows", "head_tail")}
    for config in configs.values():
        config.model.checkpoint = config.model.checkpoint or "minilm"  # where the package is not installed
        config_lib.check(config)
        assert (config.data.max_train_examples, config.data.max_eval_examples, config.seed) == (2000, 1000, 0)
    truncate = configs["truncate"].data
    assert (truncate.long_inputs, truncate.max_seq_length) == ("truncate", 256)
    windows = configs["windows"].data
    room = windows.max_seq_length - 2
    assert room + (windows.max_windows - 1) * (room - windows.window_stride) == 1014  # tokens read at most
    head_tail = configs["head_tail"].data
    assert (head_tail.long_inputs, head_tail.max_seq_length, head_tail.head_tokens) == ("head_tail", 512, -1)
