"""Relation extraction: entity markers as whole tokens, the grown embedding table, the marker / [CLS] heads
against a manual computation, span validation naming file:line, truncation around the entities, and a tiny
end-to-end run on a toy relation that only the markers reveal (prediction, resume, export)."""

import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft import config as config_lib
from jaxft import export, predict, tasks
from jaxft.configs import common, relation
from jaxft.data import tokenize
from jaxft.errors import UserError
from jaxft.models import convert
from jaxft.models.bert import BertEncoder
from jaxft.models.heads import RelationClassifier, SequenceClassifier
from jaxft.tasks.relation import MARKERS, Relation, mark_entities, tokenize_relations
from jaxft.training import train, trained
from tests.helpers import tiny_bert

# Toy relation: every sentence names one drink-or-device word (A) and one book-or-film word (B); the label
# says which group the *head* entity is from. Both groups appear in every text, so only the markers tell.
GROUP_A = ("coffee", "water")
GROUP_B = ("book", "film")
FILLERS = ("the", "was", "great", "new", "and", "on", "a", "with", "from", "after")
BASE_VOCAB = 555  # jaxft/configs/tiny_tokenizer


def _toy(seed: int, count: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(count):
        a, b = str(rng.choice(GROUP_A)), str(rng.choice(GROUP_B))
        words = [str(w) for w in rng.choice(FILLERS, int(rng.integers(1, 4)))]
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        i, j = sorted(int(k) for k in rng.choice(len(words) + 2, 2, replace=False))
        words.insert(i, first)
        words.insert(j, second)
        starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
        spans = {first: [int(starts[i]), int(starts[i]) + len(first)]}
        spans[second] = [int(starts[j]), int(starts[j]) + len(second)]
        head, tail = (a, b) if rng.random() < 0.5 else (b, a)
        label = "a_head" if head in GROUP_A else "b_head"
        records.append({"text": " ".join(words), "head": spans[head], "tail": spans[tail], "label": label})
    return records


def _jsonl_config():
    """jaxft/configs/relation.py:tiny on JSONL files (the config's own data is SemEval-2010's release)."""
    config = relation.get_config("tiny")
    config.data.format = "jsonl"
    config.data.train_path = config.data.test_path = None
    return config


def _write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def _tokenizer():
    tokenizer = tokenize.load_tokenizer(common.shipped("tiny_tokenizer"))
    Relation().prepare_tokenizer(tokenizer)
    return tokenizer


def _bert_config(vocab_size: int):
    return tiny_bert(
        vocab_size, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64
    )


def _save_checkpoint(directory, vocab_size: int, seed: int = 7) -> str:
    """A random tiny BERT in Hugging Face format whose vocabulary is the tiny tokenizer's (no markers)."""
    from safetensors.numpy import save_file

    bert_config = _bert_config(vocab_size)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = BertEncoder(bert_config).init(jax.random.key(seed), ids, jnp.ones_like(ids), ids)["params"]
    directory.mkdir(parents=True, exist_ok=True)
    save_file(convert.flax_to_hf({"bert": jax.device_get(params)}), str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(bert_config.to_hf_dict()))
    return str(directory)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> str:
    return _save_checkpoint(tmp_path_factory.mktemp("relation_ckpt") / "bert", BASE_VOCAB)


def _config(tmp_path, checkpoint: str | None, train_records=None, eval_records=None, **task):
    config = _jsonl_config()
    config.model.checkpoint = checkpoint
    config.data.train_path = _write_jsonl(tmp_path / "train.jsonl", train_records or _toy(0, 48))
    config.data.eval_path = _write_jsonl(tmp_path / "dev.jsonl", eval_records or _toy(1, 40))
    config.data.num_buckets = 1
    config.model.hidden_dropout = 0.0
    config.model.attention_dropout = 0.0
    for key, value in task.items():
        config.task[key] = value
    return config


# ---- markers and tokenisation ----------------------------------------------------------------------------


def test_markers_are_single_tokens_that_survive_lower_casing():
    tokenizer = tokenize.load_tokenizer(common.shipped("tiny_tokenizer"))
    assert len(tokenizer) == BASE_VOCAB and tokenizer.tokenize("COFFEE") == ["coffee"]  # uncased
    assert Relation().prepare_tokenizer(tokenizer) == MARKERS
    ids = tokenizer.convert_tokens_to_ids(list(MARKERS))
    assert ids == list(range(BASE_VOCAB, BASE_VOCAB + 4)) and len(tokenizer) == BASE_VOCAB + 4
    Relation().prepare_tokenizer(tokenizer)  # again: nothing changes
    assert len(tokenizer) == BASE_VOCAB + 4
    text = "The [E1]COFFEE[/E1] and [E2] Book [/E2]"
    assert tokenizer.tokenize(text) == ["the", "[E1]", "coffee", "[/E1]", "and", "[E2]", "book", "[/E2]"]
    assert tokenizer.tokenize("[e1]") != ["[E1]"]  # the markers are cased: only the exact strings match


def test_markers_survive_saving_the_tokenizer(tmp_path):
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    again = tokenize.load_tokenizer(str(tmp_path / "tok"))
    assert again.convert_tokens_to_ids(list(MARKERS)) == tokenizer.convert_tokens_to_ids(list(MARKERS))
    assert again("[E2] water [/E2]")["input_ids"] == tokenizer("[E2] water [/E2]")["input_ids"]


def test_mark_entities_in_either_order_and_adjacent():
    assert mark_entities("Ada moved to Lyon.", (0, 3), (13, 17)) == "[E1] Ada [/E1] moved to [E2] Lyon [/E2]."
    assert mark_entities("Ada moved to Lyon.", (13, 17), (0, 3)) == "[E2] Ada [/E2] moved to [E1] Lyon [/E1]."
    assert mark_entities("coffeebook", (6, 10), (0, 6)) == "[E2] coffee [/E2][E1] book [/E1]"


def test_short_texts_tokenise_as_the_tokenizer_does(tmp_path):
    tokenizer = _tokenizer()
    records = _toy(3, 5)
    examples = Relation().read(_write_jsonl(tmp_path / "s.jsonl", records), _jsonl_config().data)
    features = tokenize_relations(examples, tokenizer, 32)
    for row, record in enumerate(records):
        marked = mark_entities(record["text"], record["head"], record["tail"])
        expected = tokenizer(marked)["input_ids"]
        assert features["length"][row] == len(expected)
        assert features["input_ids"][row, : len(expected)].tolist() == expected
        assert not features["input_ids"][row, len(expected) :].any()  # padding id 0
    assert not features["token_type_ids"].any()


def test_long_texts_keep_a_window_centred_on_both_entities(tmp_path):
    tokenizer = _tokenizer()
    before, after = "the new film " * 6, " and the great book" * 6  # 18 tokens either side
    text = before + "coffee was on water" + after
    head = [len(before), len(before) + 6]
    tail = [len(before) + 14, len(before) + 19]
    path = _write_jsonl(tmp_path / "long.jsonl", [{"text": text, "head": head, "tail": tail, "label": "x"}])
    examples = Relation().read(path, _jsonl_config().data)
    features = tokenize_relations(examples, tokenizer, 16)
    row = features["input_ids"][0].tolist()
    full = tokenizer(mark_entities(text, head, tail), add_special_tokens=False)["input_ids"]
    assert features["length"][0] == 16
    assert row[0] == tokenizer.cls_token_id and row[-1] == tokenizer.sep_token_id
    inner = row[1:-1]
    left = next(i for i in range(len(full)) if full[i : i + 14] == inner)  # a contiguous slice of the text
    first = full.index(tokenizer.convert_tokens_to_ids("[E1]"))
    last = full.index(tokenizer.convert_tokens_to_ids("[/E2]"))
    assert left <= first and last < left + 14  # every marker and entity token kept
    assert abs((first - left) - (left + 13 - last)) <= 1  # centred: as many tokens kept on either side


def test_entities_too_far_apart_name_the_line(tmp_path):
    gap = " the" * 20
    record = {"text": "coffee" + gap + " book", "head": [0, 6], "tail": [6 + len(gap) + 1, 6 + len(gap) + 5]}
    path = _write_jsonl(tmp_path / "far.jsonl", _toy(0, 1) + [{**record, "label": "x"}])
    examples = Relation().read(path, _jsonl_config().data)
    expected = f"{path}:2: the marked entities span 26 tokens, more than the 14"
    with pytest.raises(UserError, match="^" + re.escape(expected)):
        tokenize_relations(examples, _tokenizer(), 16)


# ---- reading and config checks ---------------------------------------------------------------------------

TEXT = "coffee and the book"  # 19 characters: "coffee" [0, 6), "book" [15, 19)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"head": None}, "no key 'head' (task.head_field); the keys are 'text', 'tail', 'label'"),
        ({"head": "0,6"}, "'head' (task.head_field) must be [start, end] character offsets, found '0,6'"),
        ({"head": [0, 6.0]}, "must be [start, end] character offsets, found [0, 6.0]"),
        ({"head": [True, 6]}, "must be [start, end] character offsets, found [True, 6]"),
        ({"head": [0, 6, 7]}, "must be [start, end] character offsets, found [0, 6, 7]"),
        ({"head": [6, 6]}, "'head' (task.head_field) span [6, 6) is empty"),
        ({"head": [6, 2]}, "'head' (task.head_field) span [6, 2) is empty"),
        ({"tail": [15, 25]}, "'tail' (task.tail_field) span [15, 25) is outside the text of 19 characters"),
        ({"tail": [-1, 4]}, "'tail' (task.tail_field) span [-1, 4) is outside the text of 19 characters"),
        ({"head": [6, 7]}, "'head' (task.head_field) span [6, 7) holds only whitespace"),
        ({"head": [0, 16]}, "the head span [0, 16] and the tail span [15, 19] overlap"),
        ({"label": " "}, "the label ('label', data.label_field) is missing or empty"),
        ({"label": None}, "no key 'label' (data.label_field); the keys are 'text', 'head', 'tail'"),
        ({"text": "  "}, "the text ('text', data.text_field) is null or empty"),
        (
            {"text": "coffee and [E2] book"},
            "the text contains [E2], a marker this task writes around entities",
        ),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, change, message):
    record = {"text": TEXT, "head": [0, 6], "tail": [15, 19], "label": "x"}
    bad = {k: v for k, v in {**record, **change}.items() if v is not None or k not in change}
    path = _write_jsonl(tmp_path / "bad.jsonl", [record, bad])
    with pytest.raises(UserError) as info:
        Relation().read(path, _jsonl_config().data)
    assert str(info.value).startswith(f"{path}:2: ") and message in str(info.value)


def test_reading_keeps_the_text_as_stored_and_prediction_input_needs_no_label(tmp_path):
    record = {"text": "  coffee and the book", "head": [17, 21], "tail": [2, 8]}
    path = _write_jsonl(tmp_path / "p.jsonl", [record])
    (example,) = Relation().read(path, _jsonl_config().data, require_label=False)
    assert (example.text, example.head, example.tail, example.label) == (
        record["text"],
        (17, 21),
        (2, 8),
        None,
    )
    assert example.source == f"{path}:1"
    with pytest.raises(UserError, match=re.escape(f"{path}:1: no key 'label' (data.label_field)")):
        Relation().read(path, _jsonl_config().data)
    config = _jsonl_config()
    config.data.format = "csv"
    with pytest.raises(UserError, match="task.name='relation' reads JSONL files"):
        Relation().read(path, config.data)


def test_config_checks_name_the_key():
    def relation_config():
        config = _jsonl_config()
        config.data.train_path = "train.jsonl"  # left to the command line by the config
        return config

    config = relation_config()
    config.data.text_pair_field = "other"
    with pytest.raises(UserError, match="data.text_pair_field does not apply to task.name='relation'"):
        config_lib.check(config)
    config = relation_config()
    config.task.tail_field = "head"
    with pytest.raises(UserError, match="task.head_field and task.tail_field are both 'head'"):
        config_lib.check(config)
    config = relation_config()
    config.task.relation_pooling = "mean"
    with pytest.raises(UserError, match="task.relation_pooling='mean' must be one of markers, cls"):
        config_lib.check(config)
    config.task.relation_pooling = "cls"
    config_lib.check(config)
    assert tasks.from_config(config) == Relation(head_field="head", tail_field="tail", pooling="cls")


# ---- the grown vocabulary --------------------------------------------------------------------------------


def test_new_embedding_rows_are_the_mean_plus_the_models_own_init():
    rng = np.random.default_rng(0)
    old = rng.normal(size=(5, 3)).astype(np.float32)
    fresh = rng.normal(scale=0.02, size=(7, 3)).astype(np.float32)
    pretrained = {"bert": {"embeddings": {"word_embeddings": {"embedding": old}}}}
    init = {"bert": {"embeddings": {"word_embeddings": {"embedding": fresh}}}}
    grown = convert.grow_word_embeddings(pretrained, init, log=lambda _: None)
    table = grown["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert table.shape == (7, 3) and np.array_equal(table[:5], old)
    np.testing.assert_array_equal(table[5:], fresh[5:] + old.mean(axis=0, keepdims=True))
    assert pretrained["bert"]["embeddings"]["word_embeddings"]["embedding"] is old  # input untouched
    same = {"bert": {"embeddings": {"word_embeddings": {"embedding": fresh[:5]}}}}
    assert convert.grow_word_embeddings(pretrained, same) is pretrained


def test_vocab_grows_only_for_markers_beyond_the_table():
    tokenizer = _tokenizer()  # 555 + 4 markers
    assert convert.vocab_size_with(tokenizer, MARKERS, BASE_VOCAB) == BASE_VOCAB + 4
    assert convert.vocab_size_with(tokenizer, MARKERS, BASE_VOCAB + 8) == BASE_VOCAB + 8  # padded table
    assert convert.vocab_size_with(tokenizer, MARKERS, 500) == 500  # not this tokenizer's model: no growth
    assert convert.vocab_size_with(tokenizer, (), BASE_VOCAB) == BASE_VOCAB  # other tasks add nothing


def test_prepare_grows_the_checkpoint_vocab_and_keeps_its_rows(tmp_path, checkpoint_dir):
    config = _config(tmp_path, checkpoint_dir)
    setup = train.prepare(config, str(tmp_path / "run"))
    assert setup.bert_config.vocab_size == BASE_VOCAB + 4 and not (tmp_path / "run").exists()
    model = train.create_model(config, setup.bert_config, len(setup.label_names), setup.tokenizer)
    assert model.marker_ids == (BASE_VOCAB, BASE_VOCAB + 2) and model.pooling == "markers"
    params = trained.initial_params(setup.config, setup.pretrained, model)
    assert "pooler" not in params["bert"]  # the markers head reads no [CLS]
    table = np.asarray(params["bert"]["embeddings"]["word_embeddings"]["embedding"])
    pretrained = convert.load_state_dict(checkpoint_dir)["bert.embeddings.word_embeddings.weight"]
    assert table.shape == (BASE_VOCAB + 4, 32) and np.array_equal(table[:BASE_VOCAB], pretrained)
    # The new rows: the pretrained mean plus what the model's initializer drew for them (same seed).
    dummy = jnp.zeros((1, 8), jnp.int32)
    init = jax.jit(model.init)(jax.random.key(config.seed), dummy, jnp.ones_like(dummy), dummy)["params"]
    drawn = np.asarray(init["bert"]["embeddings"]["word_embeddings"]["embedding"])[BASE_VOCAB:]
    np.testing.assert_allclose(table[BASE_VOCAB:], drawn + pretrained.mean(0), rtol=0, atol=1e-7)


def test_a_tokenizer_of_another_model_is_still_refused(tmp_path):
    small = _save_checkpoint(tmp_path / "small", 500)
    with pytest.raises(UserError, match="the tokenizer has 559 tokens but the model's vocab_size is 500"):
        train.prepare(_config(tmp_path, small), str(tmp_path / "run"))


# ---- the head --------------------------------------------------------------------------------------------


def _batch(tokenizer, records, tmp_path):
    examples = Relation().read(_write_jsonl(tmp_path / "b.jsonl", records), _jsonl_config().data)
    features = tokenize_relations(examples, tokenizer, 24)
    ids = jnp.asarray(features["input_ids"])
    mask = jnp.asarray(np.arange(24) < features["length"][:, None], jnp.int32)
    return ids, mask, jnp.zeros_like(ids)


def test_marker_pooling_equals_a_manual_gather_from_the_encoder(tmp_path):
    tokenizer = _tokenizer()
    bert_config = _bert_config(len(tokenizer))
    e1, e2 = tokenizer.convert_tokens_to_ids(["[E1]", "[E2]"])
    model = RelationClassifier(bert_config, num_labels=3, marker_ids=(e1, e2))
    ids, mask, types = _batch(tokenizer, _toy(5, 6), tmp_path)
    params = model.init(jax.random.key(1), ids, mask, types)["params"]
    logits = model.apply({"params": params}, ids, mask, types)
    hidden, _ = BertEncoder(bert_config, add_pooling_layer=False).apply(
        {"params": params["bert"]}, ids, mask, types
    )
    rows = []
    for b, row in enumerate(np.asarray(ids).tolist()):
        rows.append(np.concatenate([hidden[b, row.index(e1)], hidden[b, row.index(e2)]]))
    manual = np.stack(rows) @ params["classifier"]["kernel"] + params["classifier"]["bias"]
    assert params["classifier"]["kernel"].shape == (64, 3)
    np.testing.assert_allclose(logits, manual, rtol=0, atol=1e-5)


def test_cls_pooling_is_the_sequence_classifier(tmp_path):
    tokenizer = _tokenizer()
    bert_config = _bert_config(len(tokenizer))
    ids, mask, types = _batch(tokenizer, _toy(6, 4), tmp_path)
    ours = RelationClassifier(bert_config, num_labels=2, pooling="cls")
    params = ours.init(jax.random.key(2), ids, mask, types)["params"]
    reference = SequenceClassifier(bert_config, num_labels=2)
    shapes = jax.tree.map(jnp.shape, reference.init(jax.random.key(2), ids, mask, types)["params"])
    assert jax.tree.map(jnp.shape, params) == shapes
    # Two models, so two programs: equal to float32 rounding (logits ~1e-2 from hidden states of order 1,
    # whose rounding is ~1e-7), not necessarily to the bit on every CPU.
    np.testing.assert_allclose(
        ours.apply({"params": params}, ids, mask, types),
        reference.apply({"params": params}, ids, mask, types),
        rtol=1e-6,
        atol=1e-7,
    )


# ---- end to end ------------------------------------------------------------------------------------------


def test_toy_data_needs_the_markers():
    for record in _toy(0, 200):
        words = record["text"].split()
        # One word of each group in every text: the words alone never decide the label.
        assert sum(w in GROUP_A for w in words) == 1 and sum(w in GROUP_B for w in words) == 1
    labels = [r["label"] for r in _toy(1, 40)]
    assert 12 <= labels.count("a_head") <= 28  # both labels well represented in the eval split


@pytest.fixture(scope="module")
def relation_run(tmp_path_factory, checkpoint_dir):
    tmp_path = tmp_path_factory.mktemp("relation")
    config = _config(tmp_path, checkpoint_dir, train_records=_toy(0, 480), eval_records=_toy(1, 40))
    config.optimizer.learning_rate = 3e-3
    config.training.batch_size = 32
    config.training.num_train_steps = 150
    config.training.eval_every = 75
    config.training.log_every = 25
    config.training.checkpoint_every = 75
    final = train.train_and_evaluate(config, str(tmp_path / "run"))
    return config, tmp_path / "run", final


@pytest.mark.slow
def test_end_to_end_learns_the_relation_and_predicts_it(relation_run, tmp_path):
    config, workdir, final = relation_run
    assert final["eval"]["accuracy"] >= 0.9  # chance is 0.5: only the markers separate the labels
    assert json.loads((workdir / "model_config.json").read_text())["vocab_size"] == BASE_VOCAB + 4
    saved = tokenize.load_tokenizer(str(workdir / "tokenizer"))
    assert saved.convert_tokens_to_ids(list(MARKERS)) == list(range(BASE_VOCAB, BASE_VOCAB + 4))
    records = _toy(1, 40)
    source = _write_jsonl(
        tmp_path / "in.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in records]
    )
    out = tmp_path / "out.jsonl"
    assert predict.main(["--workdir", str(workdir), "--input", source, "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [set(row) for row in rows] == [{"text", "head", "tail", "label", "probabilities"}] * 40
    assert [(r["text"], r["head"], r["tail"]) for r in rows] == [
        (r["text"], r["head"], r["tail"]) for r in records
    ]
    for row in rows:
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    accuracy = np.mean([row["label"] == r["label"] for row, r in zip(rows, records, strict=True)])
    assert accuracy == pytest.approx(final["eval"]["accuracy"])  # the best checkpoint, as the report
    with pytest.raises(UserError, match="task.relation_pooling='markers' cannot be exported"):
        export.export(str(workdir), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_a_relation_run_resumes_with_its_grown_vocabulary(relation_run, tmp_path, caplog):
    config, workdir, _ = relation_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    config = config.copy_and_resolve_references()
    config.training.num_train_steps = 152
    with caplog.at_level("INFO"):
        train.train_and_evaluate(config, str(copy))
    assert any("Resuming from step 150" in r.getMessage() for r in caplog.records)
    steps = [json.loads(line).get("step") for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 152


@pytest.mark.slow
def test_cls_pooling_exports_as_bert_for_sequence_classification(tmp_path, checkpoint_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = _config(tmp_path, checkpoint_dir, relation_pooling="cls")
    config.training.num_train_steps = 4
    config.training.eval_every = 4
    config.training.checkpoint_every = 4
    train.train_and_evaluate(config, str(tmp_path / "run"))
    run = predict.load_run(str(tmp_path / "run"))
    records = _toy(1, 40)[:8]
    examples = Relation().read(_write_jsonl(tmp_path / "x.jsonl", records), run.config.data)
    probabilities, _ = predict.predict_outputs(run, examples)
    out = export.export(str(tmp_path / "run"), str(tmp_path / "hf"))
    model = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    assert model.config.vocab_size == BASE_VOCAB + 4 and model.config.num_labels == 2
    exported = transformers.AutoTokenizer.from_pretrained(out)
    marked = [mark_entities(r["text"], r["head"], r["tail"]) for r in records]
    with torch.no_grad():
        logits = model(**exported(marked, padding=True, return_tensors="pt")).logits
    np.testing.assert_allclose(probabilities, torch.softmax(logits, -1).numpy(), atol=1e-4, rtol=0)
