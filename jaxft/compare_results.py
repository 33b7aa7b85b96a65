"""The tables and plot of a comparison (`jaxft.compare`): one row per strategy and grid point.

`aggregate` reduces the cells' records (WORKDIR/cells/*/cell.json) over seeds: the mean and the sample
standard deviation (ddof=1; none for a single seed) of the task metric over the cells that finished with a
finite value, their trainable parameters, mean wall time and the largest peak memory; and, for every
strategy against the baseline's row at the same grid point, the difference in mean metric with its paired
bootstrap interval over the seeds and the evaluation examples (`jaxft.bootstrap`). `write_all` writes
WORKDIR/results.csv (every number in full), results.md (sorted by the metric, best first, under the command
that made it, the test named below it) and results.png (metric ± std per strategy, grouped by grid point;
metric against trainable parameters on a log axis; each difference from the baseline with its interval).
Failed cells are counted in `n_failed` and otherwise left out.
"""

import csv
import io
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxft import bootstrap, files

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
_SUMMARY_COLUMNS = (
    "metric",
    "metric_mean",
    "metric_std",
    "n_seeds",
    "n_failed",
    "trainable_params",
    "total_params",
    "trainable_fraction",
    "wall_time_s_mean",
    "peak_host_memory_gib_max",
    "peak_device_memory_gib_max",
    "baseline",
    "difference",
    "difference_low",
    "difference_high",
    "difference_holds",
    "difference_resampled",
)
_DIFFERENCE_KEYS = _SUMMARY_COLUMNS[-6:]


def _max_or_none(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def aggregate(
    records: list[dict],
    grid_keys: tuple[str, ...],
    baseline: str | None = None,
    examples: Callable[[dict], dict | None] = lambda record: None,
) -> list[dict]:
    """One row per (strategy, grid point), in the order the cells were listed.

    Args:
      records: cell records as `jaxft.compare.cell_record` writes them.
      grid_keys: the --grid keys, in flag order (one column each).
      baseline: the strategy every other one is compared with, at the same grid point (None: no comparison).
      examples: a done cell's record -> its final report's per-example arrays
        (`jaxft.evaluate.read_examples`), or None where it has none: then only the seeds are resampled.

    Returns:
      Rows with "strategy", one entry per grid key (the value text), "grid" ("k=v,..."), and the
      `_SUMMARY_COLUMNS`; a number that nothing measured is None. The difference columns: the baseline's
      name, the row's mean metric minus the baseline's over the seeds both finished, its interval
      (`jaxft.bootstrap.paired_difference`), whether that excludes 0, and what was resampled; None on the
      baseline's own rows and where nothing can be paired.
    """
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        point = tuple(record["grid"].get(key) for key in grid_keys)
        groups.setdefault((record["strategy"], point), []).append(record)
    rows = []
    for (strategy, point), group in groups.items():
        done = [r for r in group if r["status"] == "done"]
        values = np.array([r["metric_value"] for r in done if r["metric_value"] is not None], np.float64)
        trainable = next((r["trainable_params"] for r in done if r["trainable_params"] is not None), None)
        total = next((r["total_params"] for r in done if r["total_params"] is not None), None)
        walls = [r["wall_time_s"] for r in done if r["wall_time_s"] is not None]
        rows.append(
            {
                "strategy": strategy,
                **dict(zip(grid_keys, point, strict=True)),
                "grid": ",".join(f"{k}={v}" for k, v in zip(grid_keys, point, strict=True)),
                "metric": next((r["metric"] for r in group if r["metric"]), None),
                "metric_mean": float(values.mean()) if values.size else None,
                "metric_std": float(values.std(ddof=1)) if values.size > 1 else None,
                "n_seeds": int(values.size),
                "n_failed": len(group) - len(done),
                "trainable_params": trainable,
                "total_params": total,
                "trainable_fraction": trainable / total if trainable is not None and total else None,
                "wall_time_s_mean": float(np.mean(walls)) if walls else None,
                "peak_host_memory_gib_max": _max_or_none(r["peak_host_memory_gib"] for r in done),
                "peak_device_memory_gib_max": _max_or_none(r["peak_device_memory_gib"] for r in done),
                **dict.fromkeys(_DIFFERENCE_KEYS),
            }
        )
    if baseline is not None:
        _add_differences(rows, groups, baseline, examples)
    return rows


def _evidence(group: list[dict], examples) -> dict[int, bootstrap.Evidence]:
    """The done cells with a finite metric, by seed."""
    done = [r for r in group if r["status"] == "done" and r["metric_value"] is not None]
    return {r["seed"]: bootstrap.Evidence(r["metric_value"], examples(r)) for r in done}


def _add_differences(rows: list[dict], groups: dict, baseline: str, examples) -> None:
    """Fills each row's difference columns against the baseline strategy's row at its grid point."""
    loaded = {}  # each cell's arrays once, though the baseline's are paired with every strategy

    def cached(record):
        if record["cell"] not in loaded:
            loaded[record["cell"]] = examples(record)
        return loaded[record["cell"]]

    for row, ((strategy, point), group) in zip(rows, groups.items(), strict=True):
        reference = groups.get((baseline, point))
        if strategy == baseline or reference is None or row["metric"] is None:
            continue
        row["baseline"] = baseline
        found = bootstrap.paired_difference(
            _evidence(group, cached), _evidence(reference, cached), row["metric"]
        )
        if found is not None:
            row["difference"], row["difference_low"], row["difference_high"] = (
                found.difference, found.low, found.high,
            )  # fmt: skip
            row["difference_holds"], row["difference_resampled"] = found.holds, found.resampled


def sorted_rows(rows: list[dict], mode: str) -> list[dict]:
    """Best metric first ("max": highest; "min": lowest); rows without a value last, in their order."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (r["metric_mean"] is None, sign * (r["metric_mean"] or 0.0)))


def to_csv(rows: list[dict], grid_keys: tuple[str, ...]) -> str:
    """The rows as CSV: strategy, the grid keys, grid, then the summary columns; None as an empty field."""
    out = io.StringIO()
    columns = ["strategy", *grid_keys, "grid", *_SUMMARY_COLUMNS]
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row[key] is None else row[key] for key in columns})
    return out.getvalue()


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def to_markdown(
    rows: list[dict], grid_keys: tuple[str, ...], command: str, mode: str, failures: Sequence = ()
) -> str:
    """The rows as a markdown table sorted by the metric (best first), with the command on top and the
    failed cells, (name, error line) pairs, below."""
    metric = next((r["metric"] for r in rows if r["metric"]), "metric")
    baseline = next((r["baseline"] for r in rows if r["baseline"]), None)
    compared = [f"Δ vs {baseline} [{bootstrap.LEVEL:.0%} CI]", "holds"] if baseline else []
    header = ["strategy", *grid_keys, f"{metric} (mean ± std)", *compared, "seeds", "failed"]
    header += ["trainable params"]
    header += ["trainable %", "wall time (s)", "peak host mem (GiB)", "peak device mem (GiB)"]
    lines = [
        "# Comparison",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Sorted by {metric}, {'highest' if mode == 'max' else 'lowest'} first; std over seeds with ddof=1.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in sorted_rows(rows, mode):
        score = _fmt(row["metric_mean"], ".4f")
        if row["metric_std"] is not None:
            score += f" ± {row['metric_std']:.4f}"
        fraction = row["trainable_fraction"]
        cells = [row["strategy"], *(str(row[key]) for key in grid_keys), score]
        cells += _difference_cells(row, baseline) if baseline else []
        cells += [str(row["n_seeds"])]
        cells += [str(row["n_failed"]), _fmt(row["trainable_params"], ",d")]
        cells += [_fmt(None if fraction is None else 100 * fraction, ".3g")]
        cells += [_fmt(row[key], ".1f" if key.startswith("wall") else ".2f") for key in _MEASURED_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    if baseline:
        lines += ["", _difference_note(metric, baseline)]
    if failures:
        lines += ["", "Failed cells (rerun the command to retry them):", ""]
        lines += [f"- `{name}`: {error}" for name, error in failures]
    return "\n".join(lines) + "\n"


_MEASURED_COLUMNS = ("wall_time_s_mean", "peak_host_memory_gib_max", "peak_device_memory_gib_max")


def _difference_cells(row: dict, baseline: str) -> list[str]:
    if row["strategy"] == baseline:
        return ["(baseline)", "–"]
    if row["difference"] is None:
        return ["–", "–"]
    interval = f"{row['difference']:+.4f} [{row['difference_low']:+.4f}, {row['difference_high']:+.4f}]"
    holds = "yes" if row["difference_holds"] else "no"
    return [interval, holds + (" (seeds only)" if row["difference_resampled"] == "seeds" else "")]


def _difference_note(metric: str, baseline: str) -> str:
    return (
        f"Δ: the row's mean {metric} minus {baseline}'s at the same grid point, over the seeds both "
        f"finished. Test: paired bootstrap, {bootstrap.RESAMPLES:,} replicates, each drawing the paired "
        "seeds and then the evaluation examples with replacement (one draw for both rows, from the "
        "predictions each cell's final report wrote; the seeds only where a cell has none); the interval is "
        f"the replicates' {bootstrap.LEVEL:.0%} percentile interval, and the difference holds when it "
        "excludes 0. Few seeds make the seed level coarse: the interval is then narrower than the seeds' "
        "true spread."
    )


def plot(rows: list[dict], grid_keys: tuple[str, ...], out_path: str) -> None:
    """Writes the PNG: metric mean ± std per strategy (one marker per grid point), metric against
    trainable parameters (log x; a note instead where no run recorded them) and, where rows were compared
    with a baseline, each difference with its interval."""
    metric = next((r["metric"] for r in rows if r["metric"]), "metric")
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    points = list(dict.fromkeys(r["grid"] for r in rows))
    compared = [r for r in rows if r["difference"] is not None]
    panels = 3 if compared else 2
    fig = Figure(figsize=(max(8.0, 1.2 * len(strategies) + 6) * panels / 2, 4), layout="constrained")
    FigureCanvasAgg(fig)
    by_strategy, by_params = fig.add_subplot(1, panels, 1), fig.add_subplot(1, panels, 2)
    if compared:
        _plot_differences(fig.add_subplot(1, 3, 3), compared, points, metric)
    width = 0.8 / max(len(points), 1)
    for j, point in enumerate(points):
        chosen = [r for r in rows if r["grid"] == point and r["metric_mean"] is not None]
        xs = [strategies.index(r["strategy"]) + (j - (len(points) - 1) / 2) * width for r in chosen]
        means = [r["metric_mean"] for r in chosen]
        stds = [r["metric_std"] or 0.0 for r in chosen]
        by_strategy.errorbar(xs, means, yerr=stds, fmt="o", capsize=3, label=point or None)
        with_params = [r for r in chosen if r["trainable_params"]]
        if with_params:
            by_params.errorbar(
                [r["trainable_params"] for r in with_params],
                [r["metric_mean"] for r in with_params],
                yerr=[r["metric_std"] or 0.0 for r in with_params],
                fmt="o",
                capsize=3,
                label=point or None,
            )
            for r in with_params:
                by_params.annotate(r["strategy"], (r["trainable_params"], r["metric_mean"]), fontsize="small")
    by_strategy.set_xticks(range(len(strategies)), strategies, rotation=30, ha="right")
    by_strategy.set_ylabel(f"{metric} (mean ± std over seeds)")
    by_strategy.set_title(f"{metric} per strategy")
    if any(r["trainable_params"] and r["metric_mean"] is not None for r in rows):
        by_params.set_xscale("log")
        by_params.set_xlabel("trainable parameters")
        by_params.set_ylabel(metric)
    else:
        by_params.text(0.5, 0.5, "no trainable_params recorded", ha="center", va="center")
    by_params.set_title(f"{metric} vs trainable parameters")
    for ax in (by_strategy, by_params):
        ax.grid(True, alpha=0.3)
        if len(points) > 1:
            ax.legend(fontsize="small")
    fig.savefig(out_path, format="png", dpi=100)


def _plot_differences(ax, rows: list[dict], points: list[str], metric: str) -> None:
    """Each compared row's difference from the baseline with its interval, one marker per grid point."""
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    width = 0.8 / max(len(points), 1)
    for j, point in enumerate(points):
        chosen = [r for r in rows if r["grid"] == point]
        if not chosen:
            continue
        xs = [strategies.index(r["strategy"]) + (j - (len(points) - 1) / 2) * width for r in chosen]
        ys = [r["difference"] for r in chosen]
        below = [r["difference"] - r["difference_low"] for r in chosen]
        above = [r["difference_high"] - r["difference"] for r in chosen]
        ax.errorbar(xs, ys, yerr=[below, above], fmt="o", capsize=3, label=point or None)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(strategies)), strategies, rotation=30, ha="right")
    ax.set_xlim(-0.5, len(strategies) - 0.5)
    ax.set_ylabel(f"Δ {metric} ({bootstrap.LEVEL:.0%} paired bootstrap interval)")
    ax.set_title(f"{metric} minus {rows[0]['baseline']}'s")
    ax.grid(True, alpha=0.3)
    if len(points) > 1:
        ax.legend(fontsize="small")


def write_all(
    workdir: str, rows: list[dict], grid_keys: tuple[str, ...], command: str, mode: str, failures=()
) -> None:
    """Writes results.csv, results.md (with the failed cells' errors) and results.png into `workdir`."""
    os.makedirs(workdir, exist_ok=True)
    files.write_atomic(os.path.join(workdir, RESULTS_CSV), to_csv(rows, grid_keys))
    files.write_atomic(
        os.path.join(workdir, RESULTS_MD), to_markdown(rows, grid_keys, command, mode, failures)
    )
    tmp = os.path.join(workdir, RESULTS_PNG + ".tmp")
    plot(rows, grid_keys, tmp)
    os.replace(tmp, os.path.join(workdir, RESULTS_PNG))


def is_number(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
