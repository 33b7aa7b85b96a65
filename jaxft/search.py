"""A hyperparameter search for `jaxft.compare --search optuna`: Optuna's TPE over a --space, one cell a trial.

    python -m jaxft.compare --config jaxft.configs.sst2 --search optuna --trials 12 \\
        --space 'optimizer.learning_rate=log(1e-5,1e-3)' --space 'training.batch_size=choice(16,32)' \\
        --workdir runs/search

A --space flag is KEY=log(LOW,HIGH) (log-uniform floats), float(LOW,HIGH), int(LOW,HIGH) (both ends
included) or choice(V1,V2,...) (values written as for --config.KEY=V). Trial INDEX is the cell
WORKDIR/cells/trialINDEX (four digits at least), trained by `python -m jaxft.trial` in its own process as
any cell is (`jaxft.compare_runner`), with the trial's values as --config.KEY=VALUE.

The study lives in WORKDIR/study.journal (Optuna's JournalStorage on a file, which concurrent processes
share: the jobs of an array run with --cell INDEX). It is asked for trial INDEX just before that trial runs,
with a TPE sampler seeded by the comparison's seed and INDEX, so that the same command on an empty workdir
asks the same trials; the trial keeps INDEX as its user attribute "cell". The direction is the decisive
metric's (`training.best_mode`). During training the trial's process reports each evaluation of that metric
to the study, and stops when the pruner (MedianPruner by default) says so (`jaxft.trial`); the stopped run
still writes its final reports, so its cell is finished like any other.

When a trial's process ends, the comparing process tells the study: COMPLETE with the cell's metric (the
final evaluation of its best checkpoint, as in every comparison), PRUNED when the trial was pruned, FAIL
when the run ended without a finite metric. A cell that failed (or a search killed mid-trial) leaves its
trial RUNNING with its values: running the same command again resumes that trial's cell from its
checkpoints with the same values, keeps the finished trials, and goes on until every trial index has
ended. The search's definition (space, pruner, seed, strategy, metric, direction) is stored in the study;
another definition in the same workdir is refused, more --trials are not.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence

from jaxft import compare_runner, files
from jaxft.compare_runner import Cell, Plan, flag_text
from jaxft.errors import UserError

JOURNAL = "study.journal"
STUDY_NAME = "jaxft"
CELL_ATTR = "cell"  # a trial's user attribute: the index of its cell
PRUNED_ATTR = "pruned_at_step"  # set by the trial's process when the pruner stopped it
_KINDS = ("log", "float", "int", "choice")
_SPEC = re.compile(r"\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*=\s*(\w+)\s*\((.*)\)\s*", re.S)
_PRUNERS = re.compile(r"median|none|threshold\((lower|upper)=([^)]+)\)")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One --space flag: a config key and the values a trial may give it.

    Attributes:
      key: the dotted config key.
      kind: "log", "float", "int" or "choice".
      low, high: the range of log / float / int (ends included).
      choices: the texts of choice(...), each as --config.KEY takes it.
    """

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[str, ...] = ()

    @property
    def spec(self) -> str:
        """The flag in a normal form: KEY=kind(args)."""
        args = self.choices if self.kind == "choice" else (repr(self.low), repr(self.high))
        return f"{self.key}={self.kind}({','.join(args)})"

    def distribution(self):
        """The Optuna distribution of the dimension."""
        from optuna import distributions

        if self.kind == "choice":
            return distributions.CategoricalDistribution(self.choices)
        if self.kind == "int":
            return distributions.IntDistribution(self.low, self.high)
        return distributions.FloatDistribution(self.low, self.high, log=self.kind == "log")

    def text(self, value) -> str:
        """A sampled value as the text of --config.KEY=TEXT."""
        return value if self.kind == "choice" else flag_text(value)

    def examples(self) -> tuple[str, ...]:
        """Texts a trial may get, to check against the config before anything runs: the ends, every choice."""
        return self.choices if self.kind == "choice" else (self.text(self.low), self.text(self.high))


def _split_args(text: str) -> list[str]:
    # As --grid splits: commas inside brackets or quotes stay in the value.
    return [part.strip() for part in compare_runner.split_top_level(text)]


def _bound(spec: str, text: str, integer: bool):
    pattern = r"[+-]?\d+" if integer else r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
    if not re.fullmatch(pattern, text):
        what = "an integer" if integer else "a number"
        raise UserError(f"--space={spec!r}: {text!r} is not {what}")
    return int(text) if integer else float(text)


def parse_dimension(spec: str) -> Dimension:
    """ "KEY=log(1e-5,1e-3)" -> Dimension; see the module docstring for the forms.

    Raises:
      UserError: one line naming the flag: not KEY=kind(...), an unknown kind, bounds that are not
        numbers or not low < high (low > 0 for log), an empty or repeated choice.
    """
    match = _SPEC.fullmatch(spec)
    if not match:
        raise UserError(
            f"--space={spec!r}: expected KEY=log(LOW,HIGH), float(LOW,HIGH), int(LOW,HIGH) or "
            "choice(V1,V2,...), e.g. optimizer.learning_rate=log(1e-5,1e-3)"
        )
    key, kind, inner = match.groups()
    key = key.removeprefix("config.")
    if kind not in _KINDS:
        raise UserError(f"--space={spec!r}: unknown kind {kind!r}; one of {', '.join(_KINDS)}")
    args = _split_args(inner)
    if kind == "choice":
        if not all(args):
            raise UserError(f"--space={spec!r}: an empty choice (a stray comma?)")
        if len(set(args)) != len(args):
            raise UserError(f"--space={spec!r}: a choice is repeated")
        return Dimension(key, kind, choices=tuple(args))
    if len(args) != 2:
        raise UserError(f"--space={spec!r}: {kind}(LOW,HIGH) takes two bounds, not {len(args)}")
    low, high = (_bound(spec, arg, kind == "int") for arg in args)
    if not math.isfinite(low) or not math.isfinite(high) or not low < high:
        raise UserError(f"--space={spec!r}: the bounds must be finite with LOW < HIGH")
    if kind == "log" and low <= 0:
        raise UserError(f"--space={spec!r}: log(LOW,HIGH) needs LOW > 0")
    return Dimension(key, kind, low, high)


def parse_space(specs: Sequence[str]) -> tuple[Dimension, ...]:
    """--space flags -> dimensions, in flag order.

    Raises:
      UserError: no flag, a bad flag (`parse_dimension`) or a key given twice.
    """
    if not specs:
        raise UserError(
            "--search needs at least one --space KEY=kind(...), e.g. optimizer.learning_rate=log(1e-5,1e-3)"
        )
    space = tuple(parse_dimension(spec) for spec in specs)
    keys = [dimension.key for dimension in space]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise UserError(f"--space: key {repeated[0]} is given twice")
    return space


def parse_pruner(text: str) -> str:
    """ "median" (Optuna's MedianPruner), "none", or "threshold(lower=V)" / "threshold(upper=V)" (prune once
    the metric is below / above V); returned in a normal form.

    Raises:
      UserError: anything else, in one line.
    """
    match = _PRUNERS.fullmatch(text.strip().replace(" ", ""))
    if not match:
        raise UserError(f"--pruner={text!r}: expected median, none, threshold(lower=V) or threshold(upper=V)")
    if match.group(1):
        value = _bound(f"pruner {text}", match.group(2), integer=False)
        return f"threshold({match.group(1)}={value!r})"
    return match.group(0)


def make_pruner(text: str):
    """The Optuna pruner of a `parse_pruner` text."""
    import optuna

    if text == "median":
        return optuna.pruners.MedianPruner()
    if text == "none":
        return optuna.pruners.NopPruner()
    side, value = re.fullmatch(r"threshold\((\w+)=(.+)\)", text).groups()
    return optuna.pruners.ThresholdPruner(**{side: float(value)})


@dataclasses.dataclass(frozen=True)
class Search:
    """A checked search: what each trial's cell shares (`plan`; its cells are the trial indexes, values not
    yet asked) and how the study asks and prunes.

    Attributes:
      plan: the comparison plan: config, options passed on, one placeholder cell per trial index.
      space: the dimensions.
      pruner: a `parse_pruner` text.
      seed: the comparison's seed (config key `seed` of every trial; the sampler's seed).
      metric: the decisive eval metric; direction: "maximize" or "minimize".
    """

    plan: Plan
    space: tuple[Dimension, ...]
    pruner: str
    seed: int
    metric: str | None
    direction: str

    @property
    def definition(self) -> dict:
        """What a study in a workdir must have been made with to be continued by this search."""
        return {
            "space": [dimension.spec for dimension in self.space],
            "pruner": self.pruner,
            "seed": self.seed,
            "strategy": self.plan.cells[0].strategy if self.plan.cells else None,
            "metric": self.metric,
            "direction": self.direction,
        }


def quiet_optuna() -> None:
    """Optuna's own INFO lines off (a study made, a trial told): for the command-line processes only."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def trial_cell_name(index: int) -> str:
    return f"trial{index:04d}"


def placeholder_cells(count: int, strategy: str, seed: int, overrides: dict, metric, best_mode) -> tuple:
    """The cells of trial indexes 0..count-1 before their values are asked."""
    return tuple(
        Cell(index, strategy, (), seed, overrides, metric, best_mode, label=trial_cell_name(index))
        for index in range(count)
    )


def journal_path(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), JOURNAL)


def _storage(path: str):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(path))


def open_study(search: Search, workdir: str, *, create: bool):
    """The search's study in `workdir` (created when `create`; None when there is none and not `create`).

    Raises:
      UserError: the workdir's study was made by another search definition.
    """
    import optuna

    path = journal_path(workdir)
    if not create and not os.path.exists(path):
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        study = optuna.create_study(
            storage=_storage(path), study_name=STUDY_NAME, direction=search.direction, load_if_exists=True
        )
    except ValueError as error:  # the stored direction differs
        raise UserError(f"--workdir {workdir}: {JOURNAL} holds another search ({error})") from None
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", search.definition)
    elif stored != search.definition:
        changed = [key for key in search.definition if stored.get(key) != search.definition[key]]
        raise UserError(
            f"--workdir {workdir}: its study was made with another {', '.join(changed)} "
            f"({', '.join(f'{k}={stored.get(k)!r}' for k in changed)}); use another workdir"
        )
    return study


def _cell_trials(study) -> dict[int, object]:
    """Each cell index's trial (the earliest, should two processes have asked for one index at once)."""
    found = {}
    for trial in study.get_trials(deepcopy=False):
        index = trial.user_attrs.get(CELL_ATTR)
        if index is not None and index not in found:
            found[index] = trial
    return found


def _sampler_seed(seed: int, index: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def trial_for_cell(search: Search, study, index: int):
    """The trial of cell `index`: the one asked before (a resumed or finished trial), else a new one.

    Returns:
      The trial as `optuna.trial.FrozenTrial`.
    """
    import optuna

    asked = _cell_trials(study).get(index)
    if asked is not None:
        return asked
    study.sampler = optuna.samplers.TPESampler(seed=_sampler_seed(search.seed, index))
    trial = study.ask({dimension.key: dimension.distribution() for dimension in search.space})
    trial.set_user_attr(CELL_ATTR, index)
    return _cell_trials(study)[index]


def trial_cell(search: Search, trial, workdir: str) -> Cell:
    """The cell that trains `trial`: its values as --config.KEY=VALUE, and the study and trial number for
    the trial's process (`jaxft.trial`)."""
    index = trial.user_attrs[CELL_ATTR]
    point = tuple((d.key, d.text(trial.params[d.key])) for d in search.space)
    extra = (f"--study={journal_path(workdir)}", f"--trial={trial.number}")
    return dataclasses.replace(search.plan.cells[index], grid_point=point, trainer_args=extra)


def settle(study, cell: Cell, record: dict, directory: str) -> dict:
    """Tells the study how the trial of `cell` ended, once its cell is done; adds the trial to `record`
    (cell.json, rewritten): its number, state ("complete", "pruned", "fail" or "running"), values and the
    step it was pruned at."""
    from optuna.trial import TrialState

    trial = _cell_trials(study)[cell.index]
    if trial.state == TrialState.RUNNING and record["status"] == "done":
        if trial.user_attrs.get(PRUNED_ATTR) is not None:
            study.tell(trial.number, state=TrialState.PRUNED)
        elif record["metric_value"] is not None:
            study.tell(trial.number, record["metric_value"])
        else:
            study.tell(trial.number, state=TrialState.FAIL)
        trial = _cell_trials(study)[cell.index]
    record = {
        **record,
        "trial": trial.number,
        "trial_state": trial.state.name.lower(),
        "params": dict(cell.grid_point),
        "pruned_at_step": trial.user_attrs.get(PRUNED_ATTR),
    }
    files.write_json_atomic(os.path.join(directory, compare_runner.CELL_RECORD), record, allow_nan=False)
    return record


def run_trials(search: Search, workdir: str, indexes: Sequence[int]) -> list[tuple[dict, bool]]:
    """Runs the trials `indexes` one after another, each asked just before it runs (so that TPE learns from
    the trials before it), and tells the study how each ended.

    Returns:
      (record, ran) per trial, as `compare_runner.run_cells`; a SIGTERM stops before the next trial.
    """
    study = open_study(search, workdir, create=True)

    def cells():
        for index in indexes:
            yield trial_cell(search, trial_for_cell(search, study, index), workdir)

    def after(cell, record):
        return settle(study, cell, record, compare_runner.cell_dir(workdir, cell))

    return compare_runner.run_cells(search.plan, workdir, cells(), after=after)


def list_trials(search: Search, workdir: str) -> list[str]:
    """One line per trial index: INDEX, cell name, its values and state, or "not asked yet"; writes
    nothing."""
    study = open_study(search, workdir, create=False)
    asked = _cell_trials(study) if study is not None else {}
    lines = []
    for cell in search.plan.cells:
        trial = asked.get(cell.index)
        if trial is None:
            lines.append(f"{cell.index}\t{cell.name}\tnot asked yet")
            continue
        values = ",".join(f"{d.key}={d.text(trial.params[d.key])}" for d in search.space)
        lines.append(f"{cell.index}\t{cell.name}\t{values}\t{trial.state.name.lower()}")
    return lines


def open_trial(journal: str, number: int):
    """In a trial's process: its study (with the search's pruner) and a `optuna.trial.Trial` of its running
    trial, the decisive metric, and the steps it reported before (a resumed trial).

    Raises:
      UserError: no study at `journal`, or no running trial `number` in it.
    """
    import optuna
    from optuna.trial import TrialState

    if not os.path.exists(journal):
        raise UserError(f"--study {journal}: no such file (jaxft.compare --search writes it)")
    storage = _storage(journal)
    definition = optuna.load_study(study_name=STUDY_NAME, storage=storage).user_attrs.get("search") or {}
    study = optuna.load_study(
        study_name=STUDY_NAME, storage=storage, pruner=make_pruner(definition.get("pruner", "none"))
    )
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if frozen is None or frozen.state != TrialState.RUNNING:
        state = "no such trial" if frozen is None else f"it is {frozen.state.name.lower()}"
        raise UserError(f"--trial={number}: not a running trial of {journal} ({state})")
    # Optuna has no public handle on a trial asked by another process; its storage id is the way in.
    trial = optuna.trial.Trial(study, frozen._trial_id)
    return trial, definition.get("metric"), set(frozen.intermediate_values), frozen.user_attrs
