"""Command line of one trial of a search: `jaxft.main`'s training, with the trial's pruning as a hook.

    python -m jaxft.trial --study WORKDIR/study.journal --trial NUMBER --config FILE --workdir CELL \\
        [--config.KEY=VALUE ...]

`jaxft.compare --search` starts it for each trial's cell (`jaxft.search`), with the values the study asked
for as --config.KEY=VALUE; it is not meant to be typed. The training is exactly `jaxft.main`'s (same flags,
same exit statuses); the `Pruning` hook, called after each step's evaluation (`Extensions.hooks`), reports
the decisive metric of every evaluation to the trial and stops the run when the study's pruner says so. The
stopped run still writes its final reports, so its cell ends finished; the comparing process then records
the trial as pruned.
"""

import math
import sys

from absl import app, flags

from jaxft import cli
from jaxft import main as main_lib
from jaxft.errors import UserError
from jaxft.training import trainer

STUDY = flags.DEFINE_string("study", None, "The search's Optuna journal, WORKDIR/study.journal.")
TRIAL = flags.DEFINE_integer("trial", None, "The number of the trial (asked by jaxft.compare) in the study.")
KEY_FLAGS = ("config", "workdir", "study", "trial")


class Pruning(trainer.Hook):
    """Reports `metric` of each evaluation (`Run.evaluation`) to an Optuna trial at its step, and stops the
    run when the trial should be pruned, marking the trial with the step (user attribute
    "pruned_at_step"). A trial marked before (its process killed after the pruning) stops at the start.

    Args:
      trial: the running `optuna.trial.Trial`.
      metric: the eval metric reported.
      reported: steps the trial reported before (a resumed trial): not reported again.
      pruned_at: the step a process before this one pruned the trial at, or None.
    """

    every = 1

    def __init__(self, trial, metric: str | None, reported=(), pruned_at: int | None = None):
        self.trial, self.metric = trial, metric
        self.reported, self.pruned_at = set(reported), pruned_at

    def start(self, run):
        if self.pruned_at is not None:
            run.request_stop(f"Trial {self.trial.number} was pruned at step {self.pruned_at}")
        else:
            self._report(run)  # an evaluation redone at the start (a pre-emption interrupted it)

    def __call__(self, run, step, metrics):
        if run.evaluation is not None and run.evaluation[0] == step:
            self._report(run)

    def _report(self, run):
        from jaxft.search import PRUNED_ATTR

        if self.metric is None or run.evaluation is None or run.evaluation[0] in self.reported:
            return
        step, metrics = run.evaluation
        value = metrics[self.metric]
        self.reported.add(step)
        if not math.isfinite(value):  # a constant prediction's correlation: nothing for the pruner
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.trial.set_user_attr(PRUNED_ATTR, step)
            run.request_stop(
                f"Optuna pruned trial {self.trial.number} at step {step} ({self.metric}={value:.4f})"
            )


def main(argv):
    cli.no_leftovers(argv)
    if None in (main_lib.CONFIG.value, main_lib.WORKDIR.value, STUDY.value, TRIAL.value):
        cli.fail("--config, --workdir, --study and --trial are required (see --help)")
    config = cli.config_or_fail()
    from jaxft import search
    from jaxft.training.train import Extensions

    search.quiet_optuna()
    try:
        trial, metric, reported, attrs = search.open_trial(STUDY.value, TRIAL.value)
    except UserError as error:
        cli.fail(str(error))
    hook = Pruning(trial, metric, reported, attrs.get(search.PRUNED_ATTR))
    main_lib.train(config, Extensions(hooks=(hook,)))


def run():
    """Entry point of `python -m jaxft.trial`."""
    sys.argv = cli.resolve_config_names(sys.argv)
    for root in cli.config_package_roots(sys.argv):
        if root not in sys.path:
            sys.path.insert(0, root)
    app.run(main, flags_parser=cli.parser(__doc__, "jaxft-trial", KEY_FLAGS))


if __name__ == "__main__":
    run()
