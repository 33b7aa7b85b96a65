"""Word attributions (`jaxft.explain`): integrated gradients' completeness and exactness on a linear model,
gradient x input against `jax.grad`, the same numbers on 1 and 8 devices, word merging, every task's
explanations, and `jaxft-predict --explain --html` on the session's tiny run.

The runs here are built in memory (random tiny encoders, no training); their weights are drawn wider than
BERT's (`initializer_range`) so that the output is far from linear in the embeddings and the integration
error is visible.
"""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxft
from jaxft import explain, predict, tasks
from jaxft.configs import tiny
from jaxft.data import tokenize
from jaxft.data.conll import Sentence
from jaxft.data.example import Example, MultiLabelExample
from jaxft.data.relations import RelationExample
from jaxft.errors import UserError
from jaxft.models import convert
from jaxft.models.bert import BertEmbeddings
from jaxft.models.heads import SequenceClassifier
from jaxft.training.model import create_model
from tests.helpers import tiny_bert


def _run(
    tokenizer_dir: str, labels: list[str], init_range: float = 0.2, bias=None, **config
) -> predict.TrainedRun:
    """A `TrainedRun` of a random one-layer encoder with tiny.py's config, `config`'s keys set (`task__name`
    is `task.name`); `bias` replaces the head's bias (to fix what it predicts)."""
    settings = tiny.get_config()
    settings.data.max_seq_length, settings.data.num_buckets = 24, 1
    for key, value in config.items():
        section, name = key.split("__")
        settings[section][name] = value
    task = tasks.from_config(settings)
    tokenizer = tokenize.load_tokenizer(tokenizer_dir, words=task.name == "ner")
    task.prepare_tokenizer(tokenizer)
    bert = dataclasses.replace(tiny_bert(len(tokenizer), num_hidden_layers=1), initializer_range=init_range)
    model = create_model(settings, bert, len(labels), tokenizer)
    ids = np.full((1, 8), tokenizer.mask_token_id, np.int32)
    params = jax.device_get(
        jax.jit(model.init)(jax.random.key(0), ids, np.ones_like(ids), np.zeros_like(ids))["params"]
    )
    if bias is not None:
        params["classifier"]["bias"] = np.asarray(bias, np.float32)
    return predict.TrainedRun(settings, labels, bert, params, tokenizer, 0)


def _batch(tokenizer, texts: list[str], width: int = 16) -> dict:
    """A batch as `jaxft.data.batching` makes them, with every non-special token a word of its own."""
    encoded = tokenizer(texts, padding="max_length", max_length=width, return_tensors="np")
    ids = encoded["input_ids"].astype(np.int32)
    special = np.isin(ids, tokenizer.all_special_ids)
    return {
        "input_ids": ids,
        "attention_mask": encoded["attention_mask"].astype(np.int32),
        "token_type_ids": encoded["token_type_ids"].astype(np.int32),
        "word_index": np.where(special, -1, np.arange(width)[None]).astype(np.int32),
    }


def _logits(run, batch, input_ids=None):
    model = create_model(run.config, run.bert_config, len(run.label_names), run.tokenizer)
    ids = batch["input_ids"] if input_ids is None else input_ids
    apply = jax.jit(model.apply)  # one compilation, not one per operation
    return np.asarray(apply({"params": run.params}, ids, batch["attention_mask"], batch["token_type_ids"]))


def _step(run, batch, label: int, **options) -> dict:
    model = create_model(run.config, run.bert_config, len(run.label_names), run.tokenizer)
    target = np.zeros((len(batch["input_ids"]), len(run.label_names)), np.float32)
    target[:, label] = 1.0
    step = jax.jit(
        lambda p, b: explain.attribution_step(
            p,
            b,
            model=model,
            pad_id=run.tokenizer.pad_token_id,
            mask_id=run.tokenizer.mask_token_id,
            **options,
        )
    )
    return jax.tree.map(np.asarray, step(run.params, {**batch, "target": target}))


TEXTS = ["the cats sat on the mat , very good !", "a dog is not bad", "it was a very bad movie"]


@pytest.fixture(scope="module")
def run(tiny_tokenizer_dir):
    """A three-label classifier over a random one-layer encoder."""
    return _run(tiny_tokenizer_dir, ["a", "b", "c"], init_range=0.5)


def test_ig_attributions_over_all_tokens_sum_to_the_output_difference_closer_with_more_steps(run):
    batch = _batch(run.tokenizer, TEXTS)
    # f(x) and f(baseline) from the model itself: the baseline's ids put through the whole model.
    baseline_ids = np.where(batch["word_index"] >= 0, run.tokenizer.pad_token_id, batch["input_ids"])
    difference = _logits(run, batch)[:, 1] - _logits(run, batch, baseline_ids)[:, 1]
    errors = {}
    for steps in (8, 64):
        out = _step(run, batch, 1, steps=steps)
        np.testing.assert_allclose(out["output"] - out["baseline_output"], difference, rtol=1e-4, atol=1e-5)
        errors[steps] = np.abs(out["tokens"].sum(axis=1) - difference)
        special = batch["word_index"] < 0
        assert np.all(out["tokens"][special] == 0.0)  # the baseline keeps [CLS], [SEP] and padding
    assert np.all(np.abs(difference) > 0.2)  # a real change to explain
    assert np.all(errors[64] < errors[8] / 8)  # the trapezoid rule: error ~ 1 / steps^2 (64x here)
    assert np.all(errors[64] < 5e-4 * np.maximum(np.abs(difference), 1.0))


class LinearModel(nn.Module):
    """f(e) = sum over real positions of e_i @ kernel: integrated gradients are exact on it."""

    vocab: int
    labels: int

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, *, deterministic=True):
        hidden = nn.Embed(self.vocab, 6, name="embeddings")(input_ids)
        if not self.is_initializing():
            hidden = self.perturb("embedding_output", hidden)
        kernel = self.param("kernel", nn.initializers.normal(1.0), (6, self.labels))
        return jnp.einsum("blh,bl,hc->bc", hidden, attention_mask.astype(hidden.dtype), kernel)


def test_ig_on_a_linear_model_equals_the_analytic_value_and_a_finite_difference_for_any_steps():
    model, pad = LinearModel(vocab=20, labels=3), 0
    ids = np.array([[2, 7, 11, 5, 3, 0], [2, 9, 9, 3, 0, 0]], np.int32)
    mask = (ids != pad).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    params = model.init(jax.random.key(1), ids, mask, batch["token_type_ids"])["params"]
    batch["word_index"] = np.where((ids > 3), np.arange(6)[None], -1).astype(np.int32)  # 2, 3: [CLS], [SEP]
    batch["target"] = np.array([[0, 0, 1], [1, 0, 0]], np.float32)
    table, kernel = np.asarray(params["embeddings"]["embedding"]), np.asarray(params["kernel"])
    label = batch["target"].argmax(1)

    def f(input_ids):
        logits = model.apply({"params": params}, input_ids, mask, batch["token_type_ids"])
        return np.asarray(logits)[np.arange(2), label]

    is_word = batch["word_index"] >= 0
    analytic = np.where(is_word, np.einsum("blh,hb->bl", table[ids] - table[pad], kernel[:, label]), 0.0)
    finite = np.zeros_like(analytic)  # f(x) - f(x with token i's embedding moved to the baseline's)
    for i in range(ids.shape[1]):
        moved = ids.copy()
        moved[:, i] = np.where(is_word[:, i], pad, ids[:, i])
        finite[:, i] = f(ids) - f(moved)
    np.testing.assert_allclose(finite, analytic, rtol=1e-5, atol=1e-5)
    for steps in (1, 7):
        out = jax.tree.map(
            np.asarray, explain.attribution_step(params, batch, model=model, steps=steps, pad_id=pad)
        )
        np.testing.assert_allclose(out["tokens"], analytic, rtol=1e-5, atol=1e-5)
    zero = jax.tree.map(np.asarray, explain.attribution_step(params, batch, model=model, baseline="zero"))
    exact = np.where(is_word, np.einsum("blh,hb->bl", table[ids], kernel[:, label]), 0.0)
    np.testing.assert_allclose(zero["tokens"], exact, rtol=1e-5, atol=1e-5)
    # Gradient x input is IG from the zero embedding on a linear model, at every position.
    grad_input = jax.tree.map(
        np.asarray, explain.attribution_step(params, batch, model=model, method="grad_input")
    )
    everywhere = np.einsum("blh,hb->bl", table[ids], kernel[:, label]) * mask
    np.testing.assert_allclose(grad_input["tokens"], everywhere, rtol=1e-5, atol=1e-5)


def test_grad_input_equals_the_embedding_output_times_jax_grad_of_the_logit(run):
    batch = _batch(run.tokenizer, TEXTS)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    model = create_model(run.config, run.bert_config, len(run.label_names), run.tokenizer)
    embed = jax.jit(BertEmbeddings(run.bert_config).apply, static_argnums=3)
    embedded = embed({"params": run.params["bert"]["embeddings"]}, ids, types, True)

    def logit(delta):  # the label-2 logits' sum: each row's gradient is its own logit's
        variables = {"params": run.params, "perturbations": {"bert": {"embedding_output": delta}}}
        return model.apply(variables, ids, mask, types)[:, 2].sum()

    expected = np.sum(
        np.asarray(embedded) * np.asarray(jax.jit(jax.grad(logit))(jnp.zeros_like(embedded))), -1
    )
    out = _step(run, batch, 2, method="grad_input")
    np.testing.assert_allclose(out["tokens"], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["output"], _logits(run, batch)[:, 2], rtol=1e-5, atol=1e-6)


def _examples(texts, pairs=None) -> list[Example]:
    pairs = pairs or [None] * len(texts)
    return [Example(t, p, None, f"test:{i}") for i, (t, p) in enumerate(zip(texts, pairs, strict=True))]


def test_words_merge_their_pieces_and_drop_special_tokens(run):
    task = tasks.from_config(run.config)
    examples = _examples(["The cats sat on the mat, very good!", "cats"], ["a dog", "dogs sat"])
    features = task.features_for_prediction(examples, run.tokenizer, 24)
    words = explain.example_words(task, examples, features, run.tokenizer, 24)
    # [CLS] the cat ##s sat on the mat , very good ! [SEP] a dog [SEP]
    assert words[0].words == ["The", "cats", "sat", "on", "the", "mat", ",", "very", "good", "!", "a", "dog"]
    assert words[0].segments == [0] * 10 + [1] * 2
    np.testing.assert_array_equal(
        words[0].positions[:17], [-1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, -1, 10, 11, -1, -1]
    )
    # [CLS] cat ##s [SEP] dog ##s sat [SEP]
    assert words[1].words == ["cats", "dogs", "sat"] and words[1].segments == [0, 1, 1]
    np.testing.assert_array_equal(words[1].positions[:9], [-1, 0, 0, -1, 1, 1, 2, -1, -1])
    # The merged scores are the tokens' sums: gradient x input's, whose tokens `_step` gives.
    records = explain.explain(run, examples, method="grad_input", label="c")
    batch = {key: features[key][:, :16] for key in ("input_ids", "token_type_ids")}
    batch["attention_mask"] = (np.arange(16) < features["length"][:, None]).astype(np.int32)
    batch["word_index"] = np.stack([w.positions[:16] for w in words])
    tokens = _step(run, batch, 2, method="grad_input")["tokens"]
    for record, example_words, row in zip(records, words, tokens, strict=True):
        expected = np.bincount(example_words.positions[:16][example_words.positions[:16] >= 0],
                               row[example_words.positions[:16] >= 0], len(example_words.words))  # fmt: skip
        scores = [s for _, s in record["attributions"]] + [s for _, s in record["pair_attributions"]]
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)
        assert [w for w, _ in record["attributions"] + record["pair_attributions"]] == example_words.words
        assert record["explanation"]["label"] == "c" and set(record["explanation"]) == {
            "label",
            "probability",
            "output",
        }


def test_attributions_are_the_same_on_one_and_on_eight_devices(run):
    assert jax.device_count() == 8
    examples = _examples(
        [t.replace(" ,", ",") for t in TEXTS] * 3 + ["good"]
    )  # 10 rows: padding on 8 devices
    one = explain.explain(run, examples, steps=6, devices=jax.devices()[:1], batch_size=4)
    eight = explain.explain(run, examples, steps=6)
    assert len(one) == len(eight) == len(examples)
    for a, b in zip(one, eight, strict=True):
        assert [w for w, _ in a["attributions"]] == [w for w, _ in b["attributions"]]
        np.testing.assert_allclose(
            [s for _, s in a["attributions"]], [s for _, s in b["attributions"]], rtol=1e-5, atol=1e-7
        )
        assert a["explanation"]["label"] == b["explanation"]["label"] == a["label"]
        for key in ("output", "baseline_output", "completeness_error"):
            assert a["explanation"][key] == pytest.approx(b["explanation"][key], rel=1e-5, abs=1e-6)


def test_ner_explains_each_predicted_entity_by_its_tag_logits(tiny_tokenizer_dir):
    # The bias makes every word B-X: three one-word entities.
    run = _run(tiny_tokenizer_dir, ["O", "B-X", "I-X"], bias=[-20, 20, -20], task__name="ner")
    sentences = [Sentence(("the", "cats", "sat"), None, "test:1"), Sentence(("dogs",), None, "test:5")]
    records = explain.explain(run, sentences, steps=32)
    assert [r["tags"] for r in records] == [["B-X"] * 3, ["B-X"]]
    features = tasks.from_config(run.config).features_for_prediction(sentences, run.tokenizer, 24)
    logits = _logits(
        run, {**features, "attention_mask": (np.arange(24) < features["length"][:, None]).astype(np.int32)}
    )
    first = {
        0: [1, 2, 4],
        1: [1],
    }  # [CLS] the cat ##s sat [SEP] / [CLS] dog ##s [SEP]: each word's first piece
    for i, record in enumerate(records):
        assert len(record["attributions"]) == len(record["explanation"]) == len(record["entities"])
        for j, (pairs, info) in enumerate(zip(record["attributions"], record["explanation"], strict=True)):
            assert [w for w, _ in pairs] == list(sentences[i].words)
            assert info["label"] == "X" and info["entity"] == sentences[i].words[j]
            assert info["output"] == pytest.approx(logits[i, first[i][j], 1], rel=1e-5)
            assert abs(info["completeness_error"]) < 1e-2 * max(
                1.0, abs(info["output"] - info["baseline_output"])
            )
    with pytest.raises(UserError, match="^explain: entity type 'Y' is not one of the run's: X$"):
        explain.explain(run, sentences, label="Y")


def test_multilabel_explains_each_predicted_label_or_each_label_asked(tiny_tokenizer_dir):
    run = _run(tiny_tokenizer_dir, ["a", "b", "c"], bias=[20, -20, 20], task__name="multilabel")
    examples = [MultiLabelExample("a very good movie", None, None, "test:1")]
    logits = _logits(run, _batch(run.tokenizer, ["a very good movie"]))[0]
    predicted, asked = (
        explain.explain(run, examples, steps=16, label=label)[0] for label in (None, ["b", "a"])
    )
    assert predicted["labels"] == ["a", "c"]
    for record, labels in ((predicted, ["a", "c"]), (asked, ["b", "a"])):
        assert list(record["attributions"]) == list(record["explanation"]) == labels
        for name in labels:
            info = record["explanation"][name]
            assert info["label"] == name and info["output"] == pytest.approx(
                logits["abc".index(name)], rel=1e-5
            )
            assert [w for w, _ in record["attributions"][name]] == ["a", "very", "good", "movie"]
            assert sum(s for _, s in record["attributions"][name]) == pytest.approx(
                info["output"] - info["baseline_output"] + info["completeness_error"], abs=1e-6
            )
    with pytest.raises(UserError, match="^explain: label 'd' is not one of the run's: a, b, c$"):
        explain.explain(run, examples, label=["a", "d"])


def _relation(text: str, head: str, tail: str) -> RelationExample:
    start, end = text.index(head), text.index(tail)
    return RelationExample(text, None, None, "test:1", (start, start + len(head)), (end, end + len(tail)))


@pytest.mark.parametrize(
    "config, baseline, examples, words, pair_words",
    [
        (  # sentence pairs: the pair's words in pair_attributions; the zero baseline
            {"data__text_pair_field": "pair"},
            "zero",
            _examples(["the cats sat"], ["a dog, not good"]),
            ["the", "cats", "sat"],
            ["a", "dog", ",", "not", "good"],
        ),
        (  # regression: the value; the mask baseline
            {"task__name": "regression"},
            "mask",
            _examples(["it was a very bad movie!"]),
            ["it", "was", "a", "very", "bad", "movie", "!"],
            None,
        ),
        (  # pet: the template's own words are not the example's
            {
                "task__name": "pet",
                "task__template": "{text} it was [MASK] .",
                "task__verbalizer": ("bad", "good"),
            },
            "pad",
            _examples(["the dogs sat on the mat"]),
            ["the", "dogs", "sat", "on", "the", "mat"],
            None,
        ),
        (  # relation: the entity markers are special tokens
            {"task__name": "relation"},
            "pad",
            [_relation("the cat sat on the mat", "cat", "mat")],
            ["the", "cat", "sat", "on", "the", "mat"],
            None,
        ),
    ],
    ids=["pair", "regression", "pet", "relation"],
)
def test_each_task_explains_its_output_by_its_words(
    tiny_tokenizer_dir, config, baseline, examples, words, pair_words
):
    name = config.get("task__name", "classification")
    labels = {"regression": ["score"], "pet": ["neg", "pos"]}.get(name, ["x", "y"])
    run = _run(tiny_tokenizer_dir, labels, init_range=0.1, **config)
    (record,) = explain.explain(run, examples, steps=32, baseline=baseline)
    assert [w for w, _ in record["attributions"]] == words
    if pair_words is not None:
        assert [w for w, _ in record["pair_attributions"]] == pair_words
    else:
        assert "pair_attributions" not in record
    info = record["explanation"]
    expected = record["label"] if name != "regression" else "score"
    assert info["label"] == expected
    if name == "regression":
        assert info["output"] == pytest.approx(record["score"], rel=1e-5)
    else:
        assert info["probability"] == pytest.approx(record["probabilities"][expected], rel=1e-6)
    scores = [s for _, s in record["attributions"] + record.get("pair_attributions", [])]
    assert sum(scores) == pytest.approx(
        info["output"] - info["baseline_output"] + info["completeness_error"], abs=1e-6
    )
    assert abs(info["completeness_error"]) < 1e-2 * max(1.0, abs(info["output"] - info["baseline_output"]))
    assert any(abs(s) > 1e-4 for s in scores)


def test_qa_and_bad_options_are_refused_in_one_line_before_anything_runs(run):
    qa = dataclasses.replace(run, config=run.config.copy_and_resolve_references())
    qa.config.task.name = "qa"
    examples = _examples(["the cat"])
    with pytest.raises(UserError, match="^explain: not implemented for qa$"):
        explain.explain(qa, examples)
    for options, message in (
        ({"method": "lime"}, "explain: method 'lime' must be one of ig, grad_input"),
        ({"baseline": "unk"}, "explain: baseline 'unk' must be one of pad, mask, zero"),
        ({"steps": 0}, "explain: steps 0 must be a positive number of integration intervals"),
        ({"label": "z"}, "explain: label 'z' is not one of the run's: a, b, c"),
        (
            {"label": ["a", "b"]},
            "explain: task 'classification' explains one label at a time, not ['a', 'b']",
        ),
    ):
        with pytest.raises(UserError) as error:
            explain.explain(run, examples, **options)
        assert str(error.value) == message


def test_predict_refuses_a_bad_html_page_before_loading_the_run(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path), "--input", str(tmp_path / "in.jsonl"), "--explain"]
    for extra, message in (
        (
            ["--output", str(tmp_path / "o.jsonl"), "--html", str(tmp_path)],
            f"--html {tmp_path}: is a directory",
        ),
        (["--output", str(tmp_path / "p.png"), "--html", str(tmp_path / "p.html")], "would replace --output"),
        (
            ["--output", str(tmp_path / "o.jsonl"), "--explain-steps", "0"],
            "--explain-steps 0: must be a positive number of intervals",
        ),
    ):
        assert predict.main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_predict_explain_writes_attributions_on_every_line_and_html_draws_them(tiny_run, tmp_path, capsys):
    workdir, _ = tiny_run
    texts = ["the food was wonderful", "a dull, slow and tiresome film", "it rained"]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out, page = tmp_path / "out.jsonl", tmp_path / "pictures" / "page.html"
    argv = ["--workdir", str(workdir), "--input", str(source), "--output", str(out)]
    assert predict.main([*argv, "--html", str(page)]) == 2
    assert capsys.readouterr().err == "error: --html draws attributions: give --explain too\n"
    assert predict.main([*argv, "--explain", "--explain-steps", "4", "--html", str(page)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    tokenizer = predict.load_run(str(workdir)).tokenizer
    for text, row in zip(texts, rows, strict=True):
        words = [word for word, _ in row["attributions"]]
        # The tokenizer's words, in order (punctuation apart), each once per occurrence.
        encoding = tokenizer(text, return_offsets_mapping=True).encodings[0]
        spans = {}
        for word, (start, end) in zip(encoding.word_ids, encoding.offsets, strict=True):
            if word is not None:
                spans[word] = (spans.get(word, (start, end))[0], end)
        assert words == [text[a:b] for a, b in spans.values()]
        assert row["explanation"]["label"] == row["label"]
        assert row["explanation"]["probability"] == row["probabilities"][row["label"]]
    html = page.read_text()
    assert html.count("<tr><td>") == len(texts) and all(
        f">{w}</span>" in html for w in ("food", "dull", "rained")
    )
    png = page.with_suffix(".png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    # The Python API returns the same records (to float rounding: its batches have another shape).
    records = jaxft.load(workdir).explain(texts, steps=4)
    for record, row in zip(records, rows, strict=True):
        assert record.keys() == row.keys() and record["label"] == row["label"]
        assert [w for w, _ in record["attributions"]] == [w for w, _ in row["attributions"]]
        scores = [s for _, s in record["attributions"]]
        np.testing.assert_allclose(scores, [s for _, s in row["attributions"]], rtol=1e-4, atol=1e-8)


# Tiny encoders of the families whose embedding module is not BERT's own: ELECTRA (a projection after it),
# DeBERTa-v2 and ModernBERT (encoders of their own), as transformers configures them.
FAMILY_CONFIGS = {
    "electra": dict(model_type="electra", embedding_size=12),
    "deberta-v2": dict(
        model_type="deberta-v2", relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
        max_relative_positions=12, position_biased_input=False, type_vocab_size=0, norm_rel_ebd="layer_norm",
    ),
    "modernbert": dict(
        model_type="modernbert", local_attention=4, global_attn_every_n_layers=2, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, cls_token_id=0, sep_token_id=2,
    ),
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_every_familys_embedding_output_is_where_the_path_runs(family):
    """The path's ends are the input's and the baseline's outputs on each encoder family: its embedding
    module (named "embeddings") is the one whose output the encoder perturbs."""
    import transformers

    options = dict(FAMILY_CONFIGS[family])
    sizes = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
    sizes["intermediate_size"] = 24
    hf = transformers.AutoConfig.for_model(options.pop("model_type"), **sizes, **options)
    model = SequenceClassifier(config=convert.config_from_dict(hf.to_dict()), num_labels=2)
    ids = np.array([[0, 7, 8, 9, 2], [0, 11, 2, 1, 1]], np.int32)
    mask, types = (ids != 1).astype(np.int32), np.zeros_like(ids)
    ids = np.where(mask == 1, ids, hf.pad_token_id).astype(np.int32)
    params = jax.jit(model.init)(jax.random.key(0), ids, mask, types)["params"]
    leaves, tree = jax.tree.flatten(params)  # every weight moved: far from linear, nothing left at 0 or 1
    keys = jax.random.split(jax.random.key(1), len(leaves))
    moved = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    params = tree.unflatten(moved)
    is_word = mask.astype(bool) & ~np.isin(ids, [0, 2])
    target = np.eye(2, dtype=np.float32)[[0, 1]]
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "target": target}
    batch["word_index"] = np.where(is_word, np.arange(ids.shape[1]), -1).astype(np.int32)
    step = jax.jit(lambda p, b: explain.attribution_step(p, b, model=model, steps=4, pad_id=hf.pad_token_id))
    out = jax.tree.map(np.asarray, step(params, batch))
    apply = jax.jit(model.apply)
    baseline_ids = np.where(is_word, hf.pad_token_id, ids)
    difference = apply({"params": params}, ids, mask, types)
    difference -= apply({"params": params}, baseline_ids, mask, types)
    expected = np.sum(difference * target, axis=1)
    assert np.all(np.abs(expected) > 1e-2)
    np.testing.assert_allclose(out["output"] - out["baseline_output"], expected, rtol=1e-4, atol=1e-5)
    assert np.all(out["tokens"][~is_word] == 0.0) and np.all(np.abs(out["tokens"][is_word]) > 0)
