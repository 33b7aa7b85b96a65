"""Helpers shared by the test files: tiny BERT configurations, random batches, parameter initialisation,
the relative error between two parameter trees, on forced host devices one step's loss and gradients and an
evaluation's totals, a workdir's latest checkpointed train state, a jaxpr's equations and matmul FLOPs
(backend-independent, unlike compiled HLO), and a final report's per-example arrays checked against it.

Imported as `from tests.helpers import ...` (pytest's pythonpath holds the repository root).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.models.bert import BertConfig
from jaxft.training import checkpoint, parallel, steps
from jaxft.training.train import eval_counts

# Odd sizes (37) catch transposed or swapped dimensions that square shapes would hide. A dict, for both
# transformers' BertConfig and ours; its dropout is the default of each.
ODD_SIZES = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)


def padded_batch(
    size: int,
    vocab_size: int,
    labels,
    *,
    length: int,
    min_length: int = 2,
    padding_rows: int = 0,
    seed: int = 0,
) -> dict:
    """A random host batch of `size` rows of `min_length`..`length` tokens (0-padded), the last `padding_rows`
    of weight 0: what `jaxft.data.batching.make_batch` gives a step. `labels(rng, lengths, mask)` draws the
    labels, after the tokens."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_length, length + 1, size)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    weights = np.ones(size, np.float32)
    weights[size - padding_rows :] = 0
    return {
        "input_ids": (rng.integers(1, vocab_size, (size, length)) * mask).astype(np.int32),
        "attention_mask": mask,
        "token_type_ids": np.zeros((size, length), np.int32),
        "labels": labels(rng, lengths, mask),
        "weights": weights,
    }


def classification_batch(
    size: int, vocab_size: int, num_labels: int, *, length: int = 12, padding_rows: int = 0, seed: int = 0
) -> dict:
    """`padded_batch` with class labels."""
    labels = lambda rng, lengths, mask: rng.integers(0, num_labels, size).astype(np.int32)  # noqa: E731
    return padded_batch(size, vocab_size, labels, length=length, padding_rows=padding_rows, seed=seed)


def random_features(rng: np.random.Generator, num_examples: int, vocab_size: int, width: int = 20) -> dict:
    """Tokenised features (`jaxft.data.tokenize` layout) of `num_examples` random rows of 2..`width` - 1
    tokens, 0-padded to `width`."""
    lengths = rng.integers(2, width, num_examples).astype(np.int32)
    ids = rng.integers(1, vocab_size, (num_examples, width)) * (np.arange(width) < lengths[:, None])
    return {
        "input_ids": ids.astype(np.int32),
        "token_type_ids": np.zeros((num_examples, width), np.int32),
        "length": lengths,
    }


def tiny_bert(
    vocab_size: int,
    *,
    hidden_size: int = 16,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 32,
    max_position_embeddings: int = 32,
    dropout: float = 0.0,
) -> BertConfig:
    """A small BertConfig; `dropout` is both the hidden and the attention-probability dropout."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )


def init_params(model, length: int = 8, seed: int = 0):
    """`model`'s initial parameters, on the host, from an all-zero (1, length) batch."""
    dummy = jnp.zeros((1, length), jnp.int32)
    return jax.device_get(model.init(jax.random.key(seed), dummy, jnp.ones_like(dummy), dummy)["params"])


def rel_error(a, b) -> float:
    """|a - b| / |b| over all the leaves of two trees, as one flat vector."""
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(b)])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def loss_and_grads(model, params, batch, num_devices: int, accum_steps: int = 1, **step_kwargs):
    """steps.loss_and_grads (deterministic, key 0) with `batch` split over the first `num_devices` devices:
    (loss, gradients, count) as the host sees them. `step_kwargs` go to the step (task=...)."""
    devices = jax.devices()[:num_devices]
    fn = parallel.pmap_reduce(
        lambda p, b, axis_name: steps.loss_and_grads(
            p,
            b,
            jax.random.key(0),
            model=model,
            axis_name=axis_name,
            accum_steps=accum_steps,
            deterministic=True,
            **step_kwargs,
        ),
        devices=devices,
    )
    loss, grads, count = fn(
        parallel.replicate(params, devices), parallel.split_for_devices(batch, num_devices)
    )
    return float(loss[0]), parallel.unreplicate(grads), float(count[0])


def eval_totals(
    model, params, split, num_devices: int, *, buckets: list[int], batch_size: int, **step_kwargs
):
    """train.eval_counts over `split` with steps.eval_step on the first `num_devices` devices; `batch_size`
    is rounded up to a multiple of them. `step_kwargs` go to the step (num_labels=... or task=...)."""
    devices = jax.devices()[:num_devices]
    p_eval = parallel.pmap_eval_step(steps.eval_step, devices=devices, model=model, **step_kwargs)
    return eval_counts(
        p_eval,
        parallel.replicate(params, devices),
        split,
        buckets,
        parallel.eval_batch_size(batch_size, num_devices),
        num_devices,
    )


def latest_state(workdir) -> tuple[int, dict]:
    """(step, train state) of the newest full checkpoint in `workdir`, read as saved."""
    ckpts = checkpoint.Checkpoints(str(workdir), read_only=True)
    step = ckpts.latest_step()
    restored = ckpts.latest.restore(step)
    ckpts.close()
    return step, restored["state"]


def jaxpr_eqns(jaxpr):
    """Every equation of a (closed) jaxpr and of the jaxprs inside it (jit, cond, scan, custom_vjp...)."""
    for eqn in jaxpr.jaxpr.eqns if hasattr(jaxpr, "jaxpr") else jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from jaxpr_eqns(sub)


def dot_flops(jaxpr) -> int:
    """The FLOPs (2 per multiply-add) of every `dot_general` in a jaxpr and the jaxprs inside it: what the
    traced program asks for, whatever a backend's compiler then makes of it (its `cost_analysis()` counts
    what XLA compiled, which depends on the XLA version and the CPU)."""
    total = 0
    for eqn in jaxpr_eqns(jaxpr):
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            contracted = int(np.prod([lhs[d] for d in lhs_contract]))
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * contracted
    return total


def check_final_examples(workdir, final: dict, task: str, num_examples: int, split: str = "eval") -> dict:
    """The per-example arrays the final report of `split` wrote: of `task`, for every example, and giving
    back (`jaxft.bootstrap`) each of the task's recomputable metrics exactly as `final` reports it."""
    from jaxft import bootstrap, evaluate

    examples = evaluate.read_examples(evaluate.examples_path(os.path.join(workdir, "eval"), split))
    assert examples is not None and examples["task"] == task
    assert bootstrap.num_examples(examples) == num_examples
    everything = np.ones((1, num_examples))
    for metric in set(bootstrap.EXAMPLE_METRICS[task]) & set(final):
        value = bootstrap.metric_on_resamples(examples, metric, everything)[0]
        np.testing.assert_allclose(value, final[metric], rtol=1e-12, atol=1e-12, err_msg=metric)
    return examples
