"""Prompt-based classification (task.name="pet"): verbaliser logits equal transformers' BertForMaskedLM at
the [MASK], the [MASK] survives truncation, the masked-LM head converts both ways, a short run on a tiny
random checkpoint with MLM weights learns and reports, prediction equals the exported BertForMaskedLM, and
bad verbalisers, templates and checkpoints are refused before anything is written."""

import json

import jax
import numpy as np
import pytest

from jaxft import config as config_lib
from jaxft import export, predict, tasks
from jaxft.configs import pet as pet_config
from jaxft.data import tokenize
from jaxft.data.readers import Example
from jaxft.errors import UserError
from jaxft.models import convert
from jaxft.tasks.pet import Pet
from jaxft.training import train, trained
from tests.helpers import ODD_SIZES

GOOD = ["the movie was very good", "a good film", "the dog is good !", "it is a very good movie"]
BAD = ["the movie was very bad", "a bad film", "the cat is bad .", "it is not a good movie , it is bad"]


def _save_checkpoint(out, tokenizer_dir: str, cls_name: str = "BertForMaskedLM") -> str:
    """A random tiny BERT saved as transformers saves it, with the tiny tokenizer beside it."""
    torch = pytest.importorskip("torch")
    import transformers

    tokenizer = tokenize.load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    bert_config = transformers.BertConfig(vocab_size=len(tokenizer), **ODD_SIZES)
    model = getattr(transformers, cls_name)(bert_config).eval()
    if cls_name == "BertForMaskedLM":
        # HF initialises these to 0 / 1 / 0: random values make the parity test see every one of them.
        head = model.cls.predictions
        for tensor in (head.bias, head.transform.LayerNorm.weight, head.transform.LayerNorm.bias):
            tensor.data.normal_(0.0, 0.5)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def mlm_checkpoint(tmp_path_factory, tiny_tokenizer_dir) -> str:
    return _save_checkpoint(tmp_path_factory.mktemp("mlm") / "ckpt", tiny_tokenizer_dir)


def _examples(texts, pairs=None) -> list:
    pairs = pairs or [None] * len(texts)
    return [Example(t, p, None, f"test:{i}") for i, (t, p) in enumerate(zip(texts, pairs, strict=True))]


def _pet_config(checkpoint: str, **task):
    config = pet_config.get_config("tiny")
    config.model.checkpoint = checkpoint
    config.model.tokenizer = None  # the checkpoint's own
    config.data.max_seq_length = 24
    config.task.verbalizer = ("bad", "good")
    for key, value in task.items():
        config.task[key] = value
    return config


def _ids(tokenizer, words: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(words.split())


def _torch_logits_at_mask(checkpoint: str, features: dict) -> np.ndarray:
    """transformers' BertForMaskedLM logits over the whole vocabulary at each row's [MASK]."""
    torch = pytest.importorskip("torch")
    import transformers

    model = transformers.BertForMaskedLM.from_pretrained(checkpoint).eval()
    ids = torch.tensor(features["input_ids"], dtype=torch.long)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor(features["length"])[:, None]).long()
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits.numpy()
    mask_id = tokenize.load_tokenizer(checkpoint).mask_token_id
    rows, positions = np.nonzero(features["input_ids"] == mask_id)
    assert list(rows) == list(range(len(ids)))  # exactly one [MASK] per row
    return logits[rows, positions]


# ---- the model equals BertForMaskedLM ---------------------------------------------------------------------


@pytest.mark.parametrize("template", ["{text} It was [MASK].", "[MASK] ! {text} {text_pair}"])
def test_verbaliser_logits_equal_bert_for_masked_lm(mlm_checkpoint, template):
    texts = ["the cat sat on the mat", "a very good film", "it was bad", "dogs and cats sat on mats " * 4]
    pairs = ["the dog", "a movie", "not", "the film was not good"] if "text_pair" in template else None
    config = _pet_config(mlm_checkpoint, template=template)
    if pairs:
        config.data.text_pair_field = "pair"
    config_lib.check(config)
    task = tasks.from_config(config)
    tokenizer = tokenize.load_tokenizer(mlm_checkpoint)
    features = task.features_for_prediction(_examples(texts, pairs), tokenizer, 24)
    assert features["length"].tolist()[-1] == 24  # the long text was cut; the others are padded
    bert_config = convert.load_config(mlm_checkpoint)
    model = train.create_model(config, bert_config, 2, tokenizer)
    assert list(model.verbalizer_ids) == _ids(tokenizer, "bad good")
    pretrained, _ = convert.hf_to_flax(convert.load_state_dict(mlm_checkpoint), mlm_head=True)
    init = jax.device_get(trained.initial_params_shape(model, config))
    params = convert.merge_pretrained(init, pretrained, log=lambda message: None)
    mask = np.arange(24)[None] < features["length"][:, None]
    ours = model.apply(
        {"params": params}, features["input_ids"], mask.astype(np.int32), features["token_type_ids"]
    )
    theirs = _torch_logits_at_mask(mlm_checkpoint, features)[:, list(model.verbalizer_ids)]
    assert ours.dtype == np.float32 and ours.shape == (4, 2)
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5, rtol=0)


def test_mlm_head_converts_both_ways_and_is_optional(mlm_checkpoint, tmp_path, tiny_tokenizer_dir):
    state = convert.load_state_dict(mlm_checkpoint)
    assert "cls.predictions.decoder.weight" not in state  # tied: transformers does not save it
    params, ignored = convert.hf_to_flax(state, mlm_head=True)
    assert ignored == [] and convert.has_mlm_head(params)
    assert (
        params["cls"]["predictions"]["bias"].shape
        == state["bert.embeddings.word_embeddings.weight"].shape[:1]
    )
    back = convert.flax_to_hf(params)
    assert sorted(back) == sorted(state)
    for name in state:
        np.testing.assert_array_equal(back[name], state[name], err_msg=name)
    # Without mlm_head the head is ignored as before, so other tasks load the same checkpoint unchanged.
    plain, ignored = convert.hf_to_flax(state)
    assert set(plain) == {"bert"} and sorted(ignored) == sorted(n for n in state if n.startswith("cls."))
    # Older files store the tied decoder weight and only the decoder's name for the bias.
    old = dict(state)
    old["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    old["cls.predictions.decoder.bias"] = old.pop("cls.predictions.bias")
    again, ignored = convert.hf_to_flax(old, mlm_head=True)
    assert ignored == []
    jax.tree.map(np.testing.assert_array_equal, again, params)
    old["cls.predictions.decoder.weight"] = old["cls.predictions.decoder.weight"] + 1.0
    with pytest.raises(UserError, match="cls.predictions.decoder.weight differs from"):
        convert.hf_to_flax(old, mlm_head=True)
    bare = _save_checkpoint(tmp_path / "bare", tiny_tokenizer_dir, "BertModel")
    assert not convert.has_mlm_head(convert.hf_to_flax(convert.load_state_dict(bare), mlm_head=True)[0])


# ---- templates and truncation --------------------------------------------------------------------------


def test_the_mask_survives_truncation_and_only_the_text_is_cut(tiny_tokenizer_dir):
    tokenizer = tokenize.load_tokenizer(tiny_tokenizer_dir)
    ids = dict(tokenizer.vocab)
    long_text = " ".join(["the cat sat on the mat"] * 10)  # 60 tokens
    task = Pet(template="{text} It was [MASK].", verbalizer=("bad", "good"))
    features = task.features_for_prediction(_examples([long_text, "a dog"]), tokenizer, 12)
    template = [ids["it"], ids["was"], ids["[MASK]"], ids["."], ids["[SEP]"]]
    cut = [ids[w] for w in "the cat sat on the mat".split()]  # 12 - [CLS] - 5 template tokens = 6 left
    assert features["input_ids"][0].tolist() == [ids["[CLS]"], *cut, *template]
    assert features["input_ids"][1].tolist() == [ids["[CLS]"], ids["a"], ids["dog"], *template] + [0] * 4
    assert features["length"].tolist() == [12, 8] and not features["token_type_ids"].any()
    # A mask in front: the text after it is still what is cut. A [MASK] typed in a text becomes [UNK].
    front = Pet(template="[MASK] , {text} !", verbalizer=("bad", "good"))
    features = front.features_for_prediction(_examples([long_text, "a [MASK] dog"]), tokenizer, 10)
    head = [ids["[CLS]"], ids["[MASK]"], ids[","]]
    assert features["input_ids"][0].tolist() == [*head, *cut[:5], ids["!"], ids["[SEP]"]]
    assert features["input_ids"][1].tolist()[:7] == [*head, ids["a"], ids["[UNK]"], ids["dog"], ids["!"]]
    assert ((features["input_ids"] == ids["[MASK]"]).sum(1) == 1).all()


def test_a_pair_is_cut_longest_first(tiny_tokenizer_dir):
    tokenizer = tokenize.load_tokenizer(tiny_tokenizer_dir)
    task = Pet(template="{text} ? [MASK] , {text_pair}", verbalizer=("bad", "good"))
    texts, pairs = ["the cat " * 10, "the cat " * 10], ["a dog", "a dog " * 10]
    features = task.features_for_prediction(_examples(texts, pairs), tokenizer, 16)
    # 16 - [CLS] [SEP] - "? [MASK] ," = 11 text tokens: (20, 2) -> (9, 2); (20, 20) -> (6, 5).
    rows = [tokenizer.convert_ids_to_tokens(row) for row in features["input_ids"]]
    assert rows[0] == ["[CLS]", *["the", "cat"] * 4, "the", "?", "[MASK]", ",", "a", "dog", "[SEP]"]
    assert rows[1] == ["[CLS]", *["the", "cat"] * 3, "?", "[MASK]", ",", "a", "dog", "a", "dog", "a", "[SEP]"]
    with pytest.raises(UserError, match="leaves no room for the text in data.max_seq_length=6"):
        task.features_for_prediction(_examples(texts, pairs), tokenizer, 6)


# ---- a run: training, report, prediction, export -----------------------------------------------------------


def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return str(path)


def _data(tmp_path, config):
    rng = np.random.default_rng(0)
    rows = [(t, "pos") for t in GOOD] + [(t, "neg") for t in BAD]
    train_rows = [rows[i] for i in rng.permutation(len(rows) * 4) % len(rows)]
    config.data.train_path = _write_jsonl(tmp_path / "train.jsonl", train_rows)
    config.data.eval_path = _write_jsonl(tmp_path / "dev.jsonl", rows)
    return config


@pytest.fixture(scope="module")
def pet_run(tmp_path_factory, mlm_checkpoint):
    tmp_path = tmp_path_factory.mktemp("pet")
    config = _data(tmp_path, _pet_config(mlm_checkpoint))
    # Without dropout and at a high rate the tiny model separates "good" from "bad" in a few steps.
    config.model.hidden_dropout = config.model.attention_dropout = 0.0
    config.optimizer.learning_rate = 1e-2
    config.training.num_train_steps = 24
    config.training.eval_every = 12
    config.training.checkpoint_every = 24
    final = train.train_and_evaluate(config, str(tmp_path / "run"))
    return tmp_path / "run", final


@pytest.mark.slow
def test_a_short_run_lowers_the_loss_and_writes_the_classification_report(pet_run, mlm_checkpoint):
    workdir, final = pet_run
    assert json.loads((workdir / "labels.json").read_text())["labels"] == ["neg", "pos"]
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_losses = [line["loss"] for line in lines if line["kind"] == "train"]
    eval_losses = [line["loss"] for line in lines if line["kind"] != "train"]
    assert len(train_losses) == 12 and train_losses[-1] < 0.5 * train_losses[0]
    assert len(eval_losses) == 2 and eval_losses[1] < eval_losses[0]
    saved = json.loads((workdir / "eval/final_eval.json").read_text())
    assert json.loads((workdir / "config.json").read_text())["task"]["name"] == "pet"
    assert saved["labels"] == ["neg", "pos"]  # the classification report's layout, as for classification
    assert saved["report"]["neg"]["support"] == 4 and saved["report"]["pos"]["support"] == 4
    assert np.asarray(saved["confusion_matrix"]).sum() == 8 and final["eval"]["num_examples"] == 8
    # The verbaliser rows of the masked-LM bias moved; the others get no gradient (only weight decay, none
    # on biases), so they are exactly the checkpoint's.
    run = predict.load_run(str(workdir))
    start = convert.load_state_dict(mlm_checkpoint)["cls.predictions.bias"]
    bias = np.asarray(run.params["cls"]["predictions"]["bias"])
    verbaliser = _ids(run.tokenizer, "bad good")
    assert not np.allclose(bias[verbaliser], start[verbaliser])
    np.testing.assert_array_equal(np.delete(bias, verbaliser), np.delete(start, verbaliser))


@pytest.mark.slow
def test_prediction_equals_the_exported_bert_for_masked_lm(pet_run, tmp_path):
    workdir, final = pet_run
    run = predict.load_run(str(workdir))
    examples = _examples(GOOD + BAD)
    probabilities, features = predict.predict_outputs(run, examples)
    accuracy = np.mean(probabilities.argmax(1) == np.repeat([1, 0], 4))
    assert run.step == json.loads((workdir / "final_metrics.json").read_text())["params_from_step"]
    assert accuracy == pytest.approx(final["eval"]["accuracy"])
    out = export.export(str(workdir), str(tmp_path / "hf"))
    saved = json.loads((tmp_path / "hf/config.json").read_text())
    assert saved["architectures"] == ["BertForMaskedLM"]
    assert saved["jaxft_prompt"] == {
        "template": "{text} It was [MASK].",
        "labels": ["neg", "pos"],
        "verbalizer": ["bad", "good"],
    }
    logits = _torch_logits_at_mask(out, features)[:, _ids(run.tokenizer, "bad good")]
    theirs = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probabilities, theirs / theirs.sum(1, keepdims=True), atol=1e-4, rtol=0)
    source = _write_jsonl(tmp_path / "new.jsonl", [("a very good movie", None)])
    assert predict.main(["--workdir", str(workdir), "--input", source, "--output", str(tmp_path / "p")]) == 0
    record = json.loads((tmp_path / "p").read_text())
    assert record["text"] == "a very good movie" and set(record["probabilities"]) == {"neg", "pos"}


# ---- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            {"verbalizer": ("bad", "cats")},
            r"task.verbalizer: 'cats' must be one known token.*\['cat', '##s'\]",
        ),
        ({"verbalizer": ("bad", "wonderful")}, r"task.verbalizer: 'wonderful' must be one known token"),
        ({"verbalizer": ("good", "good")}, r"task.verbalizer=\['good', 'good'\]: two labels share a token"),
        ({"verbalizer": ("bad", "good", "not")}, r"task.verbalizer has 3 word\(s\).*label set has 2"),
        ({"verbalizer": None}, "task.verbalizer must give one word per label"),
        ({"template": "{text} It was good."}, r"task.template=.* must contain \[MASK\] exactly once"),
        ({"template": "[MASK] [MASK] {text}"}, r"must contain \[MASK\] exactly once"),
        ({"template": "It was [MASK]."}, r"must contain \{text\} exactly once"),
        ({"template": "{text} [MASK] {text_pair}"}, r"\{text_pair\} only with data.text_pair_field"),
    ],
)
def test_bad_verbaliser_or_template_fails_before_any_write(mlm_checkpoint, tmp_path, task, message):
    config = _data(tmp_path, _pet_config(mlm_checkpoint, **task))
    with pytest.raises(UserError, match=message):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_without_a_masked_lm_head_is_refused(tmp_path, tiny_tokenizer_dir):
    bare = _save_checkpoint(tmp_path / "bare", tiny_tokenizer_dir, "BertModel")
    config = _data(tmp_path, _pet_config(bare))
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert str(info.value) == (
        "model.checkpoint has no masked-LM head (cls.predictions.*): task.name='pet' needs one"
    )
    assert not (tmp_path / "run").exists()
