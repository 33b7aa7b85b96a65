"""Where jaxft's train step spends its time: a profiler trace of the step `bench/throughput.py` times, and
its op-time per XLA op kind.

    python bench/profile_step.py trace runs/profile                  # MiniLM, batch 32 x 128, float32
    python bench/profile_step.py trace runs/profile --dtype bfloat16 --prng-impl rbg
    python bench/profile_step.py summary runs/profile                # needs xprof (below)
    python bench/profile_step.py torch                               # the PyTorch peer's step, per aten op
    python bench/profile_step.py trace runs/profile_mb --family modernbert   # a random MiniLM-sized family

`trace` compiles the step, runs 2 warm-up steps, then records `--steps` (2) under `jax.profiler.trace`.
`summary` reads the newest trace in the directory and prints, per op kind (the HLO name without its
number: "ynn_fusion" for XNNPACK/YNNPACK matmul fusions on CPU, "broadcast_add_fusion", ...), the op-time
per step summed over the threads that ran it, and the share of the total. It needs xprof's converter,
which is not a dependency of jaxft: `python -m venv /tmp/xp && /tmp/xp/bin/pip install xprof`, then run
`summary` with /tmp/xp/bin/python (it imports nothing from jaxft). `torch` profiles the PyTorch peer's step
(`throughput.py`'s) with torch.profiler and prints self CPU time per aten op, matmuls summed.
"""

import argparse
import collections
import glob
import json
import os
import re
import sys
import time


def trace(args) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.dirname(here), here]
    import jax
    import throughput

    throughput.jaxft_process(args.prng_impl)  # as training does, before anything touches a device

    from jaxft.configs import common
    from jaxft.training import steps as steps_lib

    checkpoint = common.minilm_checkpoint()
    if args.family != "bert":
        checkpoint = None  # random weights of the family's architecture, as bench/throughput.py --family
    net, state, tx, vocab_size = throughput.jaxft_setup(args.model, args.dtype, checkpoint, None, args.family)
    batch = jax.device_put(throughput._batch(args.batch, args.seq_len, vocab_size))
    step = jax.jit(
        lambda s, b: steps_lib.train_step(s, b, model=net, tx=tx, axis_name=None), donate_argnums=0
    )
    for _ in range(3):  # compile, then warm up
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    jax.profiler.start_trace(args.dir)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    elapsed = (time.perf_counter() - start) / args.steps
    jax.profiler.stop_trace()
    with open(os.path.join(args.dir, "steps.json"), "w") as f:
        json.dump({"steps": args.steps, "step_ms": elapsed * 1e3, **vars(args)}, f)
    print(f"{args.steps} steps traced into {args.dir} ({elapsed * 1e3:.0f} ms per step, traced)")


def summary(args) -> None:
    from xprof.convert import raw_to_tool_data

    paths = sorted(glob.glob(os.path.join(args.dir, "plugins/profile/*/*.xplane.pb")))
    if not paths:
        sys.exit(f"error: no trace under {args.dir}; run `trace` first")
    with open(os.path.join(args.dir, "steps.json")) as f:
        run = json.load(f)
    data, _ = raw_to_tool_data.xspace_to_tool_data(paths[-1:], "trace_viewer", {})
    events = json.loads(data)["traceEvents"]
    threads = {
        (e.get("pid"), e.get("tid")): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    runtime = ("Thunk", "Threadpool", "Slinky", "end:", "$")  # executor spans and Python frames, not ops
    totals, counts = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") != "X" or e["name"].startswith(runtime):
            continue
        if threads.get((e.get("pid"), e.get("tid"))) == "python":
            continue
        kind = re.sub(r"\.\d+$", "", e["name"])
        totals[kind] += e.get("dur", 0) / 1e3 / run["steps"]
        counts[kind] += 1 / run["steps"]
    total = sum(totals.values())
    print(
        f"{run.get('family', 'bert')} {run['model']} {run['batch']} x {run['seq_len']} {run['dtype']}: "
        f"{run['step_ms']:.0f} ms per step"
    )
    print(f"op-time per step, summed over threads: {total:.0f} ms\n")
    print(f"{'op kind':32} {'ops':>5} {'ms/step':>9} {'share':>7}")
    for kind, ms in totals.most_common(args.top):
        print(f"{kind[:32]:32} {counts[kind]:5.0f} {ms:9.1f} {ms / total:7.1%}")


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def torch_ops(args) -> None:
    """The PyTorch peer's step (`throughput.torch_step`) under torch.profiler: self CPU time per aten op."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.dirname(here), here]
    import throughput
    import torch

    from jaxft.configs import common

    torch.set_num_threads(os.cpu_count())
    checkpoint = common.minilm_checkpoint() if args.family == "bert" else None
    step, _, _ = throughput.torch_step(
        args.model, args.batch, args.seq_len, args.dtype, checkpoint, None, False, args.family
    )
    for _ in range(3):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        step_ms = (time.perf_counter() - start) * 1e3 / args.steps
    totals, counts = collections.Counter(), collections.Counter()
    for e in prof.key_averages():
        totals[e.key] += e.self_cpu_time_total / 1e3 / args.steps
        counts[e.key] += e.count / args.steps
    total = sum(totals.values())
    matmul = sum(ms for op, ms in totals.items() if op in MATMUL_OPS)
    print(f"torch {args.model} {args.batch} x {args.seq_len} {args.dtype}: {step_ms:.0f} ms per step")
    print(f"self CPU time per step: {total:.0f} ms, matmuls ({', '.join(MATMUL_OPS)}) {matmul:.0f} ms\n")
    print(f"{'aten op':32} {'calls':>5} {'ms/step':>9} {'share':>7}")
    for op, ms in totals.most_common(args.top):
        print(f"{op[:32]:32} {counts[op]:5.0f} {ms:9.1f} {ms / total:7.1%}")


def throughput_families() -> list[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.dirname(here), here]
    import throughput

    return list(throughput.FAMILIES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step = argparse.ArgumentParser(add_help=False)  # the step both `trace` and `torch` run
    step.add_argument("--model", default="minilm", choices=["minilm", "base"])
    step.add_argument("--batch", type=int, default=32)
    step.add_argument("--seq-len", type=int, default=128)
    step.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    step.add_argument("--family", default="bert", choices=throughput_families(), help="as throughput.py's")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("trace", parents=[step])
    p.add_argument("dir")
    p.add_argument("--prng-impl", default=None, choices=["threefry2x32", "rbg", "unsafe_rbg"])
    p.add_argument("--steps", type=int, default=2)
    p = sub.add_parser("torch", parents=[step])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=20)
    p = sub.add_parser("summary")
    p.add_argument("dir")
    p.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    {"trace": trace, "torch": torch_ops, "summary": summary}[args.command](args)


if __name__ == "__main__":
    main()
