"""Every choice the code makes by backend, in one place.

The CPU forms change how fast a step runs, never what it computes (each is tested against its plain twin),
and all of them follow one switch, `cpu_forms()`: on the CPU backend, unless the environment sets
`JAXFT_CPU_FORMS=0` (to time or debug the plain forms):

- Dense layers multiply in the forms XLA:CPU runs fastest (`jaxft.models.matmul.CpuDense`);
- dropout's random bits are hashed round by round, one elementwise fusion, where JAX's CPU lowering runs a
  loop over whole arrays (`jaxft.models.dropout.random_bits`, bit for bit `jax.random.bits`);
- a non-finite update is skipped with `lax.cond`: a select makes XLA:CPU copy the whole optimizer state every
  step (`jaxft.training.steps.train_step`).

Two choices are not about speed: the host waits for every step on CPU (`sync_every_step`: collectives on CPU
devices deadlock with about 100 steps in flight), and "auto" attention is cuDNN's fused kernel on a GPU in
bfloat16 (`fused_attention`). Process-wide settings (the allocator) are not a library's to change: they are
`jaxft.cpu`'s, applied by the command line only.
"""

import os

import jax


def is_cpu() -> bool:
    return jax.default_backend() == "cpu"


def cpu_forms() -> bool:
    """Whether the CPU forms above are used (the CPU backend, unless `JAXFT_CPU_FORMS=0`)."""
    return is_cpu() and os.environ.get("JAXFT_CPU_FORMS", "1") != "0"


def sync_every_step() -> bool:
    """Whether the training loop blocks on each step's output (CPU: collectives deadlock otherwise).

    Collective programs on CPU devices deadlock when about 100 steps are in flight (XLA's rendezvous times
    out; docs/platform-notes.md); GPUs and TPUs keep dispatching ahead and sync only when metrics are read.
    """
    return is_cpu()


def fused_attention(dtype: str) -> bool:
    """Whether "auto" attention is cuDNN's fused kernel: on a GPU, for bfloat16 (it takes no float32)."""
    return jax.default_backend() == "gpu" and dtype == "bfloat16"
