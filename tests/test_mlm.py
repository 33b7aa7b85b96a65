"""Continued masked-LM pre-training (task.name="mlm"): the loss equals transformers' BertForMaskedLM on the
same masked batch, 20 AdamW steps equal a PyTorch loop given the same masks, the masks have BERT's
statistics and depend only on the key and the row, a killed run resumes bit-identically, a masked-LM run
seeds classification and pet, its export loads as *ForMaskedLM with equal logits (BERT and RoBERTa), and
what cannot work is refused in one line."""

import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxft
from jaxft import config as config_lib
from jaxft import export, predict, tasks
from jaxft.configs import mlm as mlm_config
from jaxft.configs import pet as pet_config
from jaxft.configs import tiny
from jaxft.data import pretraining, tokenize
from jaxft.data.example import Example
from jaxft.errors import UserError
from jaxft.models import convert
from jaxft.models.bert import BertConfig
from jaxft.models.heads import MaskedLM
from jaxft.tasks import IGNORE
from jaxft.tasks import mlm as mlm_task
from jaxft.tasks.mlm import MaskedLanguageModel
from jaxft.training import optim, parallel, steps, train, trained, trainer
from tests.helpers import ODD_SIZES, latest_state

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MASK_ID, VOCAB = 4, 40
SPECIAL, START, CONTINUATION = pretraining.SPECIAL, pretraining.WORD_START, pretraining.CONTINUATION


# ---- batches and models --------------------------------------------------------------------------------


def _batch(rows: int, length: int, vocab: int = VOCAB, seed: int = 0, words: bool = True) -> dict:
    """Unmasked rows as `jaxft.data.batching.make_batch` gives them (with `word_pieces` and `index`): token
    i of a row is 5 + (its start + i) % 20, which a model can learn from the neighbours; [CLS] 2 and
    [SEP] 3 around 2..`length` - 2 tokens; words of one to three pieces; the last row padding."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, length + 1, rows)
    lengths[-1] = 0
    ids = np.zeros((rows, length), np.int32)
    pieces = np.zeros((rows, length), np.int8)
    for r, n in enumerate(lengths):
        if not n:
            continue
        ids[r, :n] = [2, *(5 + (rng.integers(20) + np.arange(n - 2)) % min(20, vocab - 5)), 3]
        kinds = []
        while len(kinds) < n - 2:
            kinds += [START] + [CONTINUATION] * int(rng.integers(0, 3)) if words else [START]
        pieces[r, 1 : n - 1] = kinds[: n - 2]
    return {
        "input_ids": ids,
        "attention_mask": (np.arange(length)[None] < lengths[:, None]).astype(np.int32),
        "token_type_ids": np.zeros((rows, length), np.int32),
        "word_pieces": pieces,
        "labels": np.zeros(rows, np.int32),
        "weights": (lengths > 0).astype(np.float32),
        "index": np.where(lengths > 0, np.arange(rows), -1).astype(np.int32),
    }


def _hf_config(**more):
    sizes = dict(ODD_SIZES, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertConfig(**{"vocab_size": VOCAB, **sizes, **more})


def _perturbed_masked_lm():
    """A random BertForMaskedLM with every parameter moved (head biases and LayerNorms included)."""
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(_hf_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _ours(torch_model):
    state = {k: v.detach().numpy().copy() for k, v in torch_model.state_dict().items()}
    params, ignored = convert.hf_to_flax(state, mlm_head=True)
    assert convert.has_mlm_head(params)
    return MaskedLM(BertConfig.from_dict(torch_model.config.to_dict()), num_labels=0), params


def _torch_out(model, batch, labels=None):
    return model(
        input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
        attention_mask=torch.tensor(batch["attention_mask"]),
        token_type_ids=torch.tensor(batch["token_type_ids"], dtype=torch.long),
        labels=None if labels is None else torch.tensor(labels, dtype=torch.long),
    )


TASK = MaskedLanguageModel(mask_token_id=MASK_ID, vocab_size=VOCAB)


# ---- the loss and the model equal BertForMaskedLM ----------------------------------------------------------


def test_loss_and_logits_equal_bert_for_masked_lm():
    torch_model = _perturbed_masked_lm()
    model, params = _ours(torch_model)
    batch = TASK.train_inputs(_batch(6, 16), jax.random.key(3))
    labels = np.asarray(batch["labels"])
    assert (labels != IGNORE).sum() >= 4 and (np.asarray(batch["input_ids"]) == MASK_ID).any()
    loss_sum, count = steps.weighted_loss_sum(model, params, batch, None, True, TASK)
    with torch.no_grad():
        out = _torch_out(torch_model, {k: np.asarray(v) for k, v in batch.items()}, labels)
    assert count == (labels != IGNORE).sum()
    np.testing.assert_allclose(float(loss_sum / count), out.loss.item(), rtol=0, atol=1e-5)
    # Every position's logits too, and the scored slots are those positions' rows.
    full = np.asarray(model.apply({"params": params}, batch["input_ids"], batch["attention_mask"]))
    real = np.asarray(batch["attention_mask"], bool)
    np.testing.assert_allclose(full[real], out.logits.numpy()[real], rtol=0, atol=1e-5)
    positions, targets = mlm_task.prediction_slots(batch["labels"], TASK.probability)
    slots = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], positions=positions)
    used = np.asarray(targets) != IGNORE
    np.testing.assert_allclose(
        np.asarray(slots)[used], full.reshape(-1, VOCAB)[np.asarray(positions)[used]], rtol=0, atol=1e-6
    )


STEPS, LR, WARMUP = 20, 2e-3, 3


def test_twenty_adamw_steps_with_the_same_masks_match_pytorch():
    """The train step draws its masks itself; the PyTorch loop is given the masks that step draws."""
    torch.manual_seed(0)
    torch_model = transformers.BertForMaskedLM(_hf_config())
    model, params = _ours(torch_model)
    from jaxft.configs import default

    opt = default.get_config().optimizer
    opt.learning_rate, opt.warmup_steps, opt.weight_decay, opt.max_grad_norm = LR, WARMUP, 0.01, 1.0
    tx = optim.create_optimizer(opt, STEPS)
    batches = [_batch(8, 16, seed=s) for s in range(4)] * (STEPS // 4)
    devices = jax.devices()[:1]
    p_step = parallel.pmap_train_step(
        steps.train_step, devices=devices, model=model, tx=tx, deterministic=True, task=TASK
    )
    state = steps.create_train_state(params, tx, seed=0)
    masked = [TASK.train_inputs(b, steps.input_key(state.key, s)) for s, b in enumerate(batches)]
    state = parallel.replicate(state, devices)
    losses = []
    for batch in batches:
        state, metrics = p_step(state, parallel.split_for_devices(batch, 1))
        losses.append(float(metrics["loss"][0]))

    decay = [p for n, p in torch_model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    rest = [p for n, p in torch_model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}]
    torch_opt = torch.optim.AdamW(groups, lr=LR, eps=1e-8)
    schedule = transformers.get_linear_schedule_with_warmup(torch_opt, WARMUP, STEPS)
    torch_model.train()
    torch_losses = []
    for batch in masked:
        batch = {k: np.asarray(v) for k, v in batch.items()}
        loss = _torch_out(torch_model, batch, batch["labels"]).loss
        torch_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 1.0)
        torch_opt.step()
        schedule.step()
        torch_losses.append(loss.item())
    np.testing.assert_allclose(losses, torch_losses, rtol=0, atol=1e-4)
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1  # it learnt: not two flat lines
    torch_model.eval()
    last = batches[-1]
    with torch.no_grad():
        theirs = _torch_out(torch_model, last).logits.numpy()
    final = parallel.unreplicate(state.params)
    ours = model.apply({"params": final}, last["input_ids"], last["attention_mask"])
    real = last["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[real], theirs[real], rtol=0, atol=1e-4)


def test_the_step_loss_is_the_global_mean_on_any_device_count_and_accumulation():
    torch.manual_seed(0)
    model, params = _ours(transformers.BertForMaskedLM(_hf_config()))
    tx = optim.create_optimizer(tiny.get_config().optimizer, 10)
    batch = _batch(16, 16, seed=5)
    key = steps.create_train_state(params, tx, seed=0).key
    labels = np.asarray(TASK.train_inputs(batch, steps.input_key(key, 0))["labels"])
    results = []
    for devices, accum in ((1, 1), (4, 2)):  # rows split over devices, then over micro-batches
        chosen = jax.devices()[:devices]
        p_step = parallel.pmap_train_step(
            steps.train_step, devices=chosen, model=model, tx=tx, deterministic=True, task=TASK,
            accum_steps=accum,
        )  # fmt: skip
        state = parallel.replicate(steps.create_train_state(params, tx, seed=0), chosen)
        state, metrics = p_step(state, parallel.split_for_devices(batch, devices))
        results.append((float(metrics["loss"][0]), float(metrics["examples"][0]), state.params))
    (loss, count, first), others = results[0], results[1:]
    assert count == (labels != IGNORE).sum() > 10  # the step's masks are those `input_key` gives
    for other_loss, other_count, other_params in others:
        assert other_count == count  # the same masks: drawn per row, not per device
        np.testing.assert_allclose(other_loss, loss, rtol=0, atol=1e-6)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[0], rtol=0, atol=1e-6),
            other_params,
            first,
        )


# ---- masking ---------------------------------------------------------------------------------------------

_STATIC = ("probability", "mask_ratio", "random_ratio", "whole_word", "mask_token_id", "vocab_size")
_mask = jax.jit(mlm_task.mask_tokens, static_argnames=_STATIC)


def _draw(batch, key, whole_word=False, vocab=1000):
    ids, labels = _mask(
        key, batch["index"], batch["input_ids"], batch["word_pieces"], probability=0.15, mask_ratio=0.8,
        random_ratio=0.1, whole_word=whole_word, mask_token_id=MASK_ID, vocab_size=vocab,
    )  # fmt: skip
    return np.asarray(ids), np.asarray(labels)


def test_masks_have_berts_statistics_and_never_touch_special_tokens_or_padding():
    batch = _batch(512, 128, vocab=1000, seed=1)
    chosen_share, kinds = [], np.zeros(3)
    for step in range(4):
        ids, labels = _draw(batch, jax.random.key(step))
        chosen = labels != IGNORE
        assert not chosen[batch["word_pieces"] == SPECIAL].any()  # [CLS], [SEP], padding
        np.testing.assert_array_equal(labels[chosen], batch["input_ids"][chosen])
        np.testing.assert_array_equal(ids[~chosen], batch["input_ids"][~chosen])
        chosen_share.append(chosen.sum() / (batch["word_pieces"] != SPECIAL).sum())
        masked = ids[chosen] == MASK_ID
        unchanged = ids[chosen] == labels[chosen]
        kinds += [masked.sum(), (~masked & ~unchanged).sum(), unchanged.sum()]
    assert abs(np.mean(chosen_share) - 0.15) < 0.005  # ~130k maskable tokens a draw: sd 0.001
    np.testing.assert_allclose(kinds / kinds.sum(), [0.8, 0.1 * 0.999, 0.1 + 0.1 * 0.001], atol=0.01)


def test_whole_word_masking_masks_every_piece_of_a_chosen_word():
    batch = _batch(512, 64, seed=2)
    ids, labels = _draw(batch, jax.random.key(0), whole_word=True)
    chosen, pieces = labels != IGNORE, batch["word_pieces"]
    words = chosen_words = 0
    for r in range(len(pieces)):
        starts = np.flatnonzero(pieces[r] == START)
        for s in starts:
            end = s + 1
            while end < pieces.shape[1] and pieces[r, end] == CONTINUATION:
                end += 1
            assert len(set(chosen[r, s:end])) == 1, (r, s)  # all of the word's pieces, or none
            words += 1
            chosen_words += chosen[r, s]
    assert words > 5000 and abs(chosen_words / words - 0.15) < 0.02
    assert (pieces[chosen] == CONTINUATION).any()  # words of several pieces were chosen
    assert not chosen[pieces == SPECIAL].any()


def test_masks_depend_on_the_step_key_and_the_row_alone():
    batch = _batch(32, 32, seed=3)
    base = jax.random.key_data(jax.random.key(7))
    first = _draw(batch, steps.input_key(base, 5))
    np.testing.assert_array_equal(first[1], _draw(batch, steps.input_key(base, 5))[1])  # a resumed step
    assert (first[1] != _draw(batch, steps.input_key(base, 6))[1]).any()  # the next step
    # Not the dropout stream: the step's dropout key differs from its input key.
    assert not np.array_equal(
        jax.random.key_data(steps.step_key(base, 5)), jax.random.key_data(steps.input_key(base, 5))
    )
    # Rows in another order, as in another batch or on another device: each keeps its own mask.
    order = np.random.default_rng(0).permutation(32)
    shuffled = _draw({k: v[order] for k, v in batch.items()}, steps.input_key(base, 5))
    np.testing.assert_array_equal(shuffled[1], first[1][order])
    np.testing.assert_array_equal(shuffled[0], first[0][order])
    # Evaluation draws one fixed mask, whatever the run.
    evaluated = TASK.eval_inputs(batch)
    np.testing.assert_array_equal(evaluated["labels"], TASK.eval_inputs(batch)["labels"])
    expected = _draw(batch, jax.random.key(mlm_task.EVAL_MASK_SEED), vocab=VOCAB)[1]
    np.testing.assert_array_equal(evaluated["labels"], expected)


def test_prediction_slots_hold_the_labelled_positions_up_to_the_capacity():
    labels = np.full((2, 8), IGNORE, np.int32)
    labels[0, [1, 6]] = [11, 12]
    labels[1, 3] = 13
    positions, targets = mlm_task.prediction_slots(jnp.asarray(labels), 0.15)
    assert mlm_task.capacity(16, 0.15) == 16 == len(positions)  # 1.5 * 0.15 * 16 + 64, capped at 16
    assert np.asarray(positions)[:3].tolist() == [1, 6, 11]
    assert np.asarray(targets)[:3].tolist() == [11, 12, 13]
    assert (np.asarray(targets)[3:] == IGNORE).all()
    assert mlm_task.capacity(10_000, 0.15) == math.ceil(1.5 * 0.15 * 10_000) + 64 == 2314
    report, text = mlm_task.mlm_report(6.0, 1, 4)
    assert report == {"accuracy": 0.25, "loss": 1.5, "perplexity": math.exp(1.5), "masked_tokens": 4}
    assert text.splitlines()[0] == "accuracy       0.2500"


# ---- data ------------------------------------------------------------------------------------------------


def _docs(*texts) -> list:
    return [Example(text, None, None, f"t:{i}") for i, text in enumerate(texts)]


def test_documents_are_packed_with_separators_and_word_starts(tiny_tokenizer_dir):
    tok = tokenize.load_tokenizer(tiny_tokenizer_dir)
    v = dict(tok.vocab)
    features = pretraining.token_rows(_docs("the cats sat", "a dog", "the mat"), tok, 6, packing=True)
    rows = zip(features["input_ids"], features["length"], strict=True)
    words = [tok.convert_ids_to_tokens(row[:n]) for row, n in rows]
    assert words == [
        ["[CLS]", "the", "cat", "##s", "sat", "[SEP]"],
        ["[CLS]", "[SEP]", "a", "dog", "[SEP]", "[SEP]"],
        ["[CLS]", "the", "mat", "[SEP]"],
    ]
    assert features["word_pieces"].tolist() == [[0, 1, 1, 2, 1, 0], [0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]]
    assert features["example_index"].tolist() == [0, 1, 2]  # the document each row begins in
    assert features["input_ids"][2, 4:].tolist() == [v["[PAD]"]] * 2 and not features["token_type_ids"].any()
    # A word cut by a row's end: its rest starts the next row as a word of its own.
    cut = pretraining.token_rows(_docs("a cats"), tok, 4, packing=True)
    assert tok.convert_ids_to_tokens(cut["input_ids"][1, :3]) == ["[CLS]", "##s", "[SEP]"]
    assert cut["word_pieces"][1].tolist() == [0, 1, 0, 0]
    # One document a row, cut to fit; special tokens written in a text are never masked.
    rows = pretraining.token_rows(_docs("the cats sat on the mat", "a [MASK] dog"), tok, 5, packing=False)
    assert [tok.convert_ids_to_tokens(r) for r in rows["input_ids"]] == [
        ["[CLS]", "the", "cat", "##s", "[SEP]"],
        ["[CLS]", "a", "[MASK]", "dog", "[SEP]"],
    ]
    assert rows["word_pieces"].tolist() == [[0, 1, 1, 2, 0], [0, 1, 0, 1, 0]]
    assert rows["length"].tolist() == [5, 5] and rows["example_index"].tolist() == [0, 1]


def test_text_files_and_other_sources_are_read_without_labels(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("first document\n\n  second one  \n", encoding="utf-8")
    config = mlm_config.get_config("tiny")
    examples = tasks.from_config(config).read(str(text), config.data)
    assert [(e.text, e.source) for e in examples] == [
        ("first document", f"{text}:1"),
        ("second one", f"{text}:3"),
    ]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"body": "a text", "label": 3}) + "\n" + json.dumps({"body": "b"}) + "\n")
    config.data.text_field = "body"
    assert [e.text for e in tasks.from_config(config).read(str(jsonl), config.data)] == ["a text", "b"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(UserError, match=r"empty.txt: the file contains no text \(one document a line\)"):
        tasks.from_config(config).read(str(empty), config.data)


# ---- config ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task.mlm_mask_ratio": 0.9, "task.mlm_random_ratio": 0.2}, r"ratio=0.9 \+ task.mlm_random"),
        ({"task.mlm_probability": 0.0}, r"task.mlm_probability=0.0 must be in \(0, 1\)"),
        ({"task.mlm_random_ratio": -0.1}, r"task.mlm_random_ratio=-0.1 must be in \[0, 1\]"),
        ({"data.text_pair_field": "b"}, "data.text_pair_field does not apply to task.name='mlm'"),
        ({"data.k_shot": 4}, "data.k_shot does not apply to task.name='mlm'"),
        ({"task.name": "classification", "data.format": "txt"}, "is read by task.name='mlm', not"),
    ],
)
def test_bad_mlm_settings_are_refused_naming_the_key(overrides, message):
    config = mlm_config.get_config("tiny")
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(UserError, match=message):
        config_lib.check(config)


def test_best_mode_auto_minimises_losses_and_maximises_the_rest():
    config = mlm_config.get_config("tiny")
    config.training.best_metric = "auto"
    task = tasks.from_config(config)
    assert (tasks.best_metric(config, task), tasks.best_mode(config, task)) == ("loss", "min")
    for metric, mode in (("perplexity", "min"), ("accuracy", "max")):
        config.training.best_metric = metric
        assert tasks.best_mode(config, task) == mode
    config.training.best_mode = "max"  # said outright: kept
    assert tasks.best_mode(config, task) == "max"
    classification = tiny.get_config()
    assert tasks.best_mode(classification, tasks.from_config(classification)) == "max"
    classification.training.best_metric = "loss"
    assert tasks.best_mode(classification, tasks.from_config(classification)) == "min"


# ---- the head: loaded where the checkpoint has it, created where not --------------------------------------


def _save(cls_name: str, out, tokenizer_dir: str) -> str:
    tok = tokenize.load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(_hf_config(vocab_size=len(tok)))
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return str(out)


def _tiny_mlm_config(checkpoint: str | None = None):
    config = mlm_config.get_config("tiny")
    if checkpoint:
        config.model.checkpoint, config.model.tokenizer = checkpoint, None
    return config


def test_the_head_is_read_where_the_checkpoint_has_it_and_created_where_not(
    tmp_path, tiny_tokenizer_dir, caplog
):
    with_head = _save("BertForMaskedLM", tmp_path / "mlm", tiny_tokenizer_dir)
    setup = train.prepare(_tiny_mlm_config(with_head), str(tmp_path / "a"))
    model = train.create_model(setup.config, setup.bert_config, 0)
    params = trained.initial_params(setup.config, setup.pretrained, model)
    state = convert.load_state_dict(with_head)
    np.testing.assert_array_equal(params["cls"]["predictions"]["bias"], state["cls.predictions.bias"])
    np.testing.assert_array_equal(
        params["cls"]["predictions"]["transform"]["dense"]["kernel"],
        state["cls.predictions.transform.dense.weight"].T,
    )
    bare = _save("BertModel", tmp_path / "bare", tiny_tokenizer_dir)
    with caplog.at_level(logging.INFO):
        setup = train.prepare(_tiny_mlm_config(bare), str(tmp_path / "b"))
        params = trained.initial_params(setup.config, setup.pretrained, model)
    assert "model.checkpoint has no masked-LM head: task.name='mlm' trains a new one" in caplog.text
    assert "newly initialised (not in checkpoint): cls/predictions/bias" in caplog.text
    head = params["cls"]["predictions"]
    kernel = np.asarray(head["transform"]["dense"]["kernel"])
    assert kernel.shape == (32, 32) and abs(kernel.std() - 0.02) < 0.003  # BERT's normal(0.02)
    for zeros in (head["bias"], head["transform"]["dense"]["bias"], head["transform"]["LayerNorm"]["bias"]):
        assert not np.asarray(zeros).any()
    np.testing.assert_array_equal(head["transform"]["LayerNorm"]["scale"], 1.0)
    np.testing.assert_array_equal(
        params["bert"]["embeddings"]["word_embeddings"]["embedding"],
        convert.load_state_dict(bare)["embeddings.word_embeddings.weight"],
    )


def test_an_electra_discriminator_is_refused_in_one_line(tmp_path, tiny_tokenizer_dir):
    tok = tokenize.load_tokenizer(tiny_tokenizer_dir)
    hf = transformers.ElectraConfig(vocab_size=len(tok), embedding_size=16, **ODD_SIZES)
    transformers.ElectraModel(hf).save_pretrained(str(tmp_path / "electra"))
    tok.save_pretrained(str(tmp_path / "electra"))
    with pytest.raises(UserError) as info:
        train.prepare(_tiny_mlm_config(str(tmp_path / "electra")), str(tmp_path / "run"))
    assert str(info.value) == (
        "task.name='mlm' needs a masked-LM head, which jaxft has none of for model_type 'electra' (an "
        "ELECTRA discriminator spots replaced tokens, it does not predict them); use one of bert, "
        "deberta-v2, distilbert, modernbert, roberta, xlm-roberta"
    )
    assert not (tmp_path / "run").exists()


# ---- runs: resume, chaining, export ----------------------------------------------------------------------


class _Crash(trainer.Hook):
    """Stops the process's run after step `at` with an error, before that step's checkpoint."""

    def __init__(self, at: int):
        self.at = at

    def __call__(self, run, step, metrics):
        if step == self.at:
            raise RuntimeError(f"killed after step {step}")


def _resume_config():
    config = mlm_config.get_config("tiny")
    config.task.whole_word_mask = True
    config.training.num_train_steps = 8
    config.training.checkpoint_every = 2
    config.training.eval_every = 4
    return config


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    """A finished tiny masked-LM run (random encoder, the shipped tiny tokenizer and demo texts, whole-word
    masks), uninterrupted."""
    workdir = tmp_path_factory.mktemp("mlm") / "run"
    final = train.train_and_evaluate(_resume_config(), str(workdir))
    return workdir, final


def test_a_killed_mlm_run_resumes_bit_identically(mlm_run, tmp_path):
    expected, final = mlm_run
    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed after step 5"):
        train.train_and_evaluate(_resume_config(), str(killed), train.Extensions(hooks=(_Crash(5),)))
    assert latest_state(killed)[0] == 4
    assert train.train_and_evaluate(_resume_config(), str(killed)) == final
    (step, resumed), (_, whole) = latest_state(killed), latest_state(expected)
    assert step == 8
    jax.tree.map(np.testing.assert_array_equal, resumed, whole)
    evals = [json.loads(line) for line in (expected / "metrics.jsonl").read_text().splitlines()]
    counts = {r["masked_tokens"] for r in evals if r["kind"] == "eval"}
    assert len(counts) == 1 and counts.pop() > 100  # every evaluation scores the same fixed mask


def _flat(tree) -> dict:
    from flax import traverse_util

    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_classification_and_pet_start_from_a_masked_lm_run(mlm_run, tmp_path, caplog):
    workdir, final = mlm_run
    assert set(final["eval"]) == {"loss", "perplexity", "accuracy", "masked_tokens"}
    run = predict.load_run(str(workdir))
    theirs = _flat(run.params)
    for name, config in (("classification", tiny.get_config()), ("pet", pet_config.get_config("tiny"))):
        config.model.init_from_workdir = str(workdir)
        config.training.num_train_steps = 2
        config.training.eval_every = 2
        model = train.create_model(config, run.bert_config, 2, run.tokenizer)
        with caplog.at_level(logging.INFO):
            params = _flat(trained.initial_params(config, None, model))
        assert f"Warm start from the masked-LM run {workdir}" in caplog.text
        carried = {path for path in params if path in theirs}
        assert {p for p in theirs if p.startswith("bert/")} <= carried
        assert any(p.startswith("cls/") for p in carried) == (name == "pet")  # the head, for pet only
        for path in carried:
            np.testing.assert_array_equal(params[path], theirs[path], err_msg=path)
        if name == "classification":
            assert "bert/pooler/dense/kernel" in params and "classifier/kernel" in params
        result = train.train_and_evaluate(config, str(tmp_path / name))
        assert 0.0 <= result["eval"]["accuracy"] <= 1.0


def test_the_export_is_a_bert_for_masked_lm_with_equal_logits(mlm_run, tmp_path):
    workdir, _ = mlm_run
    out = export.export(str(workdir), str(tmp_path / "hf"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]
    assert 'pipeline_tag: "fill-mask"' in (tmp_path / "hf" / "README.md").read_text()
    exported = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    assert type(exported).__name__ == "BertForMaskedLM"
    _assert_equal_logits(str(workdir), exported, ["The service was slow.", "Great food and a kind waiter!"])
    with pytest.raises(UserError, match="a task.name='mlm' run predicts no labels"):
        predict.predict_outputs(predict.load_run(str(workdir)), _docs("a text"))


def test_the_api_embeds_with_a_masked_lm_runs_encoder_and_refuses_to_predict(mlm_run, tmp_path):
    """`jaxft.load(...).embed` on a masked-LM run gives its encoder's mean-pooled last layer, as the exported
    BertForMaskedLM computes it in PyTorch; `.predict` ends in the one line that says why not."""
    workdir, _ = mlm_run
    texts = ["The service was slow.", "Great food and a kind waiter!", "ok"]
    predictor = jaxft.load(str(workdir))
    ours = predictor.embed(texts, batch_size=2)
    exported = transformers.AutoModelForMaskedLM.from_pretrained(
        export.export(str(workdir), str(tmp_path))
    ).eval()
    encoded = predictor.run.tokenizer(texts, padding=True, return_tensors="np")
    inputs = {k: torch.tensor(v) for k, v in encoded.items() if k != "token_type_ids" or v.any()}
    with torch.no_grad():
        last = exported(**inputs, output_hidden_states=True).hidden_states[-1].numpy()
    mask = encoded["attention_mask"][..., None]
    np.testing.assert_allclose(ours, (last * mask).sum(1) / mask.sum(1), rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="a task.name='mlm' run predicts no labels"):
        predictor.predict(texts)


def _assert_equal_logits(workdir: str, exported, texts: list[str]) -> None:
    run = predict.load_run(workdir)
    encoded = run.tokenizer(texts, padding=True, return_tensors="np")
    model = train.create_model(run.config, run.bert_config, 0)
    ours = model.apply({"params": run.params}, encoded["input_ids"], encoded["attention_mask"])
    inputs = {k: torch.tensor(v) for k, v in encoded.items() if k != "token_type_ids" or v.any()}
    with torch.no_grad():
        theirs = exported(**inputs).logits.numpy()
    real = encoded["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[real], theirs[real], rtol=0, atol=1e-4)


# ---- another family: RoBERTa with a byte-level BPE tokenizer ----------------------------------------------

ROBERTA_TEXTS = ["the cat sat on the mat", "a very good movie", "not a bad film at all", "dogs chase cats"]
ROBERTA_TEXTS *= 10


def _roberta_checkpoint(out) -> str:
    """A random RobertaModel (no masked-LM head) with a byte-level BPE tokenizer trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer_ = trainers.BpeTrainer(
        vocab_size=120, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(ROBERTA_TEXTS, trainer_)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    names = dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>")
    names.update(pad_token="<pad>", mask_token="<mask>")
    fast = transformers.RobertaTokenizerFast(tokenizer_object=tok, **names)
    hf = transformers.RobertaConfig(vocab_size=len(fast), **{**ODD_SIZES, "max_position_embeddings": 40})
    torch.manual_seed(0)
    transformers.RobertaModel(hf).save_pretrained(str(out))
    fast.save_pretrained(str(out))
    return str(out)


def test_a_roberta_checkpoint_pretrains_and_exports_as_roberta_for_masked_lm(tmp_path):
    checkpoint_dir = _roberta_checkpoint(tmp_path / "roberta")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(ROBERTA_TEXTS) + "\n", encoding="utf-8")
    config = mlm_config.get_config("tiny")
    config.model.checkpoint, config.model.tokenizer = checkpoint_dir, None
    config.data.train_path = config.data.eval_path = str(corpus)
    config.data.max_seq_length = 24
    config.task.whole_word_mask = True
    config.training.num_train_steps = 3
    config.training.eval_every = 3
    final = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert final["eval"]["masked_tokens"] > 0 and np.isfinite(final["eval"]["loss"])
    out = export.export(str(tmp_path / "run"), str(tmp_path / "hf"))
    exported = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    assert type(exported).__name__ == "RobertaForMaskedLM"
    _assert_equal_logits(str(tmp_path / "run"), exported, ROBERTA_TEXTS[:3])


def test_the_shipped_configs_check(monkeypatch):
    monkeypatch.setenv("JAXFT_DATA", "/data")
    for variant in mlm_config.VARIANTS:
        config = mlm_config.get_config(variant)
        if config.model.checkpoint is None:  # MiniLM not installed: the rules do not read it
            config.model.checkpoint = "/checkpoint"
        config_lib.check(config)
        task = tasks.from_config(config)
        chosen = (task.name, tasks.best_metric(config, task), tasks.best_mode(config, task))
        assert chosen == ("mlm", "loss", "min")
    pet = pet_config.get_config("sst2")
    pet.model.checkpoint = pet.model.checkpoint or "/checkpoint"
    config_lib.check(pet)
    assert (pet.data.k_shot, pet.task.verbalizer) == (16, ("terrible", "great"))
