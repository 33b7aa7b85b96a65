"""XLA:CPU's step temporaries kept between steps: the one process-wide setting jaxft makes, on one CPU device.

XLA:CPU gives every execution of a compiled step a fresh buffer for its temporaries (1.19 GB for MiniLM-L6 at
batch 32 x 128) and frees it afterwards. glibc serves requests above 32 MB with a new memory mapping and
unmaps it on free, so every page of that buffer faults again on every step (the faults and the system time
they cost are measured in bench/README.md). Two settings keep the buffer instead:

- single-device computations run on the calling thread (`jax_cpu_enable_async_dispatch` off; jaxft blocks on
  every CPU step anyway), so their buffers come from glibc's main arena — the other threads' arenas map every
  large request afresh whatever the settings;
- the main arena serves large requests from its heap (`mallopt(M_MMAP_MAX, 0)`) and never returns memory to
  the system (`mallopt(M_TRIM_THRESHOLD, -1)`).

The price: the process keeps its peak heap until it exits. Measured in bench/README.md. Computations over
several devices run on XLA's threads either way, so with several devices (forced host devices, or several
processes) nothing is changed.
"""

import ctypes
import logging
import sys

import jax

_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_MAX = -4
_ASYNC_DISPATCH = "jax_cpu_enable_async_dispatch"


def _glibc_mallopt():
    """glibc's `mallopt`, or None where the C library is another (musl, macOS) or cannot be loaded."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    # glibc only: musl has a mallopt that does nothing
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return None
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def _backends_initialized() -> bool:
    from jax._src import xla_bridge  # JAX has no public test for this; absent, assume the worst

    return getattr(xla_bridge, "backends_are_initialized", lambda: True)()


def keep_step_memory() -> bool:
    """Keeps XLA:CPU's step temporaries mapped between steps when JAX computes on one CPU device.

    Call it before anything touches a device (JAX reads the dispatch setting when it creates its CPU
    client); afterwards it changes nothing. Returns True where both settings took effect: the backend is
    CPU with one device in all (one process), the C library is glibc, and the backends were not yet
    initialised.
    """
    mallopt = _glibc_mallopt()
    if mallopt is None or _backends_initialized():
        return False
    was_async = jax.config.read(_ASYNC_DISPATCH)
    jax.config.update(_ASYNC_DISPATCH, False)
    if jax.default_backend() != "cpu" or jax.device_count() != 1:  # one device, one process
        # Too late for JAX's CPU client, which now runs its single-device computations inline (on a GPU
        # host: the odd host-side computation); the flag goes back to what it was for the rest.
        jax.config.update(_ASYNC_DISPATCH, was_async)
        return False
    if not (mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, -1)):
        return False
    logging.info("CPU: step temporaries kept in glibc's heap between steps (jaxft/cpu.py)")
    return True
