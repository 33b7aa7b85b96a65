"""Running the cells of a comparison (`jaxft.compare`), each in its own process, and their records.

A cell is trained by `python -m jaxft.main` in WORKDIR/cells/<cell name>/, with its output in compare.log
there. Its own process means that a crash ends only that cell and that its peak memory (the child's
`ru_maxrss`, from `os.wait4`) is its own — with a floor: Linux also counts the comparing process's resident
set at the child's exec (a few hundred MiB for `jaxft.compare`). A cell is done when its final_metrics.json
exists and is not run again; an unfinished one is started again and the trainer resumes it from its
checkpoints. After each run the cell's record (cell.json) holds what `cell_record` lists; the wall time is
that of the last attempt. SIGTERM is passed on to the running cell (which saves a checkpoint and exits)
and no further cell starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from jaxft import compare_results, files

CELLS_DIR = "cells"
CELL_RECORD = "cell.json"
CELL_LOG = "compare.log"
FINAL_METRICS = "final_metrics.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")  # anything else in a cell name becomes "_"
_MAX_NAME = 200  # longer cell names end in a hash instead (most filesystems allow 255 bytes)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of the comparison: a strategy at one grid point with one seed.

    Attributes:
      index: position in the expansion order (strategy, then grid point, then seed); `--cell` takes it.
      strategy: the strategy name as given, e.g. "lora+fgm".
      grid_point: (config key, value text as given on the command line) per --grid flag, in flag order.
      seed: the value of config key `seed`.
      overrides: the strategy's config overrides (Python values).
      metric: the eval metric that decides (the cell config's `training.best_metric`, "auto" resolved).
      best_mode: "max" or "min": which way `metric` is better.
      label: the directory name instead of the one made of strategy, grid point and seed (a search's
        trials are named by their index: their values are asked only when they run).
      trainer_args: more arguments for the trainer command, before --config (a search trial's study).
    """

    index: int
    strategy: str
    grid_point: tuple[tuple[str, str], ...]
    seed: int
    overrides: dict
    metric: str | None = None
    best_mode: str = "max"
    label: str | None = None
    trainer_args: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The cell's directory name: <strategy>__<key=value,...>__seed<k>, filesystem-safe (or `label`)."""
        return self.label or cell_name(self.strategy, self.grid_point, self.seed)

    def config_args(self) -> list[str]:
        """The --config.KEY=VALUE arguments that make this cell (seed, strategy overrides, grid point)."""
        args = [f"--config.seed={self.seed}"]
        args += [f"--config.{key}={flag_text(value)}" for key, value in self.overrides.items()]
        return args + [f"--config.{key}={value}" for key, value in self.grid_point]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a comparison runs, checked: the config file, the options passed on, the cells.

    `trainer` is the command that trains one cell, given --config, --workdir and --config.KEY=VALUE as
    `jaxft.main` takes them (tests put a stand-in there).
    """

    config_path: str
    config_args: tuple[str, ...]
    grid_keys: tuple[str, ...]
    cells: tuple[Cell, ...]
    trainer: tuple[str, ...] = (sys.executable, "-m", "jaxft.main")


def cell_name(strategy: str, grid_point: Sequence[tuple[str, str]], seed: int) -> str:
    """<strategy>__<key=value,...>__seed<k> (no middle part without --grid), unsafe characters as "_"."""
    parts = [strategy, ",".join(f"{key}={value}" for key, value in grid_point), f"seed{seed}"]
    name = _UNSAFE.sub("_", "__".join(part for part in parts if part))
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"{name[: _MAX_NAME - 13]}-{digest}"
    return name


def split_top_level(text: str) -> list[str]:
    """Splits on commas outside brackets and quotes, so a tuple value keeps its commas."""
    items, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [*items, text[start:]]


def flag_text(value) -> str:
    """A Python value as the text of --config.KEY=TEXT that ml_collections parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | tuple):
        return repr(value)
    raise TypeError(f"no command-line form for {value!r}")


def cell_dir(workdir: str, cell: Cell) -> str:
    return os.path.join(os.path.abspath(workdir), CELLS_DIR, cell.name)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f, parse_constant=lambda _: None)  # NaN (a constant prediction's correlation)
    except (OSError, ValueError):
        return None


def _error_line(log_path: str, exit_status: int) -> str:
    """The child's own error line ("error: ..."), else the last line it printed, with its exit status."""
    try:
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        lines = []
    errors = [line for line in lines if line.startswith("error: ")]
    last = errors[-1] if errors else (lines[-1] if lines else "no output")
    if exit_status < 0:
        return f"killed by {signal.Signals(-exit_status).name} (out of memory?); last output: {last}"
    return f"exit status {exit_status}: {last}"


def metric_split(final: dict | None) -> str:
    """The split a cell's metric comes from: its final eval report, else its test report."""
    return "eval" if (final or {}).get("eval") else "test"


def cell_record(cell: Cell, directory: str, command: list[str], run: dict) -> dict:
    """A cell's record (cell.json) from its final_metrics.json, if any, and what was measured around it."""
    final = _read_json(os.path.join(directory, FINAL_METRICS))
    final_split = (final or {}).get(metric_split(final)) or {}
    value = final_split.get(cell.metric) if cell.metric else None
    device_peak = final.get("device_peak_bytes") if final else None
    return {
        "cell": cell.name,
        "index": cell.index,
        "strategy": cell.strategy,
        "grid": dict(cell.grid_point),
        "seed": cell.seed,
        "overrides": {**cell.overrides, **dict(cell.grid_point)},
        "status": "done" if final is not None else "failed",
        "metric": cell.metric,
        "metric_value": value if compare_results.is_number(value) else None,
        "final_metrics": final,
        "trainable_params": final.get("trainable_params") if final else None,
        "total_params": final.get("total_params") if final else None,
        "peak_device_memory_gib": device_peak / 2**30 if device_peak is not None else None,
        "command": shlex.join(command),
        **run,
    }


def _peak_rss_gib(usage) -> float:
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    return usage.ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20)


class _ForwardSigterm:
    """While a cell runs, SIGTERM goes on to it (it saves a checkpoint and exits); no cell starts after."""

    def __init__(self):
        self.child, self.received = None, False

    def __enter__(self):
        # Python lets only the main thread install handlers; elsewhere SIGTERM keeps its default.
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = True
        if self.child is not None:
            self.child.send_signal(signum)

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)


def run_cell(plan: Plan, cell: Cell, workdir: str, sigterm: _ForwardSigterm | None = None):
    """Trains one cell in its own process unless it is done; writes and returns its record.

    Returns:
      (record, ran): `ran` is False for a cell that had finished before (its record is read, not rerun).
    """
    directory = cell_dir(workdir, cell)
    command = [
        *plan.trainer, *cell.trainer_args, f"--config={plan.config_path}", f"--workdir={directory}",
        *plan.config_args, *cell.config_args(),
    ]  # fmt: skip
    if os.path.exists(os.path.join(directory, FINAL_METRICS)):
        record = _read_json(os.path.join(directory, CELL_RECORD))
        if record is None or record.get("status") != "done":  # finished, but compare did not see it end
            unmeasured = {"wall_time_s": None, "peak_host_memory_gib": None}
            record = cell_record(cell, directory, command, unmeasured)
            files.write_json_atomic(os.path.join(directory, CELL_RECORD), record, allow_nan=False)
        return record, False
    os.makedirs(directory, exist_ok=True)
    log_path = os.path.join(directory, CELL_LOG)
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        start = time.monotonic()
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        if sigterm is not None:
            sigterm.child = child
        _, status, usage = os.wait4(child.pid, 0)  # rusage of this child alone: its own peak memory
        child.returncode = os.waitstatus_to_exitcode(status)
        if sigterm is not None:
            sigterm.child = None
    measured = {"wall_time_s": time.monotonic() - start, "peak_host_memory_gib": _peak_rss_gib(usage)}
    record = cell_record(cell, directory, command, measured)
    record["exit_status"] = child.returncode
    if record["status"] == "failed" or child.returncode != 0:
        record["status"] = "failed"
        record["error"] = _error_line(log_path, child.returncode)
    files.write_json_atomic(os.path.join(directory, CELL_RECORD), record, allow_nan=False)
    return record, True


def _describe(record: dict, ran: bool) -> str:
    if not ran:
        return "done before"
    if record["status"] != "done":
        return f"FAILED: {record['error']}"
    value = record["metric_value"]
    shown = f"{record['metric']}={value:.4f}" if value is not None else f"{record['metric']}=n/a"
    memory = record["peak_host_memory_gib"]
    return f"{shown} in {record['wall_time_s']:.1f} s, peak host memory {memory:.2f} GiB"


def run_cells(
    plan: Plan,
    workdir: str,
    cells: Iterable[Cell] | None = None,
    after: Callable[[Cell, dict], dict] | None = None,
) -> list[tuple[dict, bool]]:
    """Runs the cells one after another (each in its own process); a failed cell does not stop the rest.

    Args:
      plan: the comparison.
      workdir: its directory.
      cells: the cells to run (default: all the plan's), taken one at a time: a search makes each when the
        one before has ended.
      after: called with each cell and its record once it has ended (or was found done); returns the
        record to keep (a search tells its study here).

    Returns:
      (record, ran) per cell run or found done; a SIGTERM stops before the next cell.
    """
    cells = plan.cells if cells is None else cells
    results = []
    with _ForwardSigterm() as sigterm:
        for cell in cells:
            print(f"[{cell.index + 1}/{len(plan.cells)}] {cell.name} ...", flush=True)
            record, ran = run_cell(plan, cell, workdir, sigterm)
            if after is not None:
                record = after(cell, record)
            print(f"[{cell.index + 1}/{len(plan.cells)}] {cell.name}: {_describe(record, ran)}", flush=True)
            results.append((record, ran))
            if sigterm.received:
                print("SIGTERM: stopping; run the same command again to go on", flush=True)
                break
    return results


def read_records(plan: Plan, workdir: str) -> list[dict]:
    """The cell.json of every cell of the plan that has one (done or failed), in cell order."""
    records = (_read_json(os.path.join(cell_dir(workdir, cell), CELL_RECORD)) for cell in plan.cells)
    return [record for record in records if record is not None]


def final_examples(workdir: str, record: dict) -> dict | None:
    """The per-example arrays of a done cell's final report on the split its metric came from, if any."""
    from jaxft import evaluate  # scikit-learn: seconds that --help and --list need not wait

    directory = os.path.join(workdir, "cells", record["cell"], "eval")
    return evaluate.read_examples(evaluate.examples_path(directory, metric_split(record["final_metrics"])))


def write_results(plan: Plan, workdir: str, command: str, baseline: str | None = None) -> list[dict]:
    """Writes WORKDIR/results.csv, results.md and results.png from the cells' records; returns the rows.

    `baseline`: the strategy every other one is compared with (`compare_results.aggregate`); None: none.
    """
    records = read_records(plan, workdir)
    rows = compare_results.aggregate(
        records, plan.grid_keys, baseline, lambda record: final_examples(workdir, record)
    )
    mode = plan.cells[0].best_mode if plan.cells else "max"
    failures = [(r["cell"], r.get("error", "")) for r in records if r["status"] != "done"]
    compare_results.write_all(workdir, rows, plan.grid_keys, command, mode, failures)
    return rows
