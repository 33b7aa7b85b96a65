"""Training is right: 50 AdamW steps of jaxft equal a transformers PyTorch loop from the same weights.

Same weights (head included), same batches (with padding), dropout off, linear warm-up then decay, global
norm clipping and masked weight decay on both sides. Per-step loss and final logits agree within 1e-4.
"""

import jax
import ml_collections
import numpy as np
import pytest

from jaxft.models import convert
from jaxft.models.bert import BertConfig
from jaxft.models.heads import SequenceClassifier
from jaxft.training import optim, parallel, steps

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

STEPS, WARMUP, LR, BATCH, LENGTH, LABELS = 50, 5, 2e-3, 8, 16, 3


def _optimizer_config() -> ml_collections.ConfigDict:
    from jaxft.configs import default

    opt = default.get_config().optimizer
    opt.learning_rate, opt.warmup_steps, opt.weight_decay, opt.max_grad_norm = LR, WARMUP, 0.01, 1.0
    return opt


def _batches(vocab_size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(5):
        lengths = rng.integers(3, LENGTH + 1, BATCH)
        mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32)
        labels = rng.integers(0, LABELS, BATCH)
        ids = rng.integers(5, vocab_size, (BATCH, LENGTH)) * mask
        ids[:, 0] = 5 + labels  # the pooled position gives the label away: the model can learn it
        types = (np.arange(LENGTH)[None] >= (lengths // 2)[:, None]).astype(np.int32) * mask
        batches.append(
            {
                "input_ids": ids.astype(np.int32),
                "attention_mask": mask,
                "token_type_ids": types,
                "labels": (ids[:, 1] % LABELS).astype(np.int32),  # learnable from the first token
                "weights": np.ones(BATCH, np.float32),
            }
        )
    return batches * (STEPS // 5)  # five batches seen ten times: enough to learn in 50 steps


def _torch_run(model, batches) -> tuple[list[float], np.ndarray]:
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=LR, eps=1e-8
    )
    schedule = transformers.get_linear_schedule_with_warmup(opt, WARMUP, STEPS)
    model.train()
    losses = []
    for batch in batches:
        out = model(
            input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(batch["attention_mask"]),
            token_type_ids=torch.tensor(batch["token_type_ids"], dtype=torch.long),
            labels=torch.tensor(batch["labels"], dtype=torch.long),
        )
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        losses.append(out.loss.item())
    model.eval()
    with torch.no_grad():
        last = batches[-1]
        logits = model(
            input_ids=torch.tensor(last["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(last["attention_mask"]),
            token_type_ids=torch.tensor(last["token_type_ids"], dtype=torch.long),
        ).logits
    return losses, logits.numpy()


def test_fifty_adamw_steps_match_pytorch():
    hf_config = transformers.BertConfig(
        vocab_size=120,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=32,
        num_labels=LABELS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    torch_model = transformers.BertForSequenceClassification(hf_config)
    state_dict = {k: v.detach().numpy().copy() for k, v in torch_model.state_dict().items()}
    params, _ = convert.hf_to_flax(state_dict)
    batches = _batches(hf_config.vocab_size)
    torch_losses, torch_logits = _torch_run(torch_model, batches)

    model = SequenceClassifier(BertConfig.from_dict(hf_config.to_dict()), num_labels=LABELS)
    tx = optim.create_optimizer(_optimizer_config(), STEPS)
    devices = jax.devices()[:1]
    p_step = parallel.pmap_train_step(
        steps.train_step, devices=devices, model=model, tx=tx, deterministic=True
    )
    state = parallel.replicate(steps.create_train_state(params, tx, seed=0), devices)
    losses = []
    for batch in batches:
        state, metrics = p_step(state, parallel.split_for_devices(batch, 1))
        losses.append(float(metrics["loss"][0]))
    np.testing.assert_allclose(losses, torch_losses, atol=1e-4, rtol=0)
    assert losses[-1] < losses[0] - 0.3  # it really trained: the comparison is not between two flat lines
    last = batches[-1]
    logits = model.apply(
        {"params": parallel.unreplicate(state.params)},
        last["input_ids"],
        last["attention_mask"],
        last["token_type_ids"],
    )
    np.testing.assert_allclose(np.asarray(logits), torch_logits, atol=1e-4, rtol=0)
