"""Training-step throughput of jaxft and the transformers PyTorch peer on whatever device is present.

    python bench/throughput.py          # CPU: MiniLM, batch 32, seq 128, float32 and bf16 (~3 min)
    python bench/throughput.py --model base --batch 32 256 --dtype bfloat16 --impl jaxft   # e.g. on a GPU
    python bench/throughput.py --family roberta --dtype float32    # a random MiniLM-sized RoBERTa

--impl: "jaxft", "torch" (eager) and "torch.compile" (the model under torch.compile, the optimizer eager;
its first step, the compile, is reported as compile_s). Prints one JSON line per measurement (impl, device,
model, batch, seq_len, dtype, seq_per_s, tokens_per_s, step_ms, compile_s, mfu, peak_mem_gib), then a table.
Steady state: median of --steps timed steps after --warmup steps, each step synchronised. The same random
batch (full attention mask) for all; the PyTorch peer is pinned: float32 (with --dtype bfloat16: AMP autocast
to bf16, on GPU or CPU, float32 weights and optimizer, as jaxft's bf16 compute),
torch.set_num_threads(os.cpu_count()), default AdamW on CPU and fused AdamW on GPU (the peers of the speed
targets). --prng-impl picks the PRNG behind jaxft's dropout masks. Each impl is measured in a fresh process of
its own, so the CPU heap setting jaxft's training makes for its process (jaxft/cpu.py; jaxft's measurements
make it too) never reaches the PyTorch peer, and neither inherits the other's memory. The table ends with each
jaxft measurement's speed over each peer's at the same batch, across dtypes too (the CPU peer is pinned to
float32). MFU counts 6 x matmul parameters x tokens plus the attention matmuls, against --peak-tflops (default
on CPU: the matmul rate of the dtype measured on the Intel machine, 0.285 for float32 and 1.66 for bf16 (AMX);
on a GPU 792, an H200's bf16 rate, for every row, float32 ones too).
"""

import argparse
import functools
import itertools
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert")

MODELS = {  # hidden, layers, heads, intermediate, vocab
    "minilm": (384, 6, 12, 1536, 30522),
    "base": (768, 12, 12, 3072, 30522),
}


# Matmul rates measured on the Intel Xeon machine with AMX: float32 as in docs/platform-notes.md; bf16
# PyTorch's 4096^3 bf16 matmul (oneDNN, 1,660 GFLOP/s; XLA's 1,015), 2026-11-30 04:54 UTC (bench/README.md).
CPU_PEAK_TFLOPS = {"float32": 0.285, "bfloat16": 1.66}


def flops_per_sequence(model: str, seq_len: int, labels: int = 2) -> float:
    """Training FLOPs of one sequence: 6 x matmul parameters x tokens + attention score/value matmuls."""
    hidden, layers, _, inter, _ = MODELS[model]
    matmul_params = layers * (4 * hidden * hidden + 2 * hidden * inter) + hidden * hidden + hidden * labels
    attention = layers * 2 * 2 * seq_len * seq_len * hidden * 3  # QK^T and AV, forward + backward (x3)
    return 6 * matmul_params * seq_len + attention


def _batch(batch: int, seq_len: int, vocab: int) -> dict:
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(1000, vocab, (batch, seq_len)).astype(np.int32),
        "attention_mask": np.ones((batch, seq_len), np.int32),
        "token_type_ids": np.zeros((batch, seq_len), np.int32),
        "labels": rng.integers(0, 2, batch).astype(np.int32),
        "weights": np.ones(batch, np.float32),
    }


def _bert_config(model: str, checkpoint: str | None, attention_dropout: float | None = None, family="bert"):
    """The architecture (the checkpoint's for MiniLM when installed), with `attention_dropout` if given."""
    import dataclasses

    from jaxft.models import families

    config = _architecture(model, checkpoint, family)
    if attention_dropout is not None:
        [field] = families.named(family).dropout_fields[1][:1]
        config = dataclasses.replace(config, **{field: attention_dropout})
    return config


def hf_family_config(family: str, model: str):
    """transformers' config of `family` (not BERT) at `model`'s sizes: random weights, the family's defaults
    otherwise (DeBERTa as v3: relative positions only, 256 log buckets, shared keys)."""
    import transformers

    hidden, layers, heads, inter, vocab = MODELS[model]
    sizes = dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter
    )
    extra = {
        "roberta": {},
        "xlm-roberta": {},
        "electra": dict(embedding_size=hidden),
        "distilbert": dict(dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=inter),
        "deberta-v2": dict(
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=256,
            max_relative_positions=-1,
            share_att_key=True,
            position_biased_input=False,
            type_vocab_size=0,
            norm_rel_ebd="layer_norm",
        ),
        "modernbert": dict(pad_token_id=0, cls_token_id=1, sep_token_id=2, bos_token_id=1, eos_token_id=2),
    }[family]
    if family == "distilbert":
        sizes = {}
    return transformers.AutoConfig.for_model(family, vocab_size=vocab, **sizes, **extra)


def _architecture(model: str, checkpoint: str | None, family: str = "bert"):
    from jaxft.models import convert, families
    from jaxft.models.bert import BertConfig

    if family != "bert":
        return families.named(family).config.from_dict(hf_family_config(family, model).to_dict())
    if model == "minilm" and checkpoint:
        return convert.load_config(checkpoint)
    hidden, layers, heads, inter, vocab = MODELS[model]
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
    )


def jaxft_setup(model: str, dtype: str, checkpoint, attention_dropout, family: str = "bert"):
    """jaxft's classifier, its train state at step 0 (random init) and optimizer, and the vocabulary size:
    what `measure_jaxft` times (and `bench/profile_step.py` traces)."""
    import jax
    import jax.numpy as jnp

    from jaxft.configs import default
    from jaxft.models.heads import SequenceClassifier
    from jaxft.training import optim
    from jaxft.training import steps as steps_lib

    bert_config = _bert_config(model, checkpoint, attention_dropout, family)
    attention = "cudnn" if jax.default_backend() == "gpu" and dtype == "bfloat16" else "xla"
    net = SequenceClassifier(
        bert_config,
        num_labels=2,
        attention_impl=attention,
        dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
    )
    dummy = jnp.zeros((1, 8), jnp.int32)
    params = net.init(jax.random.key(0), dummy, jnp.ones_like(dummy), dummy)["params"]
    tx = optim.create_optimizer(default.get_config().optimizer, 10_000)
    return net, steps_lib.create_train_state(params, tx, 0), tx, bert_config.vocab_size


def measure_jaxft(
    model: str,
    batch: int,
    seq_len: int,
    dtype: str,
    steps: int,
    warmup: int,
    checkpoint,
    attention_dropout,
    family: str = "bert",
):
    import jax

    from jaxft.training import parallel
    from jaxft.training import steps as steps_lib

    net, state, tx, vocab_size = jaxft_setup(model, dtype, checkpoint, attention_dropout, family)
    devices = jax.devices()[:1]
    parallelism = parallel.Pmap(devices)  # the training loop's default path, on one device
    p_step = parallelism.train_step(steps_lib.train_step, model=net, tx=tx)
    state = parallelism.place_state(state)
    data = next(parallelism.device_batches([_batch(batch, seq_len, vocab_size)]))
    holder = [state]

    def step():
        holder[0], metrics = p_step(holder[0], data)
        metrics["loss"].block_until_ready()

    compile_s = seconds(step)
    median = median_seconds(step, warmup, steps)
    stats = devices[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return median, compile_s, (peak / 2**30 if peak else None), jax.default_backend()


def torch_model_and_batch(
    model: str, batch: int, seq_len: int, checkpoint, attention_dropout, device: str, family: str = "bert"
):
    """The PyTorch peer's classifier on `device` and the random batch (token tensors, labels) it trains on."""
    import torch
    import transformers

    config = _bert_config(model, checkpoint, attention_dropout, family)
    hf = transformers.AutoConfig.for_model(**config.to_hf_dict(), num_labels=2)
    net = transformers.AutoModelForSequenceClassification.from_config(hf).to(device)
    unused = (
        ("weights",)
        if "token_type_ids" in net.forward.__code__.co_varnames
        else ("weights", "token_type_ids")
    )
    data = {
        k: torch.tensor(v, dtype=torch.long, device=device)
        for k, v in _batch(batch, seq_len, config.vocab_size).items()
        if k not in unused
    }
    return net, data


def torch_step(
    model: str, batch: int, seq_len: int, dtype: str, checkpoint, attention_dropout, compiled, family="bert"
):
    """The PyTorch peer's training step (a no-argument function, synchronised on CUDA), its device, and the
    (model, batch) it trains (`torch_model_and_batch`)."""
    import torch

    torch.set_num_threads(os.cpu_count())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net, data = torch_model_and_batch(model, batch, seq_len, checkpoint, attention_dropout, device, family)
    # The GPU peers of the speed targets use fused AdamW; the CPU peer is pinned to the default (foreach) one.
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-5, fused=device == "cuda" or None)
    forward = torch.compile(net) if compiled else net  # "torch.compile": the first step compiles
    amp = dtype == "bfloat16"  # autocast: bf16 matmuls, float32 weights and optimizer (CUDA and CPU)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = forward(**data).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step, device, (net, data)


def seconds(fn) -> float:
    """Wall time of one call of `fn` (which synchronises itself): the first step's, compile included."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn, warmup: int, steps: int) -> float:
    """Median wall time of `steps` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(seconds(fn) for _ in range(steps))


def measure_torch(
    model: str,
    batch: int,
    seq_len: int,
    dtype: str,
    steps: int,
    warmup: int,
    checkpoint,
    attention_dropout,
    family: str = "bert",
    compiled: bool = False,
):
    import torch

    step, device, _ = torch_step(
        model, batch, seq_len, dtype, checkpoint, attention_dropout, compiled, family
    )
    compile_s = seconds(step)
    median = median_seconds(step, warmup, steps)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return median, compile_s, peak, device


IMPLS = {
    "jaxft": measure_jaxft,
    "torch": measure_torch,
    "torch.compile": functools.partial(measure_torch, compiled=True),
}


def jaxft_process(prng_impl: str | None) -> None:
    """What a jaxft measurement sets for its process before anything touches a device: the CPU heap setting
    that `train_and_evaluate` makes (`jaxft.cpu`) and the PRNG behind the dropout masks (`--prng-impl`)."""
    import jax

    from jaxft import cpu

    cpu.keep_step_memory()
    if prng_impl:
        jax.config.update("jax_default_prng_impl", prng_impl)


def measure(args, impl: str, batch: int, dtype: str) -> dict:
    """One measurement, in this process (set up by `jaxft_process` for jaxft): its JSON row."""
    from jaxft.configs import common

    step_s, compile_s, peak, device = IMPLS[impl](
        args.model,
        batch,
        args.seq_len,
        dtype,
        args.steps,
        args.warmup,
        common.minilm_checkpoint() if args.family == "bert" else None,
        args.attention_dropout,
        args.family,
    )
    peak_tflops = args.peak_tflops or (CPU_PEAK_TFLOPS[dtype] if device == "cpu" else 792.0)
    seq_per_s = batch / step_s
    return {
        "impl": impl,
        "device": device,
        "model": args.model,
        "family": args.family,
        "batch": batch,
        "seq_len": args.seq_len,
        "dtype": dtype,
        "prng_impl": args.prng_impl if impl == "jaxft" else None,
        "attention_dropout": args.attention_dropout,
        "seq_per_s": round(seq_per_s, 2),
        "tokens_per_s": round(seq_per_s * args.seq_len, 1),
        "step_ms": round(step_s * 1e3, 2),
        "compile_s": round(compile_s, 2),
        # BERT's matmuls; other families' differ (ModernBERT's gated feed-forward, DeBERTa's position terms).
        "mfu": round(seq_per_s * flops_per_sequence(args.model, args.seq_len) / (peak_tflops * 1e12), 4)
        if args.family == "bert"
        else None,
        "peak_mem_gib": round(peak, 2) if peak else None,
    }


def measure_in_subprocess(args, impl: str) -> list[dict]:
    """`impl`'s measurements (every batch and dtype) in a fresh Python process, whose rows are printed as they
    arrive; its stderr passes through. A failed measurement ends this process too."""
    argv = [sys.executable, os.path.abspath(__file__), "--in-process", "--impl", impl]
    argv += ["--batch", *map(str, args.batch), "--dtype", *args.dtype]
    flags = (
        "model",
        "family",
        "seq_len",
        "steps",
        "warmup",
        "peak_tflops",
        "attention_dropout",
        "prng_impl",
        "out",
    )
    for flag in flags:
        if getattr(args, flag) is not None:
            argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    rows = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as child:
        for line in child.stdout:
            print(line, end="", flush=True)
            if line.startswith("{"):
                rows.append(json.loads(line))
    if child.returncode:
        sys.exit(f"{impl}: a measurement failed (exit status {child.returncode})")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", nargs="+", default=["jaxft", "torch"], choices=list(IMPLS))
    parser.add_argument("--model", default="minilm", choices=sorted(MODELS))
    parser.add_argument(
        "--family",
        default="bert",
        choices=FAMILIES,
        help="the encoder family, at --model's sizes (random weights but for MiniLM's BERT)",
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[32])
    parser.add_argument("--seq-len", type=int, default=128)
    dtypes = ["float32", "bfloat16"]
    parser.add_argument("--dtype", nargs="+", default=dtypes, choices=dtypes)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument(
        "--attention-dropout",
        type=float,
        default=None,
        help="attention dropout of both impls (default: the model's, 0.1); 0 lets jaxft train through cuDNN",
    )
    parser.add_argument(
        "--prng-impl",
        default=None,
        choices=["threefry2x32", "rbg", "unsafe_rbg"],
        help="jaxft's PRNG for dropout masks (default: JAX's, threefry2x32)",
    )
    parser.add_argument("--out", default=None, help="append JSON lines to this file as they are measured")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure the one --impl given in this process (what the subprocess of each impl runs)",
    )
    args = parser.parse_args()
    if args.in_process:
        if len(args.impl) != 1:
            parser.error("--in-process measures one impl")
        if args.impl == ["jaxft"]:
            jaxft_process(args.prng_impl)  # once, before anything touches a device
        for batch, dtype in itertools.product(args.batch, args.dtype):
            row = json.dumps(measure(args, args.impl[0], batch, dtype))
            print(row, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(row + "\n")
        return
    rows = [row for impl in args.impl for row in measure_in_subprocess(args, impl)]
    print(
        f"\n{'impl':13} {'device':6} {'dtype':8} {'batch':>5} {'seq/s':>9} {'step ms':>9} {'compile s':>9} "
        f"{'MFU':>7}"
    )
    for r in rows:
        print(
            f"{r['impl']:13} {r['device']:6} {r['dtype']:8} {r['batch']:5d} {r['seq_per_s']:9.2f} "
            f"{r['step_ms']:9.2f} {r['compile_s']:9.2f} {r['mfu'] or 0:7.2%}"
        )
    print(speed_ratios(rows), end="")


def speed_ratios(rows: list[dict]) -> str:
    """jaxft's throughput over each peer measurement's at the same batch: lines "jaxft D / impl D: R x"."""
    lines = []
    for ours, peer in itertools.product(rows, rows):
        if ours["impl"] == "jaxft" and peer["impl"] != "jaxft" and ours["batch"] == peer["batch"]:
            ratio = ours["seq_per_s"] / peer["seq_per_s"]
            pair = f"jaxft {ours['dtype']} / {peer['impl']} {peer['dtype']}"
            lines.append(f"batch {ours['batch']}: {pair}: {ratio:.2f}x\n")
    return ("\n" if lines else "") + "".join(lines)


if __name__ == "__main__":
    main()
