"""The families on BERT's layers (RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT) equal transformers' PyTorch.

For each: the encoder's hidden states against `AutoModel`, every head against its `*For*` class, the tensor
names both ways, and a 20-step AdamW trajectory against a PyTorch loop from the same weights.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxft.models import convert, families
from jaxft.models.heads import SequenceClassifier, SpanExtractor, TokenClassifier
from jaxft.training import optim, parallel, steps
from tests.helpers import ODD_SIZES

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5
VOCAB = 99
_DISTILBERT_NAMES = {"hidden_dropout_prob": "dropout", "attention_probs_dropout_prob": "attention_dropout"}
# Each family's transformers config for ODD_SIZES, in its own key names.
HF_CONFIGS = {
    "roberta": lambda **kw: transformers.RobertaConfig(vocab_size=VOCAB, **ODD_SIZES, **kw),
    "xlm-roberta": lambda **kw: transformers.XLMRobertaConfig(vocab_size=VOCAB, **ODD_SIZES, **kw),
    "electra": lambda **kw: transformers.ElectraConfig(
        vocab_size=VOCAB, embedding_size=20, **ODD_SIZES, **kw
    ),
    "distilbert": lambda **kw: transformers.DistilBertConfig(
        vocab_size=VOCAB,
        dim=ODD_SIZES["hidden_size"],
        n_layers=ODD_SIZES["num_hidden_layers"],
        n_heads=ODD_SIZES["num_attention_heads"],
        hidden_dim=ODD_SIZES["intermediate_size"],
        max_position_embeddings=ODD_SIZES["max_position_embeddings"],
        **{_DISTILBERT_NAMES.get(k, k): v for k, v in kw.items()},
    ),
}  # fmt: skip
FAMILIES = sorted(HF_CONFIGS)
# The families with encoders of their own (their other tests: test_deberta.py, test_modernbert.py).
OWN_ENCODERS = {
    "deberta-v2": lambda **kw: transformers.DebertaV2Config(
        vocab_size=VOCAB,
        **ODD_SIZES,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=8,
        max_relative_positions=12,
        share_att_key=True,
        position_biased_input=False,
        type_vocab_size=0,
        norm_rel_ebd="layer_norm",
        **kw,
    ),
    "modernbert": lambda **kw: transformers.ModernBertConfig(
        vocab_size=VOCAB,
        **ODD_SIZES,
        local_attention=4,
        global_attn_every_n_layers=2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        cls_token_id=0,
        sep_token_id=2,
        **{_MODERNBERT_NAMES.get(k, k): v for k, v in kw.items()},
    ),
}
_MODERNBERT_NAMES = {
    "hidden_dropout_prob": "embedding_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
}
HF_CONFIGS_ALL = {**HF_CONFIGS, **OWN_ENCODERS}
TOKEN_TYPES = {
    "roberta": 1,
    "xlm-roberta": 1,
    "electra": 2,
    "distilbert": 0,
    "deberta-v2": 0,
    "modernbert": 0,
}


def _batch(family: str, extra_pad: int = 0):
    """Three rows of lengths 8, 5 and 2, right-padded with the family's pad id; two segments where it has
    two token types."""
    pad = HF_CONFIGS_ALL[family]().pad_token_id
    rng = np.random.default_rng(0)
    lengths = [8, 5, 2]
    width = max(lengths) + extra_pad
    ids = np.full((3, width), pad, np.int32)
    mask = np.zeros((3, width), np.int32)
    types = np.zeros((3, width), np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(3, VOCAB, n)
        mask[row, :n] = 1
        if TOKEN_TYPES[family] > 1:
            types[row, n // 2 : n] = 1
    return ids, mask, types


def _perturbed(model):
    """`model` in eval mode with every parameter moved, so that biases and LayerNorms are exercised."""
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _torch_model(family: str, cls_suffix: str, **kwargs):
    torch.manual_seed(0)
    name = families.named(family).class_prefix + cls_suffix
    return _perturbed(getattr(transformers, name)(HF_CONFIGS[family](**kwargs)))


def _torch_inputs(family: str, ids, mask, types) -> dict:
    inputs = {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask)}
    if TOKEN_TYPES[family]:  # DistilBERT's forward takes none
        inputs["token_type_ids"] = torch.tensor(types, dtype=torch.long)
    return inputs


def _state_dict(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _ours(family: str, torch_model):
    """Our config (read from the torch model's config.json dict) and the converted parameters."""
    config = families.named(family).config.from_dict(torch_model.config.to_dict())
    params, ignored = convert.hf_to_flax(_state_dict(torch_model), families.named(family))
    return config, params, ignored


@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_matches_transformers(family):
    torch_model = _torch_model(family, "Model")
    ids, mask, types = _batch(family)
    with torch.no_grad():
        expected = torch_model(**_torch_inputs(family, ids, mask, types)).last_hidden_state.numpy()
    config, params, ignored = _ours(family, torch_model)
    assert type(config).model_type == family
    assert not [name for name in ignored if not name.endswith(("position_ids", "token_type_ids"))]
    encoder = families.of(config).encoder(config, add_pooling_layer=False)
    hidden, pooled = encoder.apply({"params": params["bert"]}, ids, mask, types)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(hidden)[valid], expected[valid], rtol=0, atol=TOL)
    assert pooled is None  # none of these has a pooler in its base model


@pytest.mark.parametrize("family", FAMILIES)
def test_config_round_trips_through_config_json(family):
    hf = HF_CONFIGS[family](hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.05)
    config = families.named(family).config.from_dict(hf.to_dict())
    again = type(hf)(**config.to_hf_dict())
    assert families.named(family).config.from_dict(again.to_dict()) == config
    assert config.hidden_dropout_prob == 0.2 and config.attention_probs_dropout_prob == 0.05
    assert config.num_hidden_layers == ODD_SIZES["num_hidden_layers"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["sequence", "token", "span"])
def test_heads_match_transformers_and_names_round_trip(family, head):
    suffix = {"sequence": "ForSequenceClassification", "token": "ForTokenClassification"}
    suffix["span"] = "ForQuestionAnswering"
    num_labels = {"sequence": 3, "token": 5, "span": 2}[head]
    torch_model = _torch_model(family, suffix[head], num_labels=num_labels)
    ids, mask, types = _batch(family)
    with torch.no_grad():
        out = torch_model(**_torch_inputs(family, ids, mask, types))
    expected = out.logits.numpy() if head != "span" else np.stack([out.start_logits, out.end_logits], -1)
    config, params, ignored = _ours(family, torch_model)
    if head == "span":  # converted as a classifier, as export names it back
        assert [n for n in ignored if n.startswith("qa_outputs")] == ["qa_outputs.weight", "qa_outputs.bias"]
        state = _state_dict(torch_model)
        params["qa_outputs"] = {"kernel": state["qa_outputs.weight"].T, "bias": state["qa_outputs.bias"]}
    cls = {"sequence": SequenceClassifier, "token": TokenClassifier, "span": SpanExtractor}[head]
    logits = np.asarray(cls(config, num_labels=num_labels).apply({"params": params}, ids, mask, types))
    valid = mask.astype(bool) if head != "sequence" else slice(None)
    np.testing.assert_allclose(logits[valid], expected[valid], rtol=0, atol=TOL)
    if head != "span":
        back = convert.flax_to_hf(params, families.named(family))
        state = {k: v for k, v in _state_dict(torch_model).items() if k in back}
        assert sorted(back) == sorted(state)  # every tensor of the torch class but its buffers
        for name, value in back.items():
            np.testing.assert_array_equal(value, state[name])


@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_dropout_and_bfloat16(family):
    torch_model = _torch_model(family, "ForSequenceClassification", num_labels=3)
    config, params, _ = _ours(family, torch_model)
    ids, mask, types = _batch(family)
    model = SequenceClassifier(config, num_labels=3)
    run = lambda seed: model.apply(  # noqa: E731
        {"params": params}, ids, mask, types, deterministic=False, rngs={"dropout": jax.random.key(seed)}
    )
    assert not np.allclose(run(0), run(1))
    np.testing.assert_array_equal(run(0), run(0))
    fp32 = model.apply({"params": params}, ids, mask, types)
    bf16 = SequenceClassifier(config, num_labels=3, dtype=jnp.bfloat16).apply(
        {"params": params}, ids, mask, types
    )
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(bf16), np.asarray(fp32), atol=0.1)


def test_roberta_positions_count_tokens_from_the_padding_id():
    config = families.named("roberta").config(vocab_size=VOCAB, **ODD_SIZES)
    assert config.max_positions == ODD_SIZES["max_position_embeddings"] - 2
    ids, mask, types = _batch("roberta", extra_pad=3)
    model = SequenceClassifier(config, num_labels=2)
    params = model.init(jax.random.key(0), ids, mask, types)["params"]
    narrow = model.apply({"params": params}, ids[:, :8], mask[:, :8], types[:, :8])
    np.testing.assert_allclose(model.apply({"params": params}, ids, mask, types), narrow, atol=1e-6)


STEPS, WARMUP, LR, BATCH, LENGTH, LABELS = 20, 3, 2e-3, 8, 16, 3


def _trajectory_batches(family: str) -> list[dict]:
    rng = np.random.default_rng(0)
    pad = HF_CONFIGS_ALL[family]().pad_token_id
    batches = []
    for _ in range(4):
        lengths = rng.integers(3, LENGTH + 1, BATCH)
        mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32)
        ids = np.where(mask, rng.integers(5, VOCAB, (BATCH, LENGTH)), pad)
        types = (np.arange(LENGTH)[None] >= (lengths // 2)[:, None]).astype(np.int32) * mask
        types = types if TOKEN_TYPES[family] > 1 else np.zeros_like(types)
        labels = rng.integers(0, LABELS, BATCH).astype(np.int32)
        ids[:, 0] = 5 + labels  # the first token gives the label away: learnable in a few steps
        batches.append({"input_ids": ids.astype(np.int32), "attention_mask": mask, "token_type_ids": types,
                        "labels": labels, "weights": np.ones(BATCH, np.float32)})  # fmt: skip
    return batches * (STEPS // 4)


def _torch_trajectory(family, model, batches) -> list[float]:
    decays = lambda n: not (n.endswith(("bias", "norm.weight")) or "LayerNorm" in n or "layer_norm" in n)  # noqa: E731
    groups = [
        {"params": [p for n, p in model.named_parameters() if decays(n)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if not decays(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, eps=1e-8)
    schedule = transformers.get_linear_schedule_with_warmup(opt, WARMUP, STEPS)
    model.train()
    losses = []
    for batch in batches:
        inputs = _torch_inputs(family, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        out = model(**inputs, labels=torch.tensor(batch["labels"], dtype=torch.long))
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        losses.append(out.loss.item())
    return losses


@pytest.mark.parametrize("family", sorted(HF_CONFIGS_ALL))
def test_twenty_adamw_steps_match_pytorch(family):
    from jaxft.configs import default

    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family == "distilbert":
        no_dropout["seq_classif_dropout"] = 0.0
    torch.manual_seed(0)
    name = families.named(family).class_prefix + "ForSequenceClassification"
    torch_model = getattr(transformers, name)(HF_CONFIGS_ALL[family](num_labels=LABELS, **no_dropout))
    config, params, _ = _ours(family, torch_model)
    batches = _trajectory_batches(family)
    torch_losses = _torch_trajectory(family, torch_model, batches)

    opt: ml_collections.ConfigDict = default.get_config().optimizer
    opt.learning_rate, opt.warmup_steps, opt.weight_decay, opt.max_grad_norm = LR, WARMUP, 0.01, 1.0
    tx = optim.create_optimizer(opt, STEPS)
    devices = jax.devices()[:1]
    model = SequenceClassifier(config, num_labels=LABELS)
    p_step = parallel.pmap_train_step(
        steps.train_step, devices=devices, model=model, tx=tx, deterministic=True
    )
    state = parallel.replicate(steps.create_train_state(params, tx, seed=0), devices)
    losses = []
    for batch in batches:
        state, metrics = p_step(state, parallel.split_for_devices(batch, 1))
        losses.append(float(metrics["loss"][0]))
    np.testing.assert_allclose(losses, torch_losses, atol=1e-4, rtol=0)
    assert losses[-1] < losses[0] - 0.1  # it trained: not two flat lines


MASK_ID, VERBALIZER = 4, (7, 11, 30)


def _masked_lm_parity(family: str, torch_model):
    """Our `MaskedLMClassifier` on `torch_model`'s converted weights (every row's first [MASK] at position 1)
    against its logits there: returns the converted parameters, the names `hf_to_flax` ignored and the torch
    state dict, for the name checks."""
    from jaxft.models.heads import MaskedLMClassifier

    ids, mask, types = _batch(family)
    ids[:, 1] = MASK_ID
    with torch.no_grad():
        logits = torch_model(**_torch_inputs(family, ids, mask, types)).logits.numpy()
    config = families.named(family).config.from_dict(torch_model.config.to_dict())
    state = _state_dict(torch_model)
    params, ignored = convert.hf_to_flax(state, families.named(family), mlm_head=True)
    assert convert.has_mlm_head(params, families.named(family))
    model = MaskedLMClassifier(config, num_labels=3, verbalizer_ids=VERBALIZER, mask_token_id=MASK_ID)
    ours = model.apply({"params": params}, ids, mask, types)
    np.testing.assert_allclose(np.asarray(ours), logits[:, 1][:, list(VERBALIZER)], rtol=0, atol=TOL)
    return params, ignored, state


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "distilbert"])
def test_masked_lm_head_matches_transformers_and_names_round_trip(family):
    params, _, state = _masked_lm_parity(family, _torch_model(family, "ForMaskedLM"))
    back = convert.flax_to_hf(params, families.named(family))
    assert set(back) <= set(state)
    assert {name for name in state if name not in back} <= {
        "lm_head.decoder.weight", "lm_head.decoder.bias", "vocab_projector.weight",
        f"{families.named(family).prefix}.embeddings.position_ids",
        f"{families.named(family).prefix}.embeddings.token_type_ids",
    }  # fmt: skip
    for name, value in back.items():
        np.testing.assert_array_equal(value, state[name])


@pytest.mark.parametrize("family", sorted(HF_CONFIGS_ALL))
def test_layer_decay_finds_every_familys_layers(family):
    from jaxft.strategies import regularization

    config = families.named(family).config.from_dict(HF_CONFIGS_ALL[family]().to_dict())
    ids, mask, types = _batch("roberta")
    params = SequenceClassifier(config, num_labels=2).init(jax.random.key(0), ids, mask, types)["params"]
    assert regularization.num_layers(params) == ODD_SIZES["num_hidden_layers"] == 2
    paths = [
        tuple(str(getattr(k, "key", k)) for k in p)
        for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ]
    scales = {path: regularization.layer_scale(path, 2, 0.5) for path in paths}
    assert {scales[p] for p in paths if "embeddings" in p} == {0.125}
    assert {0.25, 0.5} <= set(scales.values())  # layer 0, layer 1
    assert {scales[p] for p in paths if p[0] != "bert"} == {1.0}  # the head


@pytest.mark.parametrize("family", sorted(OWN_ENCODERS))
@pytest.mark.parametrize("head", ["sequence", "token", "span"])
def test_own_encoder_heads_match_transformers(family, head):
    suffix = {"sequence": "ForSequenceClassification", "token": "ForTokenClassification"}
    suffix["span"] = "ForQuestionAnswering"
    num_labels = {"sequence": 3, "token": 5, "span": 2}[head]
    name = families.named(family).class_prefix + suffix[head]
    torch.manual_seed(0)
    torch_model = _perturbed(getattr(transformers, name)(OWN_ENCODERS[family](num_labels=num_labels)))
    ids, mask, types = _batch(family)
    with torch.no_grad():
        out = torch_model(**_torch_inputs(family, ids, mask, types))
    expected = out.logits.numpy() if head != "span" else np.stack([out.start_logits, out.end_logits], -1)
    config, params, _ = _ours(family, torch_model)
    qa_name = families.named(family).qa_name
    if head == "span" and qa_name != "qa_outputs":  # ModernBERT names its QA projection `classifier`
        params["qa_outputs"] = params.pop(qa_name)
    cls = {"sequence": SequenceClassifier, "token": TokenClassifier, "span": SpanExtractor}[head]
    logits = np.asarray(cls(config, num_labels=num_labels).apply({"params": params}, ids, mask, types))
    valid = mask.astype(bool) if head != "sequence" else slice(None)
    np.testing.assert_allclose(logits[valid], expected[valid], rtol=0, atol=TOL)


def test_modernbert_masked_lm_head_matches_transformers_and_names_round_trip():
    torch.manual_seed(0)
    torch_model = _perturbed(transformers.ModernBertForMaskedLM(OWN_ENCODERS["modernbert"]()))
    params, ignored, state = _masked_lm_parity("modernbert", torch_model)
    assert ignored == ["decoder.weight"]  # tied to the embeddings
    family = families.named("modernbert")
    back = convert.flax_to_hf(params, family)
    assert sorted(back) == sorted(name for name in state if name != "decoder.weight")
    for name, value in back.items():
        np.testing.assert_array_equal(value, state[name])


@pytest.mark.parametrize("legacy", [True, False])
def test_deberta_masked_lm_head_matches_transformers_and_exports_the_legacy_names(legacy):
    torch.manual_seed(0)
    torch_model = _perturbed(transformers.DebertaV2ForMaskedLM(OWN_ENCODERS["deberta-v2"](legacy=legacy)))
    params, _, state = _masked_lm_parity("deberta-v2", torch_model)
    family = families.named("deberta-v2")
    legacy_names = {v: k for k, v in convert.families.named("deberta-v2").mlm_names.items()}
    back = convert.flax_to_hf(params, family)
    for name, value in back.items():
        theirs = state[name] if legacy or not name.startswith("cls.") else state[legacy_names[name]]
        np.testing.assert_array_equal(value, theirs)
    assert {n for n in back if n.startswith("cls.")} == {
        "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.bias",
    }  # fmt: skip
