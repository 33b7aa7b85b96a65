"""Experiment trackers, MLflow and Weights & Biases, as loggers of the run's metric writer.

`create_writer` builds the `writers.MetricWriter` of a run from `training.loggers`: the built-in
"tensorboard" and "jsonl" loggers (the default, which is what a run always wrote) and the trackers. Every
logger gets the same records through the same interface (`writers.Logger`): the config flattened to dotted
keys with its tags (task, model, strategy, seed) once per process, each train and eval record with its step
under the TensorBoard tag (`train/loss`, `eval/<split>/accuracy`), then the final metrics (`final/<split>/
<name>`) with the final reports and plots as artifacts, and the end of the run. Only process 0 logs.

A tracker's run id is kept in `WORKDIR/trackers.json`, so a resumed run continues the same MLflow run (and
the same W&B run id) instead of starting a new one. MLflow reads `MLFLOW_TRACKING_URI`, and otherwise keeps
a file store in `WORKDIR/mlruns`; MLflow 3 refuses file stores unless `MLFLOW_ALLOW_FILE_STORE` is set, so
for a file store the variable is set while MLflow is called, unless the user set it. W&B writes under
`WORKDIR/wandb`, offline unless `WANDB_MODE` says otherwise or `WANDB_API_KEY` is set.

The packages are optional (`pip install 'jaxft[mlflow]'`, `'jaxft[wandb]'`): `check_installed` names the
missing one in one line before anything is written, and they are imported only by a run that logs to them.
"""

import contextlib
import json
import logging
import os
import pathlib
import time
import uuid

import ml_collections

from jaxft import config as config_lib
from jaxft import files
from jaxft.errors import UserError
from jaxft.training.preemption import Preempted
from jaxft.training.writers import JsonlLogger, Logger, MetricWriter, TensorBoardLogger, metric_tag

TRACKERS_FILE = "trackers.json"  # the trackers' run ids, for a resumed run
MLRUNS_DIR = "mlruns"  # the default MLflow file store
WANDB_DIR = "wandb"  # W&B's run directories (wandb.init(dir=WORKDIR) makes WORKDIR/wandb)
# The package each tracker imports, and what installs it.
_PACKAGES = {"mlflow": ("mlflow", "MLflow"), "wandb": ("wandb", "Weights & Biases")}
_MLFLOW_BATCH = 100  # MLflow takes at most 100 params (and 100 tags) per log_batch
_MLFLOW_MAX_PARAM = 6000  # MLflow's longest param value
_WANDB_MAX_TAG = 64  # W&B's longest tag


def check_installed(config: ml_collections.ConfigDict) -> None:
    """Raises `UserError` when a tracker that `training.loggers` names cannot be imported.

    Raises:
      UserError: one line naming the logger and the extra that installs its package.
    """
    for name in config_lib.logger_names(config.training.loggers):
        if name not in _PACKAGES:
            continue
        module, title = _PACKAGES[name]
        try:
            __import__(module)
        except ImportError:
            raise UserError(
                f"config training.loggers has {name!r}, which needs {title}: pip install 'jaxft[{name}]'"
            ) from None


def flat_config(config: ml_collections.ConfigDict) -> dict:
    """The config as config.json holds it, flattened: {"optimizer.learning_rate": 3e-05, ...}; lists and
    None stay JSON values."""
    out = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(json.loads(config_lib.to_json(config)), "")
    return out


def run_tags(config: ml_collections.ConfigDict) -> dict[str, str]:
    """What a run is, as tracker tags: task, model (the checkpoint's directory name), strategy (the switches
    on, joined by "+" as `jaxft.compare` names them; "full" for none), their parts, and the seed."""
    checkpoint = config_lib.expand_path(config.model.checkpoint)
    regularization = [
        name
        for name, on in (
            ("rdrop", config.regularization.rdrop_alpha > 0),
            ("smoothing", config.regularization.label_smoothing > 0),
            ("llrd", config.optimizer.layer_decay < 1),
            ("eda", bool(config.augment.eda_ops)),
        )
        if on
    ]
    switches = [m for m in (config.peft.method, config.adversarial.method) if m != "none"] + regularization
    return {
        "task": config.task.name,
        "model": os.path.basename(os.path.normpath(checkpoint)) if checkpoint else "random_init",
        "strategy": "+".join(switches) or "full",
        "peft": config.peft.method,
        "adversarial": config.adversarial.method,
        "regularization": ",".join(regularization) or "none",
        "seed": str(config.seed),
    }


def create_writer(config: ml_collections.ConfigDict, workdir: str, *, enabled: bool) -> MetricWriter:
    """The run's metric writer with the loggers `training.loggers` names, in that order; on process 0
    (`enabled`) the trackers start (or resume) their runs here.

    Raises:
      UserError: a tracker cannot start its run (its server refuses, a store it cannot use), in one line.
    """
    if not enabled:
        return MetricWriter(workdir, enabled=False)
    loggers = []
    try:
        for name in config_lib.logger_names(config.training.loggers):
            if name == "jsonl":
                loggers.append(JsonlLogger(workdir))
            elif name == "tensorboard" and config.training.tensorboard:
                loggers.append(TensorBoardLogger(workdir))
            elif name == "mlflow":
                loggers.append(MlflowLogger(workdir, config.training.experiment))
            elif name == "wandb":
                loggers.append(WandbLogger(workdir, config.training.experiment))
    except BaseException as error:
        MetricWriter(workdir, loggers=loggers).close(error)
        raise
    return MetricWriter(workdir, loggers=loggers)


def _saved_ids(workdir: str) -> dict:
    path = os.path.join(workdir, TRACKERS_FILE)
    return files.read_json_object(path) if os.path.exists(path) else {}


def _save_ids(workdir: str, name: str, ids: dict) -> None:
    files.write_json_atomic(os.path.join(workdir, TRACKERS_FILE), {**_saved_ids(workdir), name: ids})


def _numbers(values: dict) -> dict:
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _final_scalars(final: dict[str, dict]) -> dict:
    return {metric_tag("final", split, k): v for split, m in final.items() for k, v in _numbers(m).items()}


def _param_text(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= _MLFLOW_MAX_PARAM else text[: _MLFLOW_MAX_PARAM - 3] + "..."


def _end_status(error: BaseException | None) -> str:
    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, Preempted | KeyboardInterrupt) else "FAILED"


@contextlib.contextmanager
def _file_store_allowed(uri: str):
    """MLFLOW_ALLOW_FILE_STORE=true while MLflow is called on a file store, unless the user set it."""
    local = "://" not in uri or uri.startswith("file:")
    if not local or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


class MlflowLogger(Logger):
    """Logs to an MLflow run through `MlflowClient` (no global active run: runs in one process stay apart).

    Args:
      workdir: the run's directory; the run id goes to its trackers.json.
      experiment: the experiment's name, created when missing.
    """

    def __init__(self, workdir: str, experiment: str):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.workdir = workdir
        default = pathlib.Path(os.path.abspath(os.path.join(workdir, MLRUNS_DIR))).as_uri()
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or default
        self.run_id = None
        try:
            with _file_store_allowed(self.uri):
                self.client = MlflowClient(self.uri)
                run = self._resumed_run(MlflowException)
                if run is None:
                    found = self.client.get_experiment_by_name(experiment)
                    if found is None:
                        experiment_id = self.client.create_experiment(experiment)
                    else:
                        experiment_id = found.experiment_id
                    run = self.client.create_run(
                        experiment_id, run_name=os.path.basename(os.path.abspath(workdir))
                    )
                    ids = {"run_id": run.info.run_id, "tracking_uri": self.uri, "experiment": experiment}
                    _save_ids(workdir, "mlflow", ids)
                else:
                    self.client.update_run(run.info.run_id, status="RUNNING")
        except MlflowException as error:
            raise UserError(f"MLflow at {self.uri}: {_first_line(error)}") from None
        self.run_id = run.info.run_id
        self._params = dict(run.data.params)  # a resumed run's params: MLflow refuses to change them

    def _resumed_run(self, mlflow_exception):
        saved = _saved_ids(self.workdir).get("mlflow") or {}
        if not saved.get("run_id") or saved.get("tracking_uri") != self.uri:
            return None
        try:
            return self.client.get_run(saved["run_id"])
        except mlflow_exception:
            logging.warning("MLflow run %s is not in %s; starting a new run", saved["run_id"], self.uri)
            return None

    def _call(self, method: str, *args, **kwargs):
        with _file_store_allowed(self.uri):
            return getattr(self.client, method)(self.run_id, *args, **kwargs)

    def log_config(self, config, tags):
        from mlflow.entities import Param, RunTag

        texts = {key: _param_text(value) for key, value in config.items()}
        new = [Param(k, v) for k, v in texts.items() if k not in self._params]
        # A resumed run whose config changed: the new values as tags, the params stay as first logged.
        changed = {f"config.{k}": v for k, v in texts.items() if self._params.get(k, v) != v}
        all_tags = [RunTag(k, v) for k, v in {**tags, **changed}.items()]
        for i in range(0, max(len(new), len(all_tags)), _MLFLOW_BATCH):
            chunk = slice(i, i + _MLFLOW_BATCH)
            self._call("log_batch", params=new[chunk], tags=all_tags[chunk])
        self._params.update({p.key: p.value for p in new})

    def _log_scalars(self, step: int, scalars: dict) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(name, value, stamp, step) for name, value in scalars.items()]
        if metrics:
            self._call("log_batch", metrics=metrics)

    def log_metrics(self, step, kind, split, values):
        self._log_scalars(step, {metric_tag(kind, split, k): v for k, v in _numbers(values).items()})

    def log_final(self, step, final, artifacts):
        self._log_scalars(step, _final_scalars(final))
        for relative in artifacts:
            local = os.path.join(self.workdir, relative)
            self._call("log_artifact", local, os.path.dirname(relative) or None)

    def close(self, error=None):
        if self.run_id is not None:
            run_id, self.run_id = self.run_id, None
            with _file_store_allowed(self.uri):
                self.client.set_terminated(run_id, _end_status(error))


class WandbLogger(Logger):
    """Logs to a Weights & Biases run in `WORKDIR/wandb`: offline unless `WANDB_MODE` is set or
    `WANDB_API_KEY` is (then W&B's own default, online); resumed under the id kept in trackers.json.

    Args:
      workdir: the run's directory.
      project: the W&B project.
    """

    def __init__(self, workdir: str, project: str):
        import wandb

        self.workdir = workdir
        saved = _saved_ids(workdir).get("wandb") or {}
        run_id = saved.get("run_id") or uuid.uuid4().hex[:12]
        explicit = os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY")
        settings = wandb.Settings(
            console="off", save_code=False, disable_git=True, x_disable_stats=True, disable_job_creation=True
        )
        try:
            self.run = wandb.init(
                project=project,
                name=os.path.basename(os.path.abspath(workdir)),
                id=run_id,
                resume="allow",
                dir=workdir,
                mode=None if explicit else "offline",
                settings=settings,
            )
        except (wandb.Error, OSError) as error:
            raise UserError(f"W&B: {_first_line(error)}") from None
        if not saved.get("run_id"):
            _save_ids(workdir, "wandb", {"run_id": run_id, "project": project})

    def log_config(self, config, tags):
        self.run.config.update(config, allow_val_change=True)
        self.run.tags = tuple(f"{key}:{value}"[:_WANDB_MAX_TAG] for key, value in tags.items())

    def log_metrics(self, step, kind, split, values):
        scalars = {metric_tag(kind, split, k): v for k, v in _numbers(values).items()}
        if scalars:
            self.run.log(scalars, step=step)

    def log_final(self, step, final, artifacts):
        self.run.summary.update(_final_scalars(final))
        for relative in artifacts:
            self.run.save(os.path.join(self.workdir, relative), base_path=self.workdir, policy="now")

    def close(self, error=None):
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=0 if error is None else 1)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def final_artifacts(workdir: str) -> list[str]:
    """The files a run's trackers keep, relative to `workdir`: the final reports (eval/final_*: text,
    JSON, confusion matrix plots), final_metrics.json and curves.png, those that exist."""
    eval_dir = os.path.join(workdir, "eval")
    names = sorted(os.listdir(eval_dir)) if os.path.isdir(eval_dir) else []
    found = [os.path.join("eval", name) for name in names if name.startswith("final_")]
    top = ("final_metrics.json", "curves.png")
    return found + [name for name in top if os.path.exists(os.path.join(workdir, name))]
