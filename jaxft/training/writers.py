"""Where training and evaluation metrics go: loggers behind one interface, a progress bar and a plot.

A `MetricWriter` hands every record to its `Logger`s: `JsonlLogger` and `TensorBoardLogger` here, MLflow and
Weights & Biases in `jaxft.training.trackers`, which builds the set `training.loggers` names. Each logger
takes the config once (`log_config`), the scalars of each step (`log_metrics`), the final metrics with the
run's reports and plots (`log_final`), and is closed once with how the run ended (`close`).

`metrics.jsonl` in the workdir is the record of a run: one JSON object per logging call, flushed at once, so
a killed run keeps everything it logged and a resumed run appends to the same file. TensorBoard event files
under `workdir/tensorboard` are a view of the same numbers; tensorboardX is imported only when a writer is
made, and where it is missing (as on some accelerator images) the run logs one warning and carries on. Both
leave the config and the final metrics to config.json and final_metrics.json.

Only the chief process writes: the others build their writers with `enabled=False`, which makes every method a
no-op and creates nothing on disk.

Example:
    >>> with MetricWriter(workdir) as writer:
    ...     writer.write_scalars(100, {"loss": 0.52, "learning_rate": 4e-5})
    ...     writer.write_eval(100, "dev", {"accuracy": 0.81, "loss": 0.47})
"""

import json
import logging
import math
import os
import time
from collections.abc import Sequence

import tqdm
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxft import files

_log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Keys every record carries; a metric with one of these names would silently replace them.
_RECORD_KEYS = frozenset({"kind", "step", "time", "split"})
_LEARNING_RATE_KEYS = ("learning_rate", "lr")
# Columns of an eval record that are not a quality metric to plot against step.
_NOT_EVAL_CURVES = _RECORD_KEYS | {"loss", "num_examples"}

_warned_no_tensorboardx = False


def _open_tensorboard(logdir: str):
    """Returns a tensorboardX SummaryWriter, or None (warning once per process) when it is not installed."""
    global _warned_no_tensorboardx
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        if not _warned_no_tensorboardx:
            _log.warning("tensorboardX is not installed; metrics go to %s only", METRICS_FILE)
            _warned_no_tensorboardx = True
        return None
    # The JSON-lines file is the durable record; TensorBoard may lag it by up to flush_secs.
    return SummaryWriter(logdir, flush_secs=30)


def _plain(value):
    """Turns NumPy and JAX scalars into Python numbers that json and TensorBoard accept."""
    if hasattr(value, "item") and not isinstance(value, str):
        return value.item()
    return value


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def metric_tag(kind: str, split: str | None, name: str) -> str:
    """A metric's name outside metrics.jsonl: `<kind>/<name>`, or `eval/<split>/<name>` for an evaluation.

    The split is part of the tag so that tasks with two dev sets (MNLI matched and mismatched) keep
    separate curves.
    """
    return f"{kind}/{split}/{name}" if split is not None else f"{kind}/{name}"


class Logger:
    """One destination of a run's metrics; a subclass overrides what it records (the rest are no-ops).

    The writer calls `log_config` once per process, after the run's files are written; `log_metrics` for
    every record; `log_final` once the final reports and curves.png are written; `close` last, with the
    exception that ended the run (None when it finished).
    """

    def log_config(self, config: dict, tags: dict[str, str]) -> None:
        """The run's config, flattened (dotted key -> JSON value), and its tags (task, model, strategy...)."""

    def log_metrics(self, step: int, kind: str, split: str | None, values: dict) -> None:
        """One record: plain Python numbers (and the odd string) by name; `split` is None but for kind
        "eval"."""

    def log_final(self, step: int, final: dict[str, dict], artifacts: Sequence[str]) -> None:
        """The final metrics by split (final_metrics.json's) and the report and plot files, relative to
        the workdir."""

    def flush(self) -> None:
        """Pushes what is buffered to its store."""

    def close(self, error: BaseException | None = None) -> None:
        """Ends the logger's run; a second call is harmless."""


class JsonlLogger(Logger):
    """Appends one JSON object per record to `workdir/metrics.jsonl`, flushed at once."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, METRICS_FILE)
        os.makedirs(workdir, exist_ok=True)
        # A run killed mid-write can leave a line without its newline; end it so appended records stay
        # one per line (read_metrics skips the broken one).
        needs_newline = False
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        self._file = open(self.path, "a", encoding="utf-8")
        if needs_newline:
            self._file.write("\n")

    def log_metrics(self, step, kind, split, values):
        if self._file is None:
            return
        extra = {"split": split} if split is not None else {}
        record = {"kind": kind, "step": step, "time": time.time(), **extra, **values}
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as error:  # a full disk: the run ends with one line naming the file
            raise files.storage_error(error, self.path, "writing metrics") from None

    def flush(self):
        if self._file is not None:
            self._file.flush()

    def close(self, error=None):
        if self._file is not None:
            self._file, file = None, self._file
            try:
                file.close()
            except OSError as os_error:  # what a full disk kept from the last write
                raise files.storage_error(os_error, self.path, "writing metrics") from None


class TensorBoardLogger(Logger):
    """Writes the numbers of every record as TensorBoard scalars (`metric_tag`) under
    `workdir/tensorboard`; nothing at all, after one warning, where tensorboardX is not installed."""

    def __init__(self, workdir: str):
        self.logdir = os.path.join(workdir, TENSORBOARD_DIR)
        self._writer = _open_tensorboard(self.logdir)

    def log_metrics(self, step, kind, split, values):
        if self._writer is not None:
            for name, value in values.items():
                if _is_number(value):
                    self._writer.add_scalar(metric_tag(kind, split, name), value, step)

    def flush(self):
        """tensorboardX writes from a background queue, so only `close` guarantees every event is on disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self, error=None):
        if self._writer is not None:
            self._writer, writer = None, self._writer
            try:
                writer.close()
            except OSError as os_error:
                raise files.storage_error(os_error, self.logdir, "writing TensorBoard events") from None


class MetricWriter:
    """Hands every record to its loggers: by default `metrics.jsonl` and, when available, TensorBoard.

    Args:
        workdir: the run's directory; created if missing.
        enabled: False on non-chief processes: nothing is written or created (no logger is made).
        tensorboard: with the default loggers, also write TensorBoard event files under
            `workdir/tensorboard`.
        loggers: the loggers instead of the default ones (`jaxft.training.trackers.create_loggers`); called
            in this order.
    """

    def __init__(
        self,
        workdir: str,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        loggers: Sequence[Logger] | None = None,
    ):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)  # where the "jsonl" logger writes
        self.loggers: list[Logger] = []
        if not enabled:
            return
        if loggers is None:
            loggers = [JsonlLogger(workdir)] + ([TensorBoardLogger(workdir)] if tensorboard else [])
        self.loggers = list(loggers)

    def _write(self, step: int, kind: str, split: str | None, scalars: dict) -> None:
        if not self.loggers:
            return
        clash = sorted(_RECORD_KEYS & set(scalars))
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the record itself")
        values = {name: _plain(value) for name, value in scalars.items()}
        for logger in self.loggers:
            logger.log_metrics(int(step), kind, split, values)

    def write_scalars(self, step: int, scalars: dict[str, float], *, kind: str = "train") -> None:
        """Logs one record `{"kind", "step", "time", **scalars}`; TensorBoard tags are `<kind>/<name>`.

        Args:
            step: the training step the values belong to.
            scalars: metric name to number (NumPy or JAX scalars are converted).
            kind: what the record is, e.g. "train".
        """
        self._write(step, kind, None, scalars)

    def write_eval(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Logs an evaluation as kind "eval" with its split; TensorBoard tags are `eval/<split>/<name>`.

        Args:
            step: the training step that was evaluated.
            split: the evaluated split, e.g. "dev".
            metrics: metric name to number, e.g. from `evaluate.summary_metrics`.
        """
        self._write(step, "eval", split, metrics)

    def log_config(self, config: dict, tags: dict[str, str]) -> None:
        """Gives every logger the flattened config and the run's tags (see `Logger.log_config`)."""
        for logger in self.loggers:
            logger.log_config(config, tags)

    def log_final(self, step: int, final: dict[str, dict], artifacts: Sequence[str]) -> None:
        """Gives every logger the final metrics and the report files (see `Logger.log_final`)."""
        for logger in self.loggers:
            logger.log_final(step, final, artifacts)

    def flush(self) -> None:
        """Pushes buffered records to disk (the JSON-lines file is flushed on every write)."""
        for logger in self.loggers:
            logger.flush()

    def close(self, error: BaseException | None = None) -> None:
        """Closes every logger, even when one fails (the first failure is raised once all are closed);
        later writes are ignored and a second close is harmless.

        Args:
            error: what ended the run, None when it finished: trackers record the run as failed or killed.
        """
        loggers, self.loggers = self.loggers, []
        failure = None
        for logger in reversed(loggers):  # the durable record, metrics.jsonl, last
            try:
                logger.close(error)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close(exc)


def _format_number(value) -> str:
    value = _plain(value)
    if not isinstance(value, float):
        return str(value)
    # Throughput reads best as a whole number; losses and learning rates need four significant digits.
    if math.isfinite(value) and abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.4g}"


class ProgressBar:
    """A tqdm bar over training steps that shows the latest metrics; a no-op when disabled.

    Args:
        total: the step the bar ends at.
        initial: the step it starts from (non-zero when resuming).
        enabled: False on non-chief processes or when output is not wanted.
        desc: label shown before the bar.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
        self._bar = None
        if enabled:
            self._bar = tqdm.tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, n: int, **postfix) -> None:
        """Advances by `n` steps and shows `postfix` compactly, e.g. `loss=0.1234, lr=5e-05, ex_per_s=123`."""
        if self._bar is None:
            return
        if postfix:
            text = ", ".join(f"{name}={_format_number(value)}" for name, value in postfix.items())
            self._bar.set_postfix_str(text, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        """Closes the bar; a second call is harmless."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def read_metrics(path: str) -> list[dict]:
    """Parses a `metrics.jsonl` file into its records, in file order.

    A line cut short when a run was killed mid-write is skipped with a warning.

    Args:
        path: the file, usually `<workdir>/metrics.jsonl`.

    Returns:
        One dict per record.
    """
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                _log.warning(
                    "%s:%d: skipping a line that is not JSON (a run killed mid-write?)", path, number
                )
    return records


def _latest_per_step(records: list[dict]) -> list[dict]:
    # A resumed run logs again the steps after its last checkpoint; the later record is the one that counts.
    latest = {(r.get("kind"), r.get("split"), r.get("step")): r for r in records}
    return sorted(latest.values(), key=lambda r: r["step"])


def plot_curves(metrics_path: str, out_path: str) -> None:
    """Plots a run's curves to a PNG: loss, learning rate and eval metrics against step.

    Panels with nothing to show (no learning rate logged, no eval rows yet) are left out.

    Args:
        metrics_path: a `metrics.jsonl` file.
        out_path: PNG path to write; its directory is created if missing.
    """
    records = _latest_per_step(read_metrics(metrics_path))
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    splits = list(dict.fromkeys(r["split"] for r in evals))

    def series(rows, key):
        points = [(r["step"], r[key]) for r in rows if _is_number(r.get(key))]
        return [p[0] for p in points], [p[1] for p in points]

    panels = []  # (title, [(label, steps, values, style)])
    loss_lines = [("train", *series(train, "loss"), "-")]
    for split in splits:
        loss_lines.append((f"{split} eval", *series([r for r in evals if r["split"] == split], "loss"), "o-"))
    panels.append(("loss", [line for line in loss_lines if line[1]]))
    lr_key = next((k for k in _LEARNING_RATE_KEYS if any(k in r for r in train)), None)
    if lr_key is not None:
        panels.append(("learning rate", [("learning rate", *series(train, lr_key), "-")]))
    eval_lines = []
    for split in splits:
        rows = [r for r in evals if r["split"] == split]
        names = dict.fromkeys(
            k for r in rows for k, v in r.items() if k not in _NOT_EVAL_CURVES and _is_number(v)
        )
        eval_lines += [(f"{split} {name}", *series(rows, name), "o-") for name in names]
    if eval_lines:
        panels.append(("eval metrics", eval_lines))
    panels = [panel for panel in panels if panel[1]]

    fig = Figure(figsize=(8, 2.8 * max(len(panels), 1)), layout="constrained")
    FigureCanvasAgg(fig)
    if not panels:
        fig.text(0.5, 0.5, f"no metrics in {metrics_path}", ha="center", va="center")
    for index, (title, lines) in enumerate(panels, start=1):
        ax = fig.add_subplot(len(panels), 1, index)
        for label, steps, values, style in lines:
            ax.plot(steps, values, style, label=label, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, format="png", dpi=100)
