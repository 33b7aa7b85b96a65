"""The train step in parts, jaxft against the PyTorch peer: forward, forward + backward, whole step, each
with and without dropout (MiniLM, batch 32 x 128, float32, the same random batch as bench/throughput.py).

    python bench/step_parts.py            # both implementations, one after the other (~3 min on 2 CPU cores)
    python bench/step_parts.py --impl jaxft

Prints one JSON line per implementation: median milliseconds of --steps calls after 2 warm-up calls.
"forward" runs without gradients (PyTorch under no_grad); "grad" is the loss's gradients without the
optimizer (jaxft: `steps.loss_and_grads`, what its step calls; PyTorch: `loss.backward()`); "step" is what
bench/throughput.py times. Without dropout means `deterministic=True` / `model.eval()`. Parts that add
up: the step minus "grad" is the optimizer update, "grad" minus "forward" the backward pass.
Both implementations share this process, so jaxft's parts run without the CPU heap setting its training
makes (jaxft/cpu.py: its step faults in its temporaries afresh here; bench/throughput.py measures with it).
"""

import argparse
import functools
import json
import os
import sys

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(__file__)]
import throughput  # noqa: E402

from jaxft.configs import common  # noqa: E402


def _median_ms(fn, steps: int) -> float:
    return round(throughput.median_seconds(fn, 2, steps) * 1e3)


def jaxft_parts(steps: int, checkpoint) -> dict:
    import jax

    from jaxft.training import steps as steps_lib

    net, state, tx, vocab = throughput.jaxft_setup("minilm", "float32", checkpoint, None)
    batch = jax.device_put(throughput._batch(32, 128, vocab))
    params, rngs = state.params, {"dropout": jax.random.key(0)}

    def logits(p, b, deterministic):
        ids, mask, types = b["input_ids"], b["attention_mask"], b["token_type_ids"]
        return net.apply({"params": p}, ids, mask, types, deterministic=deterministic, rngs=rngs)

    parts = {}
    for dropout in (True, False):
        suffix = "" if dropout else "_no_dropout"
        forward = jax.jit(functools.partial(logits, deterministic=not dropout))
        grad = jax.jit(  # the step's own loss and gradients, without the optimizer
            functools.partial(steps_lib.loss_and_grads, model=net, axis_name=None, deterministic=not dropout)
        )
        parts["forward" + suffix] = _median_ms(lambda f=forward: f(params, batch).block_until_ready(), steps)
        parts["grad" + suffix] = _median_ms(
            lambda g=grad: jax.block_until_ready(g(params, batch, rngs["dropout"])), steps
        )
    step = jax.jit(
        lambda s, b: steps_lib.train_step(s, b, model=net, tx=tx, axis_name=None), donate_argnums=0
    )
    holder = [state]

    def one_step():
        holder[0], metrics = step(holder[0], batch)
        jax.block_until_ready(metrics)

    parts["step"] = _median_ms(one_step, steps)
    return parts


def torch_parts(steps: int, checkpoint) -> dict:
    import torch

    step, _, (net, data) = throughput.torch_step("minilm", 32, 128, "float32", checkpoint, None, False)
    parts = {}
    for dropout in (True, False):
        suffix = "" if dropout else "_no_dropout"
        net.train(dropout)

        def forward():
            with torch.no_grad():
                net(**data)

        def grad():
            net.zero_grad()
            net(**data).loss.backward()

        parts["forward" + suffix] = _median_ms(forward, steps)
        parts["grad" + suffix] = _median_ms(grad, steps)
    net.train(True)  # the step trains with dropout, as in bench/throughput.py
    parts["step"] = _median_ms(step, steps)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", nargs="+", default=["jaxft", "torch"], choices=["jaxft", "torch"])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    checkpoint = common.minilm_checkpoint()
    for impl in args.impl:
        measure = jaxft_parts if impl == "jaxft" else torch_parts
        print(json.dumps({"impl": impl, "ms": measure(args.steps, checkpoint)}), flush=True)


if __name__ == "__main__":
    main()
