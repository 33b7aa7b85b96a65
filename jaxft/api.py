"""The Python API: fine-tune from a script or a notebook, then predict, explain and embed with the result.

    import jaxft

    result = jaxft.finetune("finetune", "runs/reviews", train="train.csv", eval="dev.csv",
                            overrides={"data.text_field": "review", "training.num_epochs": 2})
    print(result.metrics["eval"]["accuracy"], result.best_step)
    predictor = jaxft.load("runs/reviews")
    predictor.predict(["a gripping film", "two hours I want back"])  # [{"label": ..., "probabilities": ...}]
    vectors = predictor.embed(["a gripping film"])                    # [1, hidden] float32
    predictor.explain(["a gripping film"])  # the records with "attributions": [["a", 0.1], ...]

`finetune` is `jaxft-train`'s job (`jaxft.training.train.train_and_evaluate`) with a config given as an object
or a shipped config's name, dotted overrides, and data as paths or in memory: a list of dicts, a pandas
DataFrame or a Hugging Face `datasets.Dataset`. In-memory data is written into the run's workdir
(`WORKDIR/data/<split>.<ext>`, in the file format the task reads), so a run is resumed, predicted from and
audited as one from the command line. It leaves the caller's process as it found it: signal handlers (the
pre-emption guard restores them), logging, environment variables; the command line's process-wide CPU
memory setting (`training.keep_cpu_step_memory`) is not applied.

`load` reads a workdir as `jaxft-predict` does; `Predictor.predict` returns what `jaxft-predict` writes, one
dict per input (tags and entities for NER, answers for QA).
"""

import copy
import dataclasses
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxft import configs, files, predict, tasks
from jaxft import explain as explain_lib
from jaxft.data import readers
from jaxft.errors import UserError

SPLITS = ("train", "eval", "test")
DATA_DIR = "data"  # WORKDIR/data: in-memory splits, written as files


@dataclasses.dataclass(frozen=True)
class Result:
    """What `finetune` leaves: the final evaluation and where everything is.

    Attributes:
      workdir: the run's directory.
      metrics: split ("eval", "test") -> the final metrics of the best parameters (final_metrics.json).
      reports: split -> the final report's text, as printed at the end of training.
      best_step: the step whose parameters the final metrics are of.
      trainable_params: parameters that were trained (PEFT: the method's only).
      total_params: every parameter of the model.
      paths: name -> path of the run's files: "config", "labels", "metrics" (metrics.jsonl),
        "checkpoints", "eval" (every evaluation's reports), "curves" (curves.png), "data" (in-memory splits).
    """

    workdir: str
    metrics: dict
    reports: dict
    best_step: int
    trainable_params: int
    total_params: int
    paths: dict

    def __repr__(self) -> str:
        shown = {split: {k: round(v, 4) for k, v in m.items() if isinstance(v, float)} for split, m in
                 self.metrics.items()}  # fmt: skip
        return f"Result(workdir={self.workdir!r}, best_step={self.best_step}, metrics={shown})"


def resolve_config(config) -> ml_collections.ConfigDict:
    """A copy of `config`: a ConfigDict, a shipped config's name ("sst2", "sst2:tiny",
    "jaxft.configs.sst2") or a config file's path ("my_config.py[:VARIANT]").

    Raises:
      UserError: no such shipped config or file, or the file defines no `get_config`.
    """
    if isinstance(config, ml_collections.ConfigDict):
        return copy.deepcopy(config)
    if not isinstance(config, str | os.PathLike):
        raise UserError(f"config: expected a ConfigDict or a config name, not {type(config).__name__}")
    name, _, variant = os.fspath(config).partition(":")
    variant = variant or None
    if name.endswith(".py"):
        return _config_from_file(name, variant)
    try:
        return configs.get(name.removeprefix("jaxft.configs."), variant)
    except ValueError as error:
        raise UserError(f"config {config!r}: {error}") from None


def _config_from_file(path: str, variant: str | None) -> ml_collections.ConfigDict:
    import importlib.util

    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise UserError(f"config {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"jaxft_user_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"config {path}: not a config file: it defines no get_config()")
    return module.get_config() if variant is None else module.get_config(variant)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | None) -> None:
    """Sets each dotted key of `overrides` (`{"training.num_train_steps": 10}`) in `config`, in place.

    Raises:
      UserError: a key the config does not have, or a value of the wrong type for it.
    """
    for dotted, value in (overrides or {}).items():
        *sections, key = str(dotted).split(".")
        node = config
        for i, part in enumerate(sections):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                known = ".".join(sections[: i + 1])
                raise UserError(f"overrides: unknown config key {known!r} (in {dotted!r})")
            node = node[part]
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            raise UserError(f"overrides: unknown config key {dotted!r}")
        if isinstance(node[key], ml_collections.ConfigDict):
            raise UserError(f"overrides: {dotted!r} is a section; set its keys one by one")
        if isinstance(value, tuple | list) and not isinstance(node[key], tuple | list | type(None)):
            raise UserError(f"overrides: {dotted!r} takes a {type(node[key]).__name__}, not a list")
        try:
            node[key] = tuple(value) if isinstance(value, list) else value
        except TypeError as error:
            raise UserError(f"overrides: {dotted!r}: {' '.join(str(error).split())}") from None


def finetune(
    config,
    workdir: str | os.PathLike,
    *,
    train=None,
    eval=None,  # noqa: A002  (the split's name, as the config and the reports call it)
    test=None,
    overrides: Mapping[str, Any] | None = None,
) -> Result:
    """Fine-tunes as `config` says and returns the final evaluation; an existing run in `workdir` resumes.

    Args:
      config: a ConfigDict, or a shipped config's name ("sst2", "sst2:tiny"; `jaxft.configs.NAMES`), or a
        config file's path. It is copied: the caller's object is not changed.
      workdir: the run's directory (created; an existing run there is resumed).
      train, eval, test: the splits, each None (the config's path), a path (CSV, TSV, JSONL, or whatever
        the config's data.format reads), or in memory: a list of dicts, a pandas DataFrame or a
        `datasets.Dataset`, whose keys are the config's fields (data.text_field, data.label_field, ...).
        NER rows hold a list of words and a list of tags (`tokens`/`words` and `tags`/`ner_tags`); QA rows
        are SQuAD's (`id`, `question`, `context`, `answers` with `text` and `answer_start`).
      overrides: dotted config keys and their values, applied after the config is resolved.

    Returns:
      A `Result`.

    Raises:
      UserError: bad input (one line: the key, the file and line, the field); nothing was trained.
      StorageError (a UserError): the machine refused a write. FloatingPointError: the loss diverged.
      jaxft.training.preemption.Preempted: SIGTERM or Ctrl-C (in the main thread) stopped the run after a
      checkpoint; calling `finetune` again resumes it.
    """
    from jaxft.training.train import train_and_evaluate  # deferred: `import jaxft` stays light

    config = resolve_config(config)
    apply_overrides(config, overrides)
    workdir = os.path.abspath(os.path.expanduser(os.fspath(workdir)))
    for split, data in zip(SPLITS, (train, eval, test), strict=True):
        if data is not None:
            config.data[f"{split}_path"] = _data_path(data, split, config, workdir)
    train_and_evaluate(config, workdir)
    return _result(workdir)


def _result(workdir: str) -> Result:
    final = files.read_json_object(os.path.join(workdir, "final_metrics.json"))
    reports = {}
    for split in ("eval", "test"):
        path = os.path.join(workdir, "eval", f"final_{split}.txt")
        if split in final and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                reports[split] = f.read()
    names = {
        "config": "config.json",
        "labels": "labels.json",
        "metrics": "metrics.jsonl",
        "checkpoints": "checkpoints",
        "eval": "eval",
        "curves": "curves.png",
        "data": DATA_DIR,
    }
    paths = {key: os.path.join(workdir, name) for key, name in names.items()}
    return Result(
        workdir=workdir,
        metrics={split: final[split] for split in ("eval", "test") if split in final},
        reports=reports,
        best_step=int(final["params_from_step"]),
        trainable_params=int(final["trainable_params"]),
        total_params=int(final["total_params"]),
        paths={key: path for key, path in paths.items() if os.path.exists(path)},
    )


# ---- data given in memory ------------------------------------------------------------------------------


def _data_path(data, split: str, config: ml_collections.ConfigDict, workdir: str) -> str:
    """The path the config's data.<split>_path takes for `data`: a path as given, in-memory rows written
    into WORKDIR/data in the format the task reads (config.data.format adjusted to it)."""
    if isinstance(data, str | os.PathLike):
        return os.fspath(data)
    rows = rows_of(data, f"{split}=")
    if not rows:
        raise UserError(f"{split}=: no rows")
    task = config.task.name
    os.makedirs(os.path.join(workdir, DATA_DIR), exist_ok=True)
    if task == "ner":
        path, text = os.path.join(workdir, DATA_DIR, f"{split}.conll"), _conll_text(rows, split)
        config.task.tag_column = -1  # the file written holds `word tag`
    elif task == "qa":
        path, text = os.path.join(workdir, DATA_DIR, f"{split}.json"), _squad_text(rows, split)
    else:
        path, text = os.path.join(workdir, DATA_DIR, f"{split}.jsonl"), _jsonl_text(rows, split)
        config.data.format = "auto"  # this split is JSONL; the others, if files, by their extensions
    _write_once(path, text, workdir, split)
    return path


def _write_once(path: str, text: str, workdir: str, split: str) -> None:
    """Writes `text` to `path` unless it holds it already; a resumed run's split must be the same data."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
        if os.path.isdir(os.path.join(workdir, "checkpoints")):
            raise UserError(
                f"{split}=: differs from the data the run in {workdir} was trained on ({path}); give the "
                "same data to resume it, or a new workdir"
            )
    files.write_atomic(path, text)


def rows_of(data, what: str) -> list[dict]:
    """`data` (a list of dicts, a pandas DataFrame, a `datasets.Dataset`) as a list of plain dicts, class
    label ids of a `datasets.Dataset` replaced by their names.

    Raises:
      UserError: `data` is of none of those kinds, or a row is not a mapping.
    """
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
        rows = data.to_dict("records")
    elif hasattr(data, "features") and hasattr(data, "column_names"):  # datasets.Dataset
        rows = [_named_labels(dict(row), data.features) for row in data]
    elif isinstance(data, Sequence) and not isinstance(data, str | bytes):
        rows = list(data)
    else:
        raise UserError(
            f"{what}: expected a path, a list of dicts, a pandas DataFrame or a datasets.Dataset, "
            f"not {type(data).__name__}"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise UserError(f"{what} row {i}: expected a dict of fields, not {type(row).__name__}")
    return [{str(k): _plain(v) for k, v in row.items()} for row in rows]


def _named_labels(row: dict, features) -> dict:
    """A `datasets` row with ClassLabel ids (and sequences of them) replaced by their names."""
    for key, feature in features.items():
        names = getattr(feature, "names", None)
        inner = getattr(getattr(feature, "feature", None), "names", None)
        if names is not None and isinstance(row.get(key), int) and row[key] >= 0:
            row[key] = names[row[key]]
        elif inner is not None and isinstance(row.get(key), list):
            row[key] = [inner[v] if isinstance(v, int) else v for v in row[key]]
    return row


def _plain(value):
    """A JSON-ready value: NumPy scalars and arrays as Python ones, NaN (pandas' missing) as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _jsonl_text(rows: list[dict], split: str) -> str:
    try:
        return "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
    except (TypeError, ValueError) as error:
        raise UserError(f"{split}=: a value that is not text, a number or a list ({error})") from None


def _field(row: dict, keys: tuple[str, ...], where: str):
    for key in keys:
        if key in row:
            return row[key]
    raise UserError(f"{where}: no {' or '.join(map(repr, keys))} field; the fields are {', '.join(row)}")


def _conll_text(rows: list[dict], split: str) -> str:
    """NER rows (a list of words, a list of tags) as a CoNLL file: `word tag` lines, a blank line after
    each sentence."""
    lines = []
    for i, row in enumerate(rows):
        where = f"{split}= row {i}"
        words, tags = _field(row, ("tokens", "words"), where), _field(row, ("tags", "ner_tags"), where)
        if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags) or not words:
            raise UserError(f"{where}: expected non-empty lists of words and tags of the same length")
        for word, tag in zip(words, tags, strict=True):
            if not isinstance(word, str) or not word or any(c.isspace() for c in word):
                raise UserError(f"{where}: word {word!r} is not one non-empty word without spaces")
            lines.append(f"{word} {tag}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _squad_text(rows: list[dict], split: str) -> str:
    """QA rows (SQuAD's fields, as the Hugging Face `squad` dataset has them) as a SQuAD v1.1 JSON file."""
    paragraphs = []
    for i, row in enumerate(rows):
        where = f"{split}= row {i}"
        answers = _field(row, ("answers",), where)
        if isinstance(answers, dict):  # datasets' columnar form: {"text": [...], "answer_start": [...]}
            answers = [
                {"text": t, "answer_start": s}
                for t, s in zip(answers.get("text", []), answers.get("answer_start", []), strict=True)
            ]
        question = {"id": str(row.get("id", i)), "question": _field(row, ("question",), where)}
        question["answers"] = answers
        paragraphs.append({"context": _field(row, ("context",), where), "qas": [question]})
    return json.dumps({"version": "1.1", "data": [{"title": "rows", "paragraphs": paragraphs}]}) + "\n"


# ---- prediction ----------------------------------------------------------------------------------------


def load(workdir: str | os.PathLike) -> "Predictor":
    """A trained run's predictor: its config, labels, tokenizer and best (else newest) parameters.

    Raises:
      UserError: `workdir` is not a jaxft run, has no checkpoint yet, or one of its files fails a check.
    """
    return Predictor(predict.load_run(os.path.expanduser(os.fspath(workdir))))


class Predictor:
    """Predictions and embeddings of one trained run (`load`).

    Attributes:
      run: the `jaxft.predict.TrainedRun` (config, label names, encoder config, parameters, tokenizer, step).
      task: the run's task (`jaxft.tasks`).
    """

    def __init__(self, run: predict.TrainedRun):
        self.run = run
        self.task = tasks.from_config(run.config)

    @property
    def labels(self) -> list[str]:
        """The label set, in the model's output order."""
        return list(self.run.label_names)

    def __repr__(self) -> str:
        return f"Predictor(task={self.task.name!r}, labels={len(self.labels)}, step={self.run.step})"

    def predict(self, inputs, batch_size: int = 128) -> list[dict]:
        """One dict per input, in order, as `jaxft-predict` writes them: for classification the text,
        the `label` and `probabilities` (label -> probability); values for regression, `labels` for
        multi-label, `words`/`tags`/`entities` for NER, `answer`/`start`/`score` for QA.

        Args:
          inputs: a text, a list of texts, a list of (text, text pair) tuples, a list of dicts with the
            run's fields (relation: `text`, `head`, `tail` spans; QA: the question and context fields), a
            pandas DataFrame or a `datasets.Dataset`.
          batch_size: examples per batch.

        Raises:
          UserError: an input the run cannot read (naming its index), or a bad batch size.
        """
        if batch_size < 1:
            raise UserError(f"batch_size {batch_size}: must be a positive number of examples")
        examples = self._examples(inputs)
        outputs, features = predict.predict_outputs(self.run, examples, batch_size)
        records = self.task.prediction_records(examples, outputs, features, self.run.label_names)
        return [_plain(record) for record in records]

    def explain(
        self,
        texts,
        label=None,
        steps: int = 50,
        method: str = "ig",
        baseline: str = "pad",
        batch_size: int = 32,
    ) -> list[dict]:
        """`predict`'s records with word attributions (`jaxft.explain`; `jaxft-predict --explain` writes the
        same): `attributions`, a list of [word, score] in word order (`pair_attributions` for a text pair's
        words), and `explanation` (the explained label, its probability, the output and, for integrated
        gradients, `baseline_output` and `completeness_error`); by label for multi-label runs, by entity
        (lists parallel to `entities`) for NER. `jaxft.explain.render_html(records, path)` and
        `render_png` draw them.

        Args:
          texts: what `predict` takes.
          label: the label to explain instead of the predicted one (multilabel: one or a list; ner: an
            entity type, explaining only its entities).
          steps: integrated gradients' intervals (trapezoid rule; `steps + 1` gradients per explanation).
          method: "ig" (integrated gradients) or "grad_input" (gradient x input: one gradient).
          baseline: "pad", "mask" or "zero": what replaces the words' embeddings at the path's start.
          batch_size: explanations per batch.

        Raises:
          UserError: a QA run ("explain: not implemented for qa"), an input the run cannot read, an unknown
            method, baseline or label, or steps < 1.
        """
        if batch_size < 1:
            raise UserError(f"batch_size {batch_size}: must be a positive number of examples")
        examples = self._examples(texts)
        records = explain_lib.explain(
            self.run,
            examples,
            label=label,
            steps=steps,
            method=method,
            baseline=baseline,
            batch_size=batch_size,
        )
        return [_plain(record) for record in records]

    def embed(self, texts, batch_size: int = 128, pooling: str = "mean") -> np.ndarray:
        """The run's encoder vectors for `texts` (a text, texts, (text, pair) tuples or dicts, as
        `predict` takes them), `[N, hidden]` float32: the mean of the last layer over each input's tokens
        ("mean") or its first token's vector ("cls"). PEFT layers of the run are applied."""
        if batch_size < 1:
            raise UserError(f"batch_size {batch_size}: must be a positive number of examples")
        data = self.run.config.data
        examples = readers.read_examples(
            self._write_inputs(texts),
            text_field=data.text_field,
            label_field=None,
            text_pair_field=data.text_pair_field,
            fmt="jsonl",
            require_label=False,
        )
        return predict.embed(self.run, examples, batch_size, pooling)

    def _data_config(self) -> ml_collections.ConfigDict:
        data = copy.deepcopy(self.run.config.data)
        data.format = "jsonl"
        return data

    def _write_inputs(self, inputs) -> str:
        """`inputs` as a JSONL file of the run's fields, in a temporary directory (removed with `self`)."""
        data = self.run.config.data
        if isinstance(inputs, str):
            inputs = [inputs]
        if hasattr(inputs, "columns") or hasattr(inputs, "column_names"):
            rows = rows_of(inputs, "inputs")
        elif isinstance(inputs, Sequence):
            rows = [self._row(item, i, data) for i, item in enumerate(inputs)]
        else:
            kind = type(inputs).__name__
            raise UserError(f"inputs: expected texts, pairs, dicts or a DataFrame, not {kind}")
        if not rows:
            raise UserError("inputs: nothing to predict")
        if not hasattr(self, "_tmp"):
            self._tmp = tempfile.TemporaryDirectory(prefix="jaxft-predict-")
        path = os.path.join(self._tmp.name, "inputs.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.write(_jsonl_text(rows, "inputs"))
        return path

    @staticmethod
    def _row(item, i: int, data) -> dict:
        if isinstance(item, str):
            return {data.text_field: item}
        if isinstance(item, tuple | list) and len(item) == 2 and all(isinstance(t, str) for t in item):
            if data.text_pair_field is None:
                raise UserError(f"inputs[{i}]: a pair, but the run reads single texts (no text_pair_field)")
            return {data.text_field: item[0], data.text_pair_field: item[1]}
        if isinstance(item, Mapping):
            return {str(k): _plain(v) for k, v in item.items()}
        kind = type(item).__name__
        raise UserError(f"inputs[{i}]: expected a text, a (text, pair) tuple or a dict, not {kind}")

    def _examples(self, inputs) -> list:
        path = self._write_inputs(inputs)
        try:
            return self.task.read(path, self._data_config(), require_label=False)
        except UserError as error:  # name the input, not the temporary file
            message = re.sub(re.escape(path) + r":(\d+)", lambda m: f"inputs[{int(m[1]) - 1}]", str(error))
            raise UserError(message.replace(path, "inputs")) from None
