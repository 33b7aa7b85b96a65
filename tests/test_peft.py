"""Parameter-efficient fine-tuning (jaxft.strategies.peft): each method's mechanism, exactly.

LoRA and adapters start as the base model; prompt tuning equals the base model reading the virtual tokens
as words; prefix tuning equals attention over the prepended keys and values; only the chosen parameters
move; a PEFT checkpoint holds only those and restores the run exactly; LoRA merges for export.
"""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxft import config as config_lib
from jaxft.configs import tiny
from jaxft.errors import UserError
from jaxft.models.bert import BertEncoder, BertSelfAttention
from jaxft.models.heads import SequenceClassifier
from jaxft.strategies import peft as peft_lib
from jaxft.strategies.peft import PeftConfig
from jaxft.training import optim, parallel, steps, train, trained
from tests.helpers import init_params, tiny_bert

CONFIG = tiny_bert(40, max_position_embeddings=40)
BERT_TARGETS = tuple(BertEncoder.dense_targets)  # every Dense of a BERT layer
LORA_ALL = PeftConfig(method="lora", lora_targets=BERT_TARGETS, lora_rank=4)


def _inputs(batch=3, length=10, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([length, length - 3, 4][:batch])
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(5, CONFIG.vocab_size, (batch, length)).astype(np.int32) * mask
    return jnp.asarray(ids), jnp.asarray(mask), jnp.zeros_like(jnp.asarray(ids))


def _init(module):
    return init_params(module, length=10, seed=1)


def _with_base(params, base):
    """`params` whose base leaves (those `base` has) are `base`'s."""
    return peft_lib.merge(params, base, PeftConfig(method="lora"))


@pytest.mark.parametrize(
    "peft", [LORA_ALL, PeftConfig(method="adapter", adapter_size=4)], ids=["lora", "adapter"]
)
def test_lora_and_adapters_start_as_the_base_model(peft):
    base_model, model = SequenceClassifier(CONFIG, 3), peft_lib.wrap(SequenceClassifier(CONFIG, 3), peft)
    base = _init(base_model)
    params = _with_base(_init(model), base)
    new = set(_flatten(params)) - set(_flatten(base))
    assert new  # the method added parameters
    x = _inputs()
    # Equal to float32 rounding, not to the bit: the LoRA model is another program than the base, which
    # XLA:CPU may fuse and vectorise otherwise (on an AMD EPYC 3 of 9 logits differed by 1.4e-9). The logits
    # (~1e-2) are a small head over hidden states of order 1, whose rounding (~1e-7) sets the tolerance;
    # B = 1e-4 instead of 0 already moves them by ~1e-6.
    np.testing.assert_allclose(
        model.apply({"params": params}, *x), base_model.apply({"params": base}, *x), rtol=1e-6, atol=1e-7
    )


def test_lora_targets_every_named_dense_and_merges_into_the_kernels():
    model = peft_lib.wrap(SequenceClassifier(CONFIG, 3), LORA_ALL)
    params = _init(model)
    flat = {"/".join(k) for k in _flatten(params)}
    layer = "bert/encoder/layer_0/"
    for name in ("attention/self/query_lora", "attention/self/key_lora", "attention/self/value_lora",
                 "attention/output/dense_lora", "intermediate/dense_lora", "output/dense_lora"):  # fmt: skip
        assert f"{layer}{name}/lora_a" in flat and f"{layer}{name}/lora_b" in flat
    # Non-zero B: the LoRA model differs from its base, and the merged plain model equals it.
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: rng.normal(0, 0.1, v.shape).astype(np.float32) if p[-1].key == "lora_b" else v, params
    )
    merged = peft_lib.merge_lora(params, LORA_ALL)
    assert not any("lora" in "/".join(k) for k in _flatten(merged))
    x = _inputs()
    lora_logits = model.apply({"params": params}, *x)
    merged_logits = SequenceClassifier(CONFIG, 3).apply({"params": merged}, *x)
    base_logits = SequenceClassifier(CONFIG, 3).apply(
        {"params": peft_lib.merge_lora(params, PeftConfig())}, *x
    )
    np.testing.assert_allclose(merged_logits, lora_logits, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(base_logits) - np.asarray(lora_logits)).max() > 1e-3


def _flatten(tree):
    from flax import traverse_util

    return traverse_util.flatten_dict(tree)


def test_prompt_tuning_equals_the_base_model_reading_the_virtual_tokens_as_words():
    virtual = np.array([7, 9, 11], np.int32)
    peft = PeftConfig(method="prompt", num_virtual_tokens=len(virtual))
    base_encoder, encoder = BertEncoder(CONFIG), peft_lib.wrap(BertEncoder(CONFIG), peft)
    base = _init(base_encoder)
    params = _with_base(_init(encoder), base)
    params["embeddings"]["prompt_embeddings"] = base["embeddings"]["word_embeddings"]["embedding"][virtual]
    ids, mask, types = _inputs()
    hidden, pooled = encoder.apply({"params": params}, ids, mask, types)
    assert hidden.shape == (*ids.shape, CONFIG.hidden_size)  # the virtual positions are dropped
    # The same computation as words: [CLS] v1 v2 v3 tok1 ... with the virtual positions always attended to.
    n = ids.shape[0]
    long_ids = jnp.concatenate([ids[:, :1], jnp.broadcast_to(virtual, (n, 3)), ids[:, 1:]], 1)
    long_mask = jnp.concatenate([mask[:, :1], jnp.ones((n, 3), mask.dtype), mask[:, 1:]], 1)
    ref_hidden, ref_pooled = base_encoder.apply(
        {"params": base}, long_ids, long_mask, jnp.zeros_like(long_ids)
    )
    ref_hidden = jnp.concatenate([ref_hidden[:, :1], ref_hidden[:, 4:]], 1)
    np.testing.assert_allclose(hidden, ref_hidden, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pooled, ref_pooled, rtol=1e-5, atol=1e-5)


def test_prompt_starts_from_vocabulary_embeddings():
    params = {"bert": {"embeddings": {"word_embeddings": {"embedding": np.arange(40.0).reshape(20, 2)},
                                      "prompt_embeddings": np.zeros((4, 2))}}}  # fmt: skip
    out = peft_lib.init_prompt_from_vocab(params, seed=3)["bert"]["embeddings"]["prompt_embeddings"]
    rows = out[:, 0] / 2
    assert len(set(rows)) == 4 and all(np.allclose(out[i], [2 * r, 2 * r + 1]) for i, r in enumerate(rows))


def test_prefix_tuning_attends_to_the_prepended_keys_and_values():
    peft = PeftConfig(method="prefix", num_virtual_tokens=2)
    layer = peft_lib.wrap(BertSelfAttention(CONFIG), peft)
    hidden = jax.random.normal(jax.random.key(0), (2, 5, CONFIG.hidden_size))
    mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    params = jax.device_get(layer.init(jax.random.key(1), hidden, mask, True)["params"])
    out = np.asarray(layer.apply({"params": params}, hidden, mask, True))
    heads, dim = CONFIG.num_attention_heads, CONFIG.hidden_size // CONFIG.num_attention_heads

    def project(name):
        p = params[name]
        return (np.asarray(hidden) @ p["kernel"] + p["bias"]).reshape(2, 5, heads, dim)

    q = project("query")
    k = np.concatenate([np.broadcast_to(params["prefix_key"], (2, 2, heads, dim)), project("key")], 1)
    v = np.concatenate([np.broadcast_to(params["prefix_value"], (2, 2, heads, dim)), project("value")], 1)
    keep = np.concatenate([np.ones((2, 2)), np.asarray(mask)], 1).astype(bool)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(dim)
    logits = np.where(keep[:, None, None, :], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = np.einsum("bnts,bsnh->btnh", probs, v).reshape(2, 5, -1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "method, trains",
    [
        ("bitfit", lambda path: path[-1] == "bias" or path[0] == "classifier" or "pooler" in path),
        ("lora", lambda path: "_lora" in "/".join(path) or path[0] == "classifier" or "pooler" in path),
        ("adapter", lambda p: "adapter" in p or "LayerNorm" in p or p[0] == "classifier" or "pooler" in p),
        ("prompt", lambda p: p[-1] == "prompt_embeddings" or p[0] == "classifier" or "pooler" in p),
        ("prefix", lambda p: p[-1].startswith("prefix_") or p[0] == "classifier" or "pooler" in p),
    ],
)
def test_only_the_chosen_parameters_train_and_the_head_always_does(method, trains):
    peft = PeftConfig(method=method, num_virtual_tokens=2, adapter_size=4)
    model = peft_lib.wrap(SequenceClassifier(CONFIG, 3), peft)
    params = _init(model)
    tx = optim.create_optimizer(tiny.get_config().optimizer, 10, peft)
    p_train = parallel.pmap_train_step(
        steps.train_step, devices=jax.devices()[:2], model=model, tx=tx, peft=peft
    )
    ids, mask, types = (np.asarray(a) for a in _inputs(batch=2))
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
             "labels": np.array([0, 2], np.int32), "weights": np.ones(2, np.float32)}  # fmt: skip
    state = parallel.replicate(steps.create_train_state(params, tx, 0), jax.devices()[:2])
    for _ in range(3):  # update 0 has learning rate 0 (warm-up); zero-initialised paths need another
        state, _ = p_train(state, parallel.split_for_devices(batch, 2))
    after = _flatten(parallel.unreplicate(state.params))
    before = _flatten(params)
    moved = {path for path in before if not np.array_equal(before[path], after[path])}
    expected = {path for path in before if trains(path)}
    # The last layer attends from [CLS] alone without projecting its keys (`bert.first_query_attention`):
    # its key bias gets gradient exactly 0, its true value (a shift shared by all of a query's logits), so
    # Adam leaves it where it was even when it trains.
    still = {path for path in expected if path[2:] == ("layer_1", "attention", "self", "key", "bias")}
    assert moved == expected - still
    trained_count, total = peft_lib.count(params, peft)
    assert trained_count == sum(np.size(before[p]) for p in expected) and total == sum(
        map(np.size, before.values())
    )
    assert set(_flatten(peft_lib.trained_subset(params, peft))) == expected


def _tiny(workdir_method, steps_=4, **peft):
    config = tiny.get_config()
    config.peft.method = workdir_method
    for key, value in peft.items():
        config.peft[key] = value
    config.training.num_train_steps = steps_
    config.training.eval_every = 2
    config.training.checkpoint_every = 2
    config.training.keep_checkpoints = 5
    config.training.async_checkpoints = False
    config.training.tensorboard = False
    config.model.random_init.hidden_dropout_prob = 0.0
    config.model.random_init.attention_probs_dropout_prob = 0.0
    return config


def _saved_params(workdir, step):
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(
        f"{workdir}/checkpoints/latest", options=ocp.CheckpointManagerOptions(read_only=True)
    )
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return restored.state["params"]


@pytest.mark.slow
def test_a_lora_checkpoint_holds_only_what_trained_and_resumes_exactly(tmp_path):
    import shutil

    config = _tiny("lora", lora_rank=2)
    whole = tmp_path / "whole"
    train.train_and_evaluate(config, str(whole))
    saved = _flatten(_saved_params(whole, 4))
    assert saved and all("_lora" in "/".join(k) or k[0] == "classifier" or "pooler" in k for k in saved)
    # As if killed right after the step-2 checkpoint: drop everything later, resume, compare at step 4.
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "latest" / "4")
    shutil.rmtree(cut / "checkpoints" / "best")
    (cut / "final_metrics.json").unlink()
    train.train_and_evaluate(config, str(cut))
    resumed = _flatten(_saved_params(cut, 4))
    assert resumed.keys() == saved.keys()
    for key, value in saved.items():
        np.testing.assert_array_equal(resumed[key], value)


def test_a_changed_base_is_refused(tmp_path):
    peft = PeftConfig(method="bitfit")
    base = {"bert": {"w": {"kernel": np.ones((2, 2), np.float32), "bias": np.zeros(2, np.float32)}}}
    config = tiny.get_config()
    config.peft.method = "bitfit"
    trained.write_base(str(tmp_path), config, base, peft)
    trained.check_base(str(tmp_path), base, peft)  # the same base: fine
    base["bert"]["w"]["bias"] = np.ones(2, np.float32)  # a trained parameter: not part of the base
    trained.check_base(str(tmp_path), base, peft)
    base["bert"]["w"]["kernel"] = base["bert"]["w"]["kernel"] * 2
    with pytest.raises(UserError, match="differ from those its bitfit weights were trained on"):
        trained.check_base(str(tmp_path), base, peft)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("method", "qlora", "peft.method='qlora' must be one of"),
        ("lora_rank", 0, "peft.lora_rank=0 must be positive"),
        ("lora_targets", ("query", "gate"), "peft.lora_targets"),
        ("lora_dropout", 1.0, "peft.lora_dropout=1.0"),
        ("lora_alpha", 0.0, "peft.lora_alpha=0.0 must be positive"),
        ("adapter_size", 0, "peft.adapter_size=0 must be positive"),
        ("num_virtual_tokens", 0, "peft.num_virtual_tokens=0 must be positive"),
    ],
)
def test_bad_peft_settings_name_the_key(key, value, message):
    config = tiny.get_config()
    config.peft[key] = value
    with pytest.raises(UserError, match=message):
        config_lib.check(config)


def test_optimizer_state_covers_only_the_trained_parameters():
    peft = PeftConfig(method="bitfit")
    params = _init(peft_lib.wrap(SequenceClassifier(CONFIG, 3), peft))
    opt_state = optim.create_optimizer(tiny.get_config().optimizer, 10, peft).init(params)
    leaves = sum(np.size(x) for x in jax.tree.leaves(opt_state) if np.ndim(x) > 0)
    trained_count, _ = peft_lib.count(params, peft)
    assert leaves == 2 * trained_count  # Adam's two moments, for the trained parameters only
    assert isinstance(optax.tree.norm(params), jax.Array)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A finished tiny LoRA run on every Dense target, with a learning rate that moves B well off zero."""
    config = _tiny("lora", lora_rank=2, lora_targets=BERT_TARGETS)
    config.optimizer.learning_rate = 1e-2
    workdir = tmp_path_factory.mktemp("lora") / "run"
    final = train.train_and_evaluate(config, str(workdir))
    return workdir, final


def test_a_lora_run_exports_merged_and_pytorch_gives_the_same_probabilities(lora_run, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxft import export, predict
    from jaxft.data import readers

    workdir, final = lora_run
    run = predict.load_run(str(workdir))
    assert any("lora" in "/".join(k) for k in _flatten(run.params))
    examples = readers.read_examples(run.config.data.eval_path, text_field="text", label_field="label")
    ours = predict.predict_probabilities(run, examples)
    accuracy = np.mean([run.label_names[p] == e.label for p, e in zip(ours.argmax(1), examples, strict=True)])
    assert accuracy == pytest.approx(final["eval"]["accuracy"])  # base + trained subset = the best model
    out = export.export(str(workdir), str(tmp_path / "hf"))
    model = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    encoded = tokenizer(
        [e.text for e in examples[:20]], truncation=True, max_length=32, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        theirs = torch.softmax(model(**encoded).logits, -1).numpy()
    np.testing.assert_allclose(ours[:20], theirs, atol=1e-4, rtol=0)


def test_export_refuses_architectures_a_plain_bert_lacks(lora_run, tmp_path):
    import json
    import shutil

    from jaxft import export

    workdir = tmp_path / "adapter_run"
    shutil.copytree(lora_run[0], workdir)
    config = json.loads((workdir / "config.json").read_text())
    config["peft"]["method"] = "adapter"
    (workdir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="peft.method='adapter' adds layers or inputs"):
        export.export(str(workdir), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_lora_delta_is_x_a_b_times_alpha_over_rank_in_numpy():
    peft = PeftConfig(method="lora", lora_rank=4, lora_alpha=6.0)  # scale 1.5: neither alpha, 1 nor 1 / r
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)
    a = rng.normal(size=(16, 4)).astype(np.float32)
    b = rng.normal(size=(4, 24)).astype(np.float32)
    out = peft_lib.LoraDelta(24, peft).apply({"params": {"lora_a": a, "lora_b": b}}, x, True)
    expected = x.astype(np.float64) @ a.astype(np.float64) @ b.astype(np.float64) * (6.0 / 4)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_a_lora_model_equals_the_base_model_with_w_plus_a_b_alpha_over_r_kernels():
    """The reference is built in NumPy from the definition, not with `merge_lora` (code under test)."""
    peft = PeftConfig(method="lora", lora_targets=BERT_TARGETS, lora_rank=4, lora_alpha=6.0)
    model, base_model = peft_lib.wrap(SequenceClassifier(CONFIG, 3), peft), SequenceClassifier(CONFIG, 3)
    rng = np.random.default_rng(3)
    flat = {k: np.asarray(v) for k, v in _flatten(_init(model)).items()}
    for path in [p for p in flat if p[-1] in ("lora_a", "lora_b")]:
        flat[path] = rng.normal(0, 0.2, flat[path].shape).astype(np.float32)  # B non-zero too
    reference, adapted = {}, 0
    for path, value in flat.items():
        if path[-1] == "lora_b" or path[-1] == "lora_a":
            continue
        if path[-1] == "kernel" and (*path[:-2], f"{path[-2]}_lora", "lora_a") in flat:
            lora = path[:-2] + (f"{path[-2]}_lora",)
            a, b = flat[(*lora, "lora_a")].astype(np.float64), flat[(*lora, "lora_b")].astype(np.float64)
            value = (value.astype(np.float64) + a @ b * (6.0 / 4)).astype(np.float32)
            adapted += 1
        reference[path] = value
    assert adapted == 6 * CONFIG.num_hidden_layers  # every target of every layer
    from flax import traverse_util

    x = _inputs()
    lora_logits = np.asarray(model.apply({"params": traverse_util.unflatten_dict(flat)}, *x))
    ref_logits = np.asarray(base_model.apply({"params": traverse_util.unflatten_dict(reference)}, *x))
    np.testing.assert_allclose(lora_logits, ref_logits, rtol=1e-5, atol=1e-6)
    # The comparison can tell the scale apart: the update scaled by alpha (not alpha / r) gives other logits.
    wrong = {
        p: (v + flat[(*p[:-2], f"{p[-2]}_lora", "lora_a")] @ flat[(*p[:-2], f"{p[-2]}_lora", "lora_b")] * 4.5)
        if p[-1] == "kernel" and (*p[:-2], f"{p[-2]}_lora", "lora_a") in flat
        else v
        for p, v in reference.items()
    }  # reference already holds 1.5 A B; adding 4.5 A B more makes it alpha = 6 A B
    wrong_logits = np.asarray(base_model.apply({"params": traverse_util.unflatten_dict(wrong)}, *x))
    assert np.abs(wrong_logits - lora_logits).max() > 100 * np.abs(ref_logits - lora_logits).max() + 1e-4


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(5, name="out")(jnp.tanh(nn.Dense(7, name="mix")(x)))


class _OtherEncoder(nn.Module):
    """Not BERT: it declares which of its Dense layers the target names mean, and nothing else."""

    dense_targets: ClassVar[dict[str, str]] = {"query": "block_*/mix", "output": "block_*/out"}

    @nn.compact
    def __call__(self, x):
        return _Block(name="block_1")(_Block(name="block_0")(x))


def test_an_encoder_that_declares_its_dense_targets_gets_lora_by_the_same_mechanism():
    peft = PeftConfig(method="lora", lora_targets=("query",), lora_rank=2)
    model = peft_lib.wrap(_OtherEncoder(), peft)
    x = jax.random.normal(jax.random.key(0), (3, 5))
    params = jax.device_get(model.init(jax.random.key(1), x)["params"])
    flat = {"/".join(k) for k in _flatten(params)}
    assert {f"block_{i}/mix_lora/lora_{m}" for i in (0, 1) for m in "ab"} <= flat
    assert not any("out_lora" in name for name in flat)  # "output" is not targeted
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.3 if p[-1].key == "lora_b" else v, params
    )  # B non-zero: the paths count
    merged = peft_lib.merge_lora(params, peft)
    np.testing.assert_allclose(
        model.apply({"params": params}, x), _OtherEncoder().apply({"params": merged}, x), rtol=1e-5, atol=1e-6
    )
