"""The one training loop, and the hooks that hang off it.

`run_steps` does a step, then calls each hook that is due, in order. Everything else a run does between
steps (logging, evaluation and best tracking, early stopping, checkpoints, pre-emption, a progress bar,
recording losses) is a `Hook` with a cadence, so the loop reads on one screen and a method that needs
more side work adds a hook instead of a second loop (levanter's `Trainer.add_hook`). A hook that wants the
run to end asks with `Run.request_stop`: a reason to log, or an exception to raise once every hook of the
step has run (the checkpoint hook saves a stopping step whatever its cadence).

`fit` runs the same loop for a caller that brings its own model, task, batches and loss terms (SetFit's
contrastive fine-tuning): `jaxft.training.steps.train_step` over every device through
`jaxft.training.parallel`, with the optimizer of `jaxft.training.optim`;
`jaxft.training.train.train_and_evaluate` adds what a config-driven run needs (data, checkpoints, reports).
"""

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import optax

from jaxft import backend
from jaxft.training import parallel, steps
from jaxft.training.preemption import Preempted


@dataclasses.dataclass
class Run:
    """What the loop shares with its hooks.

    Attributes:
      state: the placed train state (`jaxft.training.steps.TrainState`), replaced after every step.
      step: the last step done (the start step before the first).
      total_steps: the step the run ends at.
      parallelism: how the state is placed (hooks read metrics and the state through its `to_host`).
      stop: None, or why the run stops after this step: a message (logged) or an exception (raised).
      evaluation: (step, summary metrics) of the latest evaluation of the eval split, set by the evaluation
        hook: a later hook of the same step (a caller's, e.g. a search's pruning) reads it there.
    """

    state: Any
    step: int
    total_steps: int
    parallelism: parallel.Parallelism
    stop: BaseException | str | None = None
    evaluation: tuple[int, dict] | None = None

    def request_stop(self, reason: BaseException | str) -> None:
        """Ends the run after the current step's hooks; an exception wins over a message."""
        if not isinstance(self.stop, BaseException):
            self.stop = reason


class Hook:
    """Side work on a cadence: called after step s when s % every == 0, and at the last step.

    `every` 0: at the last step only. Subclasses override what they need: `start` (before the first step,
    e.g. an evaluation a pre-emption left undone), `__call__` (after a due step, with that step's device
    metrics) and `end` (after the last step, when the loop ends without an exception).
    """

    every: int = 1

    def due(self, run: Run, step: int) -> bool:
        return bool(self.every and step % self.every == 0) or step == run.total_steps

    def start(self, run: Run) -> None:
        pass

    def __call__(self, run: Run, step: int, metrics: dict) -> None:
        pass

    def end(self, run: Run) -> None:
        pass


class Every(Hook):
    """A function `fn(run, step, metrics)` as a hook called every `every` steps (and at the last); `end`,
    when given, is called with the run after the last step."""

    def __init__(self, every: int, fn: Callable[[Run, int, dict], None], end: Callable[[Run], None] = None):
        self.every, self.fn, self.on_end = every, fn, end

    def __call__(self, run, step, metrics):
        self.fn(run, step, metrics)

    def end(self, run):
        if self.on_end is not None:
            self.on_end(run)


class Evaluation(Hook):
    """`evaluate(step)` every `every` steps and at the last; at the start too when `redo` says that the
    start step's evaluation was interrupted (a pre-emption arrived during it, after its checkpoint)."""

    def __init__(self, every: int, evaluate: Callable[..., None], redo: bool = False):
        self.every, self.evaluate, self.redo = every, evaluate, redo

    def start(self, run):
        if self.redo:
            self.evaluate(run.step, saved=True)

    def __call__(self, run, step, metrics):
        self.evaluate(step)


class EarlyStopping(Hook):
    """Stops the run after a step at which `best` (an `early_stopping.BestMetric`) says so; `message(best,
    step)` is logged. At the start only when `redone`: an evaluation redone at the start may decide it."""

    def __init__(self, best, message: Callable[[Any, int], str], redone: bool = False):
        self.best, self.message, self.redone = best, message, redone

    def start(self, run):
        if self.redone and self.best.should_stop:
            run.request_stop(self.message(self.best, run.step))

    def __call__(self, run, step, metrics):
        if self.best.should_stop:
            run.request_stop(self.message(self.best, step))


class Preemption(Hook):
    """Stops the run with `Preempted` at the step where `guard` (a `preemption.PreemptionGuard`) says every
    process stops; the checkpoint hook, called after it, saves that step first."""

    def __init__(self, guard):
        self.guard = guard

    def __call__(self, run, step, metrics):
        if self.guard.should_stop(step):
            run.request_stop(Preempted(step, self.guard.signum))


class Checkpoint(Hook):
    """`save(step)` every `every` steps, at the last step and at a step where the run stops; at the end,
    the last step is saved unless it already is (`latest_step()`), then `wait()` for the saves in flight."""

    def __init__(self, every: int, save: Callable[[int], None], latest_step: Callable[[], int], wait):
        self.every, self.save, self.latest_step, self.wait = every, save, latest_step, wait

    def due(self, run, step):
        return super().due(run, step) or run.stop is not None

    def __call__(self, run, step, metrics):
        self.save(step)

    def end(self, run):
        if self.latest_step() != run.step:
            self.save(run.step)
        self.wait()


class RecordLoss(Hook):
    """Keeps the loss of every step as a float (reading it waits for the step, as the CPU loop does)."""

    def __init__(self):
        self.losses: list[float] = []

    def __call__(self, run, step, metrics):
        self.losses.append(float(run.parallelism.to_host(metrics["loss"])))


def run_steps(run: Run, train_step: Callable, batches: Iterable, hooks: Sequence[Hook], *, sync: bool) -> Run:
    """Steps from `run.step` to `run.total_steps` (or until a hook asks to stop), calling the hooks due.

    Args:
      run: the state and the step to start after; updated in place.
      train_step: `(placed state, device batch) -> (state, metrics)` (`Parallelism.train_step`).
      batches: device batches, one per step.
      hooks: called in this order after each step they are due at.
      sync: wait for each step's loss before the next (CPU: collectives deadlock when ~100 steps are in
        flight).

    Returns:
      `run`, after every hook's `end`.
    """
    batches = iter(batches)
    for hook in hooks:
        hook.start(run)
    while run.stop is None and run.step < run.total_steps:
        step = run.step + 1
        run.state, metrics = train_step(run.state, next(batches))
        if sync:
            metrics["loss"].block_until_ready()
        run.step = step
        for hook in hooks:
            if hook.due(run, step):
                hook(run, step, metrics)
        if isinstance(run.stop, BaseException):
            raise run.stop
    if run.stop is not None:
        logging.info("%s", run.stop)
    for hook in hooks:
        hook.end(run)
    return run


def fit(
    params,
    tx: optax.GradientTransformation,
    batches: Iterable[dict],
    total_steps: int,
    *,
    model,
    task,
    seed: int,
    hooks: Sequence[Hook] = (),
    parallelism: parallel.Parallelism | None = None,
    loss_terms: tuple = (),
    transform: Callable[[dict], dict] | None = None,
    **step_options,
) -> steps.TrainState:
    """Trains `params` for `total_steps` steps of `jaxft.training.steps.train_step` over every device.

    Args:
      params: host parameters (not modified: the step donates its own placed copy).
      tx: the optimizer (`jaxft.training.optim.create_optimizer`).
      batches: host batches of global rows, one per step ([rows, ...] arrays).
      total_steps: steps to run.
      model: the Flax module whose output the task's loss takes.
      task: the loss, a `jaxft.tasks.StepLoss` (a `Task`, or a hashable loss of the caller's own that
        subclasses `StepLoss` for its defaults: no inputs drawn, no extra model inputs).
      seed: the base key of the dropout masks.
      hooks: side work (e.g. `RecordLoss`).
      parallelism: how the step runs over devices (default: pmap over this process's devices).
      loss_terms: extra loss terms added inside the step (see `jaxft.training.steps.weighted_loss_sum`).
      transform: applied to each host batch before it is placed (e.g. adding replayed rows).
      **step_options: more static arguments of `jaxft.training.steps.train_step` (accum_steps, peft, ...).

    Returns:
      The final train state, on the host.
    """
    parallelism = parallelism or parallel.create("pmap")
    state = parallelism.place_state(steps.create_train_state(params, tx, seed))
    train_step = parallelism.train_step(
        steps.train_step, model=model, tx=tx, task=task, loss_terms=tuple(loss_terms), **step_options
    )
    if transform is not None:
        batches = map(transform, batches)
    run = run_steps(
        Run(state, 0, total_steps, parallelism),
        train_step,
        parallelism.device_batches(batches),
        hooks,
        sync=backend.sync_every_step(),
    )
    return parallelism.to_host(run.state)
