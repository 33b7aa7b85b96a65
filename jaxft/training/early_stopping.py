"""Tracking the best evaluation and deciding when to stop early: a small piece of host state, saved in
every checkpoint's meta so that a resumed run keeps counting where it left off."""

import dataclasses


@dataclasses.dataclass
class BestMetric:
    """The best value of one metric so far, and how many evaluations since it improved.

    Attributes:
      mode: "max" or "min".
      min_delta: a change smaller than this is not an improvement.
      patience: stop after this many evaluations without improvement; 0 never stops.
    """

    mode: str = "max"
    min_delta: float = 0.0
    patience: int = 0
    best: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0

    def update(self, value: float, step: int) -> bool:
        """Records an evaluation; returns True when it is the new best."""
        if self.best is None:
            improved = True
        elif self.mode == "max":
            improved = value > self.best + self.min_delta
        else:
            improved = value < self.best - self.min_delta
        if improved:
            self.best, self.best_step, self.evals_without_improvement = float(value), int(step), 0
        else:
            self.evals_without_improvement += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.evals_without_improvement >= self.patience

    def to_dict(self) -> dict:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "evals_without_improvement": self.evals_without_improvement,
        }

    def load(self, saved: dict) -> None:
        """Restores the counters from `to_dict` output (the config keeps mode, delta and patience)."""
        self.best, self.best_step = saved["best"], saved["best_step"]
        self.evals_without_improvement = saved["evals_without_improvement"]
