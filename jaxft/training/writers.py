"""Where training and evaluation metrics go: a JSON-lines file, TensorBoard, a progress bar and a plot.

`metrics.jsonl` in the workdir is the record of a run: one JSON object per logging call, flushed at once, so
a killed run keeps everything it logged and a resumed run appends to the same file. TensorBoard event files
under `workdir/tensorboard` are a view of the same numbers; tensorboardX is imported only when a writer is
made, and where it is missing (as on some accelerator images) the run logs one warning and carries on.

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


class MetricWriter:
    """Appends metrics to `workdir/metrics.jsonl` and, when available, TensorBoard event files.

    Args:
        workdir: the run's directory; created if missing.
        enabled: False on non-chief processes: nothing is written or created.
        tensorboard: also write TensorBoard event files under `workdir/tensorboard`.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._file = None
        self._tensorboard = None
        if not enabled:
            return
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
        if tensorboard:
            self._tensorboard = _open_tensorboard(os.path.join(workdir, TENSORBOARD_DIR))

    def _write(self, step: int, kind: str, tag_prefix: str, scalars: dict, extra: dict) -> None:
        if self._file is None:
            return
        clash = sorted(_RECORD_KEYS & set(scalars))
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the record itself")
        step = int(step)
        values = {name: _plain(value) for name, value in scalars.items()}
        record = {"kind": kind, "step": step, "time": time.time(), **extra, **values}
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as error:  # a full disk: the run ends with one line naming the file
            raise files.storage_error(error, self.path, "writing metrics") from None
        if self._tensorboard is not None:
            for name, value in values.items():
                if _is_number(value):
                    self._tensorboard.add_scalar(f"{tag_prefix}/{name}", value, step)

    def write_scalars(self, step: int, scalars: dict[str, float], *, kind: str = "train") -> None:
        """Logs one record `{"kind", "step", "time", **scalars}`; TensorBoard tags are `<kind>/<name>`.

        Args:
            step: the training step the values belong to.
            scalars: metric name to number (NumPy or JAX scalars are converted).
            kind: what the record is, e.g. "train".
        """
        self._write(step, kind, kind, scalars, {})

    def write_eval(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Logs an evaluation as kind "eval" with its split; TensorBoard tags are `eval/<split>/<name>`.

        The split is part of the tag so that tasks with two dev sets (MNLI matched and mismatched) keep
        separate curves.

        Args:
            step: the training step that was evaluated.
            split: the evaluated split, e.g. "dev".
            metrics: metric name to number, e.g. from `evaluate.summary_metrics`.
        """
        self._write(step, "eval", f"eval/{split}", metrics, {"split": split})

    def flush(self) -> None:
        """Pushes buffered TensorBoard events to disk (the JSON-lines file is flushed on every write).

        tensorboardX writes from a background queue, so only `close` guarantees every event is on disk.
        """
        if self._file is not None:
            self._file.flush()
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        """Flushes and closes both outputs; later writes are ignored and a second close is harmless."""
        try:
            if self._tensorboard is not None:
                self._tensorboard, tensorboard = None, self._tensorboard
                try:
                    tensorboard.close()
                except OSError as error:
                    where = os.path.join(os.path.dirname(self.path), TENSORBOARD_DIR)
                    raise files.storage_error(error, where, "writing TensorBoard events") from None
        finally:
            if self._file is not None:
                self._file, file = None, self._file
                try:
                    file.close()
                except OSError as error:  # what a full disk kept from the last write
                    raise files.storage_error(error, self.path, "writing metrics") from None

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


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
