"""Compare fine-tuning strategies: strategies x hyperparameter grid x seeds, in one command.

    python -m jaxft.compare --config jaxft.configs.sst2 --strategies full,bitfit,lora,adapter,prompt \\
        --seeds 0,1,2 --grid optimizer.learning_rate=1e-5,3e-5,1e-4 --workdir runs/cmp

(also installed as `jaxft-compare`). A strategy is a named set of config overrides (`STRATEGIES`); `+`
composes them ("lora+fgm"). Every combination of a strategy, a grid point (the cartesian product of all
--grid flags) and a seed is a cell, trained by `python -m jaxft.main` in its own process in
WORKDIR/cells/<strategy>__<key=value,...>__seed<k>/, so that a crash of one cell does not end the others and
its peak memory is its own. A cell whose final_metrics.json exists is done and not run again; an unfinished
one resumes from its checkpoints. Each cell's record (cell.json) holds the task metric, all final metrics,
trainable parameters, wall time and peak memory; WORKDIR/results.csv, results.md and results.png hold the
mean and standard deviation over seeds per strategy and grid point and, against the baseline strategy
(`--baseline`, default the first listed) at the same grid point, the difference in mean metric with a paired
bootstrap interval over the seeds and the evaluation examples, and whether it excludes 0 (jaxft/bootstrap.py;
jaxft/compare_runner.py runs the cells, jaxft/compare_results.py writes the tables).

Cluster job arrays: `--list` prints the cells with their index, `--cell INDEX` runs only that one, and
`--aggregate_only` writes the tables once they have all finished. Any --config.KEY=VALUE is passed on to
every cell. Bad input (an unknown strategy or config key, a malformed --grid or --seeds, a --workdir that is
a file) ends with one line on stderr and exit status 2 before anything is written; a failed cell makes the
exit status 1. `--help` lists the flags and the strategies and exits 0.

`--search optuna --trials N --space KEY=log(LOW,HIGH) ...` searches the space instead of a grid: one cell per
trial, WORKDIR/cells/trialINDEX, with the same resuming, --list, --cell and --aggregate_only, plus Optuna's
pruning from the trial's evaluations (jaxft/search.py; its tables: jaxft/search_results.py).
"""

import dataclasses
import itertools
import os
import re
import shlex
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from jaxft import cli, compare_results, compare_runner, files
from jaxft import config as config_lib
from jaxft import main as main_lib
from jaxft.compare_runner import Cell, Plan, flag_text, split_top_level
from jaxft.errors import UserError
from jaxft.training import workdir as workdir_lib

# Each value must be of its key's type in jaxft/configs/default.py: cells receive it as --config.KEY=VALUE
# text.
STRATEGIES = {
    "full": {},
    "bitfit": {"peft.method": "bitfit"},
    "lora": {"peft.method": "lora"},
    "adapter": {"peft.method": "adapter"},
    "prompt": {"peft.method": "prompt"},
    "prefix": {"peft.method": "prefix"},
    "fgm": {"adversarial.method": "fgm"},
    "pgd": {"adversarial.method": "pgd"},
    "freelb": {"adversarial.method": "freelb"},
    "rdrop": {"regularization.rdrop_alpha": 1.0},
    "smoothing": {"regularization.label_smoothing": 0.1},
    "llrd": {"optimizer.layer_decay": 0.9},
    "eda": {"augment.eda_ops": ("synonym", "insert", "swap", "delete")},
}
# The learning rate each PEFT method is usually trained with (BitFit: Ben Zaken et al.; LoRA: Hu et al. for
# RoBERTa-base; adapters: Houlsby et al.'s range; prompt / prefix: the rates the PEFT and P-tuning v2 examples
# use with AdamW): far above full fine-tuning's, since few parameters move. A cell uses it unless
# optimizer.learning_rate is given by --grid or --config.
LEARNING_RATES = {"bitfit": 1e-3, "lora": 5e-4, "adapter": 1e-3, "prompt": 3e-2, "prefix": 1e-2}
_LR = "optimizer.learning_rate"


def _strategy_help() -> str:
    listed = "; ".join(
        f"{name}: {', '.join(f'{k}={v!r}' for k, v in overrides.items()) or 'no override'}"
        for name, overrides in STRATEGIES.items()
    )
    rates = ", ".join(f"{name} {rate:g}" for name, rate in LEARNING_RATES.items())
    return (
        f"Comma-separated strategies; '+' composes them (lora+fgm). Known: {listed}. PEFT strategies use "
        f"their customary learning rate ({rates}) unless --grid or --config sets {_LR}."
    )


_STRATEGIES = flags.DEFINE_string("strategies", "full", _strategy_help())
_SEEDS = flags.DEFINE_string("seeds", "0", "Comma-separated integer seeds (config key `seed`) per cell.")
_GRID = flags.DEFINE_multi_string(
    "grid",
    [],
    "KEY=V1,V2,... : a config key and the values to try, written as for --config.KEY=V; repeat for a "
    "cartesian product. Commas inside brackets or quotes do not split: "
    "--grid \"augment.eda_ops=('swap',),('swap','delete')\"",
)
_BASELINE = flags.DEFINE_string(
    "baseline",
    None,
    "The strategy every other one is compared with at each grid point: the difference in mean metric and "
    "its paired bootstrap interval over seeds and evaluation examples (default: the first of --strategies).",
)
_CELL = flags.DEFINE_integer("cell", None, "Run only the cell with this index (see --list): one array job.")
_LIST = flags.DEFINE_bool("list", False, "Print the cells with their index and exit; runs nothing.")
_AGGREGATE_ONLY = flags.DEFINE_bool(
    "aggregate_only", False, "Run nothing; write results.csv/md/png from the cells that have finished."
)

_SEARCH = flags.DEFINE_enum(
    "search", None, ["optuna"], "Search --space with Optuna's TPE instead of a grid: one cell per trial."
)
_TRIALS = flags.DEFINE_integer("trials", None, "--search: how many trials (cells trial0000, trial0001, ...).")
_SPACE = flags.DEFINE_multi_string(
    "space",
    [],
    "--search: KEY=log(LOW,HIGH), float(LOW,HIGH), int(LOW,HIGH) or choice(V1,V2,...); repeat per key, "
    "e.g. --space 'optimizer.learning_rate=log(1e-5,1e-3)' --space 'training.batch_size=choice(16,32)'",
)
_PRUNER = flags.DEFINE_string(
    "pruner",
    "median",
    "--search: stop a trial early from its evaluations: median (Optuna's MedianPruner), none, "
    "threshold(lower=V) or threshold(upper=V).",
)

KEY_FLAGS = (
    "config", "workdir", "strategies", "baseline", "seeds", "grid", "cell", "list", "aggregate_only",
    "search", "trials", "space", "pruner",
)  # fmt: skip


def strategy_overrides(strategy: str) -> dict:
    """The config overrides of a strategy name; "a+b" merges a's and b's.

    Raises:
      UserError: an unknown name, or two parts that set one key to different values.
    """
    merged, setter = {}, {}
    for part in strategy.split("+"):
        if part not in STRATEGIES:
            raise UserError(
                f"--strategies: unknown strategy {part!r} in {strategy!r}; known: {', '.join(STRATEGIES)}"
            )
        for key, value in STRATEGIES[part].items():
            if key in merged and merged[key] != value:
                raise UserError(
                    f"--strategies: {strategy!r} sets {key} twice ({setter[key]}: {merged[key]!r}, "
                    f"{part}: {value!r})"
                )
            merged[key], setter[key] = value, part
    return merged


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]; raises UserError for anything but distinct integers."""
    items = [item.strip() for item in text.split(",")]
    if not all(re.fullmatch(r"[+-]?\d+", item) for item in items):
        raise UserError(f"--seeds={text!r}: expected comma-separated integers, e.g. --seeds=0,1,2")
    seeds = [int(item) for item in items]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds={text!r}: a seed is repeated")
    return seeds


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """--grid flags ["KEY=V1,V2", ...] -> [(KEY, [V1, V2]), ...]; values stay text, parsed as by --config.

    Raises:
      UserError: a flag without KEY=, an empty value, a repeated key or value.
    """
    grid = []
    for spec in specs:
        key, sep, values_text = spec.partition("=")
        key = key.strip().removeprefix("config.")
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key):
            raise UserError(f"--grid={spec!r}: expected KEY=V1,V2,... e.g. optimizer.learning_rate=1e-5,3e-5")
        values = [value.strip() for value in split_top_level(values_text)]
        if not all(values):
            raise UserError(f"--grid={spec!r}: an empty value (a stray comma?)")
        if len(set(values)) != len(values):
            raise UserError(f"--grid={spec!r}: a value is repeated")
        if key in dict(grid):
            raise UserError(f"--grid: key {key} is given twice; put all its values in one --grid flag")
        grid.append((key, values))
    return grid


def expand_cells(
    strategies: Sequence[str],
    grid: Sequence[tuple[str, list[str]]],
    seeds: Sequence[int],
    learning_rate_given: bool = False,
):
    """All cells in order: strategy, then grid point (cartesian product, last --grid fastest), then seed.

    A PEFT strategy brings its `LEARNING_RATES` entry unless `learning_rate_given` (by --config) or the grid
    has optimizer.learning_rate.
    """
    points = list(itertools.product(*[[(key, value) for value in values] for key, values in grid]))
    given = learning_rate_given or any(key == _LR for key, _ in grid)

    def overrides(strategy):
        merged = strategy_overrides(strategy)
        rates = [LEARNING_RATES[part] for part in strategy.split("+") if part in LEARNING_RATES]
        return merged if given or not rates else {**merged, _LR: rates[0]}

    combos = itertools.product(strategies, points, seeds)
    return [
        Cell(index, strategy, tuple(point), seed, overrides(strategy))
        for index, (strategy, point, seed) in enumerate(combos)
    ]


def _override_keys(config_args: Sequence[str]) -> list[str]:
    return [m.group(2) for arg in config_args if (m := re.match(r"--(no)?config\.([^=]+)", arg))]


def parse_cell_config(config_path: str, args: Sequence[str]):
    """The config a cell's `jaxft.main` will see: the same file and overrides, parsed the same way.

    Raises:
      UserError: an unknown key or a value that does not parse, in one line naming the key.
    """
    values = flags.FlagValues()
    argv = ["jaxft.main", f"--config={config_path}", *args]
    holder = config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
    try:
        values(argv)
        config = holder.value
        config.keys()  # ml_collections defers a load failure to the first access
    except flags.Error as error:
        raise UserError(cli.one_line(error)) from None
    except (AttributeError, KeyError) as error:
        raise UserError(cli.unknown_key(argv, error)) from None
    except Exception as error:  # the config file itself fails to import or run
        raise UserError(f"--config: cannot load {config_path}: {cli.one_line(error)}") from None
    return config


def _decisive_metric(config) -> tuple[str | None, str]:
    """The cell's `training.best_metric` and `training.best_mode` with "auto" resolved; the metric is None
    where the trainer will refuse the task."""
    from jaxft import tasks  # imports jax: only once a plan is made, never for --help

    try:
        task = tasks.from_config(config)
        return tasks.best_metric(config, task), tasks.best_mode(config, task)
    except UserError:  # the cell's own run reports it and is recorded as failed
        mode = config.training.best_mode
        return None, "max" if mode == "auto" else mode


def _check_set_once(cell: Cell, given: set[str], grid_flag: str = "--grid") -> None:
    """Raises UserError for a config key that two sources set: a cell's value would hang on flag order
    (and two values of a tuple key would even be joined)."""
    sources = {"seed": ["--seeds"]}
    for key in given:
        sources.setdefault(key, []).append(f"--config.{key}")
    for key in cell.overrides:
        sources.setdefault(key, []).append(f"strategy {cell.strategy!r}")
    for key, _ in cell.grid_point:
        sources.setdefault(key, []).append(grid_flag)
    for key, setters in sources.items():
        if len(setters) > 1:
            raise UserError(f"config key {key} is set by both {' and '.join(setters)}; set it in one place")


def make_plan(
    config_path: str, config_args: Sequence[str], strategies: str, grid: Sequence[str], seeds: str
) -> Plan:
    """Checks the whole comparison and lists its cells; writes nothing.

    Args:
      config_path: the --config file (with its ":args" if any), as `jaxft.main` takes it.
      config_args: --config.KEY=VALUE options passed on to every cell unchanged.
      strategies: "full,lora,lora+fgm": comma-separated strategy names (see `STRATEGIES`).
      grid: --grid flags, each "KEY=V1,V2,...".
      seeds: "0,1,2".

    Returns:
      The plan; each cell's config was parsed as its run will parse it.

    Raises:
      UserError: bad input, in one line.
    """
    names = [name.strip() for name in strategies.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise UserError(f"--strategies={strategies!r}: an empty or repeated strategy")
    parsed_grid = parse_grid(grid)
    given = set(_override_keys(config_args))
    cells = expand_cells(names, parsed_grid, parse_seeds(seeds), learning_rate_given=_LR in given)
    base = parse_cell_config(config_path, config_args)
    for key, _ in parsed_grid:
        try:
            config_lib.get(base, key)
        except (KeyError, AttributeError, TypeError):
            raise UserError(f"--grid: unknown config key {key} (not in {config_path})") from None
    seen, checked = {}, []
    for cell in cells:
        _check_set_once(cell, given)
        if seen.setdefault(cell.name, cell) is not cell:
            raise UserError(f"--grid: two cells get the same directory name {cell.name}; change a value")
        try:
            config = parse_cell_config(config_path, [*config_args, *cell.config_args()])
            config_lib.check(config)  # a value no run could take (batch 0, b1 1.5): before any cell runs
        except UserError as error:
            raise UserError(f"{error} (cell {cell.name})") from None
        for key, value in cell.overrides.items():
            if config_lib.get(config, key) != value:  # a STRATEGIES value of the wrong type
                raise UserError(
                    f"strategy {cell.strategy!r}: --config.{key}={flag_text(value)} reads back as "
                    f"{config_lib.get(config, key)!r}, not {value!r}"
                )
        metric, mode = _decisive_metric(config)
        checked.append(dataclasses.replace(cell, metric=metric, best_mode=mode))
    keys = tuple(key for key, _ in parsed_grid)
    return Plan(config_path, tuple(config_args), keys, tuple(checked))


def make_search(
    config_path: str,
    config_args: Sequence[str],
    strategies: str,
    seeds: str,
    trials: int | None,
    space: Sequence[str],
    pruner: str,
):
    """Checks a search (`jaxft.search`) and lists its trial cells, values not yet asked; writes nothing.

    Args:
      config_path, config_args: as for `make_plan`.
      strategies: one strategy (its overrides hold in every trial).
      seeds: one seed: every trial's config key `seed`, and the sampler's.
      trials: how many trials.
      space: --space flags.
      pruner: --pruner (`jaxft.search.parse_pruner`).

    Returns:
      A `jaxft.search.Search`.

    Raises:
      UserError: bad input, in one line: a bad --space or --pruner, a space key the config does not have or
        that another flag sets, a value at an end of a range (or a choice) that the config refuses.
    """
    from jaxft import search

    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError("--search optuna needs Optuna: pip install 'jaxft[search]'") from None
    if trials is None or trials < 1:
        raise UserError(f"--search needs --trials N with N >= 1, not {trials}")
    dimensions, pruner = search.parse_space(space), search.parse_pruner(pruner)
    names, seed_list = [name.strip() for name in strategies.split(",")], parse_seeds(seeds)
    if len(names) != 1 or len(seed_list) != 1:
        raise UserError(
            "--search takes one strategy and one seed (--strategies, --seeds); the space is searched"
        )
    given = set(_override_keys(config_args))
    has_lr = _LR in given or any(d.key == _LR for d in dimensions)
    [cell] = expand_cells(names, [], seed_list, learning_rate_given=has_lr)
    base = parse_cell_config(config_path, config_args)
    for dimension in dimensions:
        try:
            config_lib.get(base, dimension.key)
        except (KeyError, AttributeError, TypeError):
            raise UserError(f"--space: unknown config key {dimension.key} (not in {config_path})") from None
    first = tuple((d.key, d.examples()[0]) for d in dimensions)
    _check_set_once(dataclasses.replace(cell, grid_point=first), given, "--space")
    config = None
    for dimension in dimensions:  # every end of a range, every choice, the other keys at their first
        for text in dimension.examples():
            point = tuple((key, text if key == dimension.key else value) for key, value in first)
            try:
                config = parse_cell_config(
                    config_path, [*config_args, *dataclasses.replace(cell, grid_point=point).config_args()]
                )
                config_lib.check(config)
            except UserError as error:
                raise UserError(f"{error} (--space={dimension.spec}, value {text})") from None
    metric, mode = _decisive_metric(config)
    cells = search.placeholder_cells(trials, names[0], seed_list[0], cell.overrides, metric, mode)
    keys = tuple(d.key for d in dimensions)
    plan = Plan(config_path, tuple(config_args), keys, cells, trainer=(sys.executable, "-m", "jaxft.trial"))
    direction = "maximize" if mode == "max" else "minimize"
    return search.Search(plan, dimensions, pruner, seed_list[0], metric, direction)


def _search_main(config_path: str, workdir: str) -> None:
    """`main` for --search: list, run one trial (--cell), or run them all and write the tables."""
    from jaxft import search, search_results

    if _GRID.value:
        cli.fail("--grid and --search do not mix: give the searched keys as --space")
    if _BASELINE.value is not None:
        cli.fail("--baseline compares strategies; a search has one")
    try:
        found = make_search(
            config_path, _forwarded_config_args(sys.argv), _STRATEGIES.value, _SEEDS.value, _TRIALS.value,
            _SPACE.value, _PRUNER.value,
        )  # fmt: skip
        search.quiet_optuna()  # the trials' progress lines are this command's own
        count = len(found.plan.cells)
        if _CELL.value is not None and not 0 <= _CELL.value < count:
            raise UserError(f"--cell={_CELL.value}: there are {count} trials, 0 to {count - 1} (see --list)")
        if _LIST.value:
            print("\n".join(search.list_trials(found, workdir)))
            return
        if _CELL.value is not None:
            [(record, _)] = search.run_trials(found, workdir, [_CELL.value])
            sys.exit(0 if record["status"] == "done" else 1)
        if _AGGREGATE_ONLY.value and not compare_runner.read_records(found.plan, workdir):
            raise UserError(f"--aggregate_only: no trial of this search has run in {workdir}; nothing to do")
        indexes = [] if _AGGREGATE_ONLY.value else range(count)
        results = search.run_trials(found, workdir, indexes) if indexes else []
        command = _command_line()
        best = search_results.write_all(found, workdir, command)
    except UserError as error:
        cli.fail(str(error))
    except OSError as error:
        cli.fail(str(files.storage_error(error, f"--workdir {workdir}")))
    shown = (
        f"best trial {best['index']}: {best['metric']}={best['metric_value']:.4f}" if best else "no best yet"
    )
    print(f"{shown} -> {os.path.join(workdir, compare_results.RESULTS_MD)}")
    failed = [record["cell"] for record, _ in results if record["status"] != "done"]
    if failed:
        print(f"{len(failed)} trial(s) failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)
    if len(results) < count and not _AGGREGATE_ONLY.value:
        sys.exit(143)  # stopped by SIGTERM before the last trial


def baseline_of(strategies: str, baseline: str | None) -> str:
    """--baseline, or the first of --strategies; raises UserError when it is not one of them."""
    names = [name.strip() for name in strategies.split(",")]
    if baseline is None:
        return names[0]
    if baseline.strip() not in names:
        raise UserError(f"--baseline={baseline!r} is not one of --strategies ({', '.join(names)})")
    return baseline.strip()


def _command_line() -> str:
    """This command as its results write it down for others: shipped configs by module name."""
    return shlex.join(["python", "-m", "jaxft.compare", *cli.config_names(sys.argv[1:])])


def _forwarded_config_args(argv: Sequence[str]) -> list[str]:
    """The --config.KEY[=VALUE] options of the command line, to pass on to every cell as they were given."""
    forwarded, i = [], 1
    while i < len(argv):
        arg = argv[i]
        match = re.match(r"--(no)?(config\.[^=]+)", arg)
        if match:
            forwarded.append(arg)
            flag = flags.FLAGS[match.group(2)] if match.group(2) in flags.FLAGS else None
            if "=" not in arg and flag is not None and not flag.boolean and i + 1 < len(argv):
                forwarded.append(argv[i + 1])  # "--config.KEY VALUE"
                i += 1
        i += 1
    return forwarded


def main(argv):
    cli.no_leftovers(argv)
    if main_lib.CONFIG.value is None or main_lib.WORKDIR.value is None:
        cli.fail("--config and --workdir are required (see --help)")
    if main_lib.DISTRIBUTED.value:
        cli.fail("--distributed is for jaxft.main; run one cell per job with --cell INDEX instead")
    cli.config_or_fail()
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    workdir = main_lib.WORKDIR.value
    try:
        workdir_lib.check_path(workdir, "--workdir")
    except UserError as error:
        cli.fail(str(error))
    if _SEARCH.value is not None:
        return _search_main(config_path, workdir)
    if _SPACE.value or _TRIALS.value is not None:
        cli.fail("--space and --trials go with --search optuna")
    try:
        plan = make_plan(
            config_path, _forwarded_config_args(sys.argv), _STRATEGIES.value, _GRID.value, _SEEDS.value
        )
        baseline = baseline_of(_STRATEGIES.value, _BASELINE.value)
        if _CELL.value is not None and not 0 <= _CELL.value < len(plan.cells):
            count = len(plan.cells)
            raise UserError(f"--cell={_CELL.value}: there are {count} cells, 0 to {count - 1} (see --list)")
    except UserError as error:
        cli.fail(str(error))
    if _LIST.value:
        for cell in plan.cells:
            print(f"{cell.index}\t{cell.name}")
        return
    try:
        if _CELL.value is not None:  # one job of an array: the tables come later from --aggregate_only
            [(record, _)] = compare_runner.run_cells(plan, workdir, [plan.cells[_CELL.value]])
            sys.exit(0 if record["status"] == "done" else 1)
        if _AGGREGATE_ONLY.value and not compare_runner.read_records(plan, workdir):
            cli.fail(f"--aggregate_only: no cell of this comparison has run in {workdir}; nothing to do")
        results = [] if _AGGREGATE_ONLY.value else compare_runner.run_cells(plan, workdir)
        command = _command_line()
        rows = compare_runner.write_results(plan, workdir, command, baseline)
    except OSError as error:  # a cell's record, its log or the tables: the machine refused the write
        cli.fail(str(files.storage_error(error, f"--workdir {workdir}")))
    print(f"{len(rows)} rows -> {os.path.join(workdir, compare_results.RESULTS_MD)}")
    failed = [record["cell"] for record, _ in results if record["status"] != "done"]
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)
    if len(results) < len(plan.cells) and not _AGGREGATE_ONLY.value:
        sys.exit(143)  # stopped by SIGTERM before the last cell


def run():
    """Entry point of `python -m jaxft.compare` and the `jaxft-compare` console script."""
    sys.argv = cli.resolve_config_names(sys.argv)
    for root in cli.config_package_roots(sys.argv):
        if root not in sys.path:
            sys.path.insert(0, root)
    app.run(main, flags_parser=cli.parser(__doc__, "jaxft-compare", KEY_FLAGS))


if __name__ == "__main__":
    run()
