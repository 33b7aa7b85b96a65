"""Pre-emption: on SIGTERM, finish the current step, save a checkpoint, and exit so that a restart resumes.

Single process: our own SIGTERM handler sets a flag that the loop checks after each step. Under
`jax.distributed`, JAX's preemption service already catches SIGTERM (ENVIRONMENT.md), and every process
must stop at the same step: `multihost_utils.reached_preemption_sync_point` says when.
"""

import signal
import threading

import jax


class Preempted(Exception):
    """Raised after the pre-emption checkpoint is written; the run resumes from it when restarted."""

    def __init__(self, step: int):
        super().__init__(
            f"pre-empted (SIGTERM): checkpoint saved at step {step}; rerun the same command to resume"
        )
        self.step = step


class PreemptionGuard:
    """Context manager that turns SIGTERM into a flag checked once per step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return False

    def should_stop(self, step: int) -> bool:
        """True when this step is where every process stops for a pre-emption."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # the preemption service is off (initialised without it)
                return False
        return self.requested
