"""Pre-emption: on SIGTERM, finish the current step, save a checkpoint, and exit so that a restart resumes.

Single process: our own SIGTERM handler sets a flag that the loop checks after each step. Ctrl-C (SIGINT)
does the same, and a second Ctrl-C interrupts at once (Python's default: KeyboardInterrupt). Under
`jax.distributed`, JAX's preemption service already catches SIGTERM (docs/platform-notes.md), and every
process must stop at the same step: `multihost_utils.reached_preemption_sync_point` says when.
"""

import signal
import threading

import jax


class Preempted(Exception):
    """Raised after the pre-emption checkpoint is written; the run resumes from it when restarted."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        name = signal.Signals(signum).name
        super().__init__(
            f"pre-empted ({name}): checkpoint saved at step {step}; rerun the same command to resume"
        )
        self.step = step
        self.status = 128 + signum  # the exit status a shell reports for a process the signal ended


class PreemptionGuard:
    """Context manager that turns SIGTERM and a first SIGINT into a flag checked once per step."""

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGTERM  # the signal that asked to stop (multi-host: JAX's, SIGTERM)
        self._previous = {}

    def _handle(self, signum, frame):
        self.requested, self.signum = True, signum
        if signum == signal.SIGINT:  # the next Ctrl-C is not waited on
            signal.signal(signal.SIGINT, self._previous[signal.SIGINT])

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            signals = [signal.SIGTERM]
            if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:  # else the launcher ignores it (background)
                signals.append(signal.SIGINT)
            self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        return False

    def now(self) -> bool:
        """True when a stop was asked for and this process alone decides (one process): work between steps
        (an evaluation) is abandoned at once. Several processes only stop at a step they agree on."""
        return self.requested and jax.process_count() == 1

    def should_stop(self, step: int) -> bool:
        """True when this step is where every process stops for a pre-emption."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # the preemption service is off (initialised without it)
                return False
        return self.requested
