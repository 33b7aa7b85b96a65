"""The tables and the plot of a search (`jaxft.compare --search`): one row per trial, and the best trial.

`trial_rows` reads the trials' records (WORKDIR/cells/trial*/cell.json, with the trial's values and state as
`jaxft.search.settle` wrote them) in index order: state ("complete", "pruned", "fail" for a run without a
finite metric, "failed" for a cell that failed, "running" for a trial asked but not ended), the values, the
decisive metric of the final evaluation, the best of the complete trials so far, and what the cell measured.
The best trial is the complete one with the best metric (the lowest index among equals). `write_all` writes
WORKDIR/results.csv (every row), results.md (the best trial, its values and the command that trains it as
a run of its own, then every trial) and search_curve.png (each trial's metric and the best so far against
the trial index).
"""

import csv
import io
import os
import shlex

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxft import cli, compare_results, compare_runner, files

SEARCH_PNG = "search_curve.png"
_MEASURED = (
    "pruned_at_step",
    "trainable_params",
    "total_params",
    "wall_time_s",
    "peak_host_memory_gib",
    "peak_device_memory_gib",
)


def trial_rows(records: list[dict], keys: tuple[str, ...], mode: str) -> list[dict]:
    """One row per trial record, in index order (see the module docstring); `mode` "max" or "min"."""
    rows, best = [], None
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    for record in sorted(records, key=lambda r: r["index"]):
        state = record.get("trial_state", "running") if record["status"] == "done" else "failed"
        value = record["metric_value"]
        if state == "complete" and value is not None and (best is None or better(value, best)):
            best = value
        params = record.get("params") or record.get("grid") or {}
        rows.append(
            {
                "trial": record["index"],
                "cell": record["cell"],
                "state": state,
                **{key: params.get(key) for key in keys},
                "metric": record["metric"],
                "value": value,
                "best_so_far": best,
                "best": False,
                **{key: record.get(key) for key in _MEASURED},
            }
        )
    winners = [r for r in rows if r["state"] == "complete" and r["value"] is not None and r["value"] == best]
    if winners:
        winners[0]["best"] = True
    return rows


def best_row(rows: list[dict]) -> dict | None:
    return next((row for row in rows if row["best"]), None)


def to_csv(rows: list[dict], keys: tuple[str, ...]) -> str:
    """The rows as CSV; None as an empty field."""
    columns = ["trial", "cell", "state", *keys, "metric", "value", "best_so_far", "best", *_MEASURED]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row[key] is None else row[key] for key in columns})
    return out.getvalue()


def best_run_command(search, row: dict, workdir: str) -> str:
    """The `jaxft.main` command that trains the trial of `row` as a run of its own, in WORKDIR/best."""
    cell = search.plan.cells[row["trial"]]
    point = tuple((d.key, row[d.key]) for d in search.space)
    alone = compare_runner.Cell(0, cell.strategy, point, cell.seed, cell.overrides)
    command = ["python", "-m", "jaxft.main", f"--config={cli.config_name(search.plan.config_path)}"]
    command += [f"--workdir={os.path.join(workdir, 'best')}", *search.plan.config_args, *alone.config_args()]
    return shlex.join(command)


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def to_markdown(search, rows: list[dict], command: str, workdir: str, failures=()) -> str:
    """The search as markdown: the command, the best trial and how to train it alone, every trial."""
    keys = tuple(d.key for d in search.space)
    metric = search.metric or "metric"
    mode = "highest" if search.direction == "maximize" else "lowest"
    counts = {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "failed")}
    waiting = len(search.plan.cells) - len(rows)
    lines = [
        "# Search",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Optuna TPE over {len(search.plan.cells)} trials (seed {search.seed}, pruner {search.pruner}); "
        f"{metric}, {mode} is best. {counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['failed']} failed, {waiting + sum(r['state'] in ('running', 'fail') for r in rows)} "
        "without a score.",
        "",
    ]
    best = best_row(rows)
    if best is not None:
        values = ", ".join(f"`{key}={best[key]}`" for key in keys)
        lines += [
            f"**Best trial: {best['trial']}** ({best['cell']}), {metric} = {best['value']:.4f}, "
            f"with {values}. Trained as a run of its own:",
            "",
            "```bash",
            best_run_command(search, best, workdir),
            "```",
            "",
        ]
    header = ["trial", "state", *keys, metric, "best so far", "pruned at step", "trainable params"]
    header += ["wall time (s)", "peak host mem (GiB)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"**{row['trial']}**" if row["best"] else str(row["trial"]), row["state"]]
        cells += [str(row[key]) for key in keys]
        cells += [
            _fmt(row["value"], ".4f"),
            _fmt(row["best_so_far"], ".4f"),
            _fmt(row["pruned_at_step"], "d"),
        ]
        cells += [_fmt(row["trainable_params"], ",d"), _fmt(row["wall_time_s"], ".1f")]
        cells += [_fmt(row["peak_host_memory_gib"], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    if failures:
        lines += ["", "Failed trials (rerun the command to retry them with the same values):", ""]
        lines += [f"- `{name}`: {error}" for name, error in failures]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], metric: str, out_path: str) -> None:
    """Writes the search curve: each trial's metric (complete: dots; pruned: crosses) and the best of the
    complete trials so far, against the trial index."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for state, style in (("complete", "o"), ("pruned", "x")):
        chosen = [r for r in rows if r["state"] == state and r["value"] is not None]
        ax.plot([r["trial"] for r in chosen], [r["value"] for r in chosen], style, label=state)
    so_far = [r for r in rows if r["best_so_far"] is not None]
    ax.plot([r["trial"] for r in so_far], [r["best_so_far"] for r in so_far], "-", drawstyle="steps-post")
    ax.lines[-1].set_label("best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"search: {metric} per trial")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(out_path, format="png", dpi=100)


def write_all(search, workdir: str, command: str) -> dict | None:
    """Writes results.csv, results.md and search_curve.png into `workdir` from the trials' records.

    Returns:
      The best trial's row, None while no trial is complete.
    """
    records = compare_runner.read_records(search.plan, workdir)
    keys = tuple(d.key for d in search.space)
    mode = "max" if search.direction == "maximize" else "min"
    rows = trial_rows(records, keys, mode)
    failures = [(r["cell"], r.get("error", "")) for r in records if r["status"] != "done"]
    os.makedirs(workdir, exist_ok=True)
    files.write_atomic(os.path.join(workdir, compare_results.RESULTS_CSV), to_csv(rows, keys))
    markdown = to_markdown(search, rows, command, workdir, failures)
    files.write_atomic(os.path.join(workdir, compare_results.RESULTS_MD), markdown)
    tmp = os.path.join(workdir, SEARCH_PNG + ".tmp")
    plot(rows, search.metric or "metric", tmp)
    os.replace(tmp, os.path.join(workdir, SEARCH_PNG))
    best = best_row(rows)
    return {"index": best["trial"], "metric": search.metric, "metric_value": best["value"]} if best else None
