"""Inference with a trained run: `python -m jaxft.predict --workdir W --input F.jsonl|.csv --output P.jsonl`.

Writes one JSON object per input example, in input order, by task:
- classification: the text (and text pair), the predicted `label` and `probabilities` of every label;
- pet: the same as classification (the texts are written into the run's task.template first);
- regression: the text (pair) and the predicted value, under the name of the run's label field;
- multilabel: the text (pair), the predicted `labels` (probability above task.threshold) and `probabilities`;
- ner: the `words`, a tag per word (`tags`; words beyond max_seq_length get "O") and the `entities` (type,
  first word, last word + 1, text). Input: a CoNLL file (first column = word; tags, if any, are ignored), or
  CSV / TSV / JSONL whose text field is split on whitespace.
- qa: the question `id`, `question`, `answer` (text), its character `start` in the context and `score`.
  Input: a SQuAD JSON file, or CSV / TSV / JSONL with the question in data.text_field and the context in
  data.text_pair_field.
- relation: the `text`, the `head` and `tail` spans, the predicted `label` and `probabilities`. Input: JSONL
  as for training (the label may be absent).
Uses the run's best checkpoint (else its newest; a damaged one is skipped for the next), its label set and
its saved tokenizer, so a workdir is all it needs; each of its files is checked as training checked it
(`load_run`). Bad input ends with one `error:` line on stderr and exit status 2; --batch-size and --output
are checked before anything is loaded (an --output that is the --input file, under any name, is refused),
and an input without examples is an error. Missing parent directories of --output are created, and an
existing --output is replaced only once all predictions are written.

`--explain` adds word attributions to every line (`jaxft.explain`; not for qa): `attributions`, a list of
[word, score] pairs in word order (a list, not an object: a text may hold a word twice), `pair_attributions`
for a text pair's words, and `explanation` (the explained label, its probability, `output`, and for
integrated gradients `baseline_output` and `completeness_error`); multilabel lines hold them by label, NER
lines as lists parallel to `entities`. `--explain-method ig` (integrated gradients, `--explain-steps`
intervals, `--explain-baseline` pad|mask|zero) or `grad_input`; `--explain-label` explains that label
instead of the predicted one. `--html PAGE.html` also draws them: the page, and PAGE.png beside it.
"""

import dataclasses
import functools
import json
import os
import sys
import types
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags

from jaxft import cli, files, tasks
from jaxft import config as config_lib
from jaxft import explain as explain_lib
from jaxft.data import labels as labels_lib
from jaxft.data import tokenize
from jaxft.errors import StorageError, UserError
from jaxft.models import convert
from jaxft.strategies import checks as strategy_checks
from jaxft.training import checkpoint, inference, steps, trained
from jaxft.training.model import create_encoder, create_model
from jaxft.training.workdir import MODEL_CONFIG, TOKENIZER_DIR, TUNED


@dataclasses.dataclass
class TrainedRun:
    """What a finished (or running) workdir holds: enough to predict and to export."""

    config: ml_collections.ConfigDict
    label_names: list[str]
    bert_config: Any  # the encoder's config, of any family (jaxft.models.families)
    params: dict
    tokenizer: object
    step: int


def check_run_config(config: ml_collections.ConfigDict, path: str) -> None:
    """Runs the checks training ran on its config on a run's config.json read back (hand edits included).

    Raises:
      UserError: naming `path` and the key.
    """
    try:
        config_lib.check(config)
        tasks.best_metric(config, tasks.from_config(config))
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    except (KeyError, AttributeError, TypeError, ValueError) as error:  # a section or key missing, a type
        raise UserError(f"{path}: not a jaxft run config ({type(error).__name__}: {error})") from None


def check_labels(workdir: str, label_names: list[str], path: str) -> None:
    """Raises `UserError` unless `label_names` (from `path`) are those the run's checkpoints were trained
    with: an edited labels.json would silently rename every output."""
    for where, recorded in checkpoint.saved_labels(workdir).items():
        if recorded != label_names:
            raise UserError(
                f"{path}: the label set {label_names} differs from {recorded}, which {where} was trained with"
            )


def tuned_threshold(path: str) -> float:
    """The multi-label threshold a run's final reports chose on its eval split (WORKDIR/tuned.json).

    Raises:
      UserError: naming `path`, where it holds no threshold in (0, 1).
    """
    threshold = files.read_json_object(path).get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise UserError(f"{path}: 'threshold' must be a number in (0, 1), not {threshold!r}")
    return float(threshold)


def load_run(workdir: str) -> TrainedRun:
    """Loads a workdir's config, labels, tokenizer and best (else newest) parameters.

    Everything read back is checked as training checked it before use: config.json by `jaxft.config.check`
    (the keys an older jaxft did not write take jaxft/configs/default.py's values), `data.max_seq_length`
    against model_config.json's position table, model_config.json as a model config, labels.json against the
    labels the checkpoints recorded, and the tokenizer against the model's vocabulary
    (`tokenize.check_fits_model`). A multi-label run that tuned its threshold (task.tune_threshold) predicts
    at the one its final reports chose (tuned.json).

    Raises:
      UserError: `workdir` is not a jaxft run, has no checkpoint yet, or one of its files fails a check.
    """
    paths = {name: os.path.join(workdir, name) for name in ("config.json", "labels.json", MODEL_CONFIG)}
    for path in paths.values():
        if not os.path.exists(path):
            raise UserError(f"{workdir}: not a jaxft workdir ({os.path.basename(path)} is missing)")
    config = config_lib.with_defaults(files.read_json_object(paths["config.json"]))  # an older run's too
    check_run_config(config, paths["config.json"])
    tuned = os.path.join(workdir, TUNED)
    if config.task.name == "multilabel" and config.task.tune_threshold and os.path.exists(tuned):
        config.task.threshold = tuned_threshold(tuned)  # what the final reports chose on the eval split
    checkpoint.find_checkpoint(workdir, key="--workdir")  # none yet: say so before the checks below
    try:
        bert_config = convert.config_from_dict(files.read_json_object(paths[MODEL_CONFIG]))
    except (UserError, TypeError) as error:
        raise UserError(f"{paths[MODEL_CONFIG]}: {error}") from None
    try:
        tokenize.check_max_seq_length(config.data.max_seq_length, bert_config.max_positions)
        strategy_checks.check_positions(config, bert_config.max_positions)
    except UserError as error:
        raise UserError(f"{paths['config.json']}: {error} (of {paths[MODEL_CONFIG]})") from None
    label_names = labels_lib.load_label_vocab(paths["labels.json"])
    check_labels(workdir, label_names, paths["labels.json"])
    tokenizer_dir = os.path.join(workdir, TOKENIZER_DIR)
    tokenizer = tokenize.load_tokenizer(tokenizer_dir)
    tasks.from_config(config).prepare_tokenizer(tokenizer)  # no-op: the saved tokenizer has them already
    tokenize.check_fits_model(tokenizer, bert_config.vocab_size, bert_config.pad_token_id, tokenizer_dir)
    model = create_model(config, bert_config, len(label_names), tokenizer)
    template = jax.device_get(trained.initial_params_shape(model, config))
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
    params, step = trained.load_params(workdir, template, model, key="--workdir")
    return TrainedRun(config, label_names, bert_config, params, tokenizer, step)


def predict_outputs(
    run: TrainedRun, examples: list, batch_size: int = 128, progress: bool = False
) -> tuple[np.ndarray, dict]:
    """The task's outputs for `examples` in their order, and their features.

    Outputs: class probabilities [N, labels] (classification; under data.long_inputs="windows" the softmax
    of the mean of each text's window logits, one row per text), values [N] (regression), label
    probabilities [N, labels] (multilabel), predicted tag ids per position [N, max_seq_length] (ner),
    start / end logits per window and position [windows, max_seq_length, 2] (qa). The features have a row
    per window where there are windows.
    """
    task = tasks.from_config(run.config)
    model = create_model(run.config, run.bert_config, len(run.label_names), run.tokenizer)
    features = task.features_for_prediction(examples, run.tokenizer, run.config.data.max_seq_length)
    step = functools.partial(steps.predict_step, model=model, task=task)
    out = run_batches(run, features, step, batch_size, progress)
    return task.combine_rows(out, features, len(examples)), features


def embed(run: TrainedRun, examples: list, batch_size: int = 128, pooling: str = "mean") -> np.ndarray:
    """Pooled vectors [N, hidden] of the run's encoder (PEFT layers included) for `examples`' texts (pairs),
    tokenised as classification does (`steps.embed_step` says what "mean" and "cls" pool)."""
    if pooling not in ("mean", "cls"):
        raise UserError(f"pooling {pooling!r}: must be 'mean' or 'cls'")
    model = create_encoder(run.config, run.bert_config)
    features = tokenize.tokenize(examples, run.tokenizer, run.config.data.max_seq_length)[0]
    step = functools.partial(steps.embed_step, model=model, pooling=pooling)
    return run_batches(run, features, step, batch_size)


def run_batches(run: TrainedRun, features: dict, step, batch_size: int = 128, progress: bool = False):
    """`step(params, batch)`'s rows for every example of `features`, in their order, over the run's devices
    in length buckets (the last batch padded and its padding dropped): `jaxft.training.inference`."""
    return inference.run_batches(run.config, run.params, features, step, batch_size, progress)


def predict_probabilities(
    run: TrainedRun, examples: list, batch_size: int = 128, progress: bool = False
) -> np.ndarray:
    """Class probabilities [N, labels] for `examples`, in their order (a classification run)."""
    return predict_outputs(run, examples, batch_size, progress)[0]


def check_output(path: str, input_path: str | None = None, flag: str = "--output") -> None:
    """Raises UserError (naming `path` as `flag`) if `path` cannot become the output file, before any
    inference is spent on it.

    Missing parent directories are fine: they are created when the predictions are written. The input file
    (under any name: a link, a relative path) is refused: the predictions would replace it.
    """
    if input_path is not None and os.path.exists(path) and os.path.exists(input_path):
        if os.path.samefile(path, input_path):
            raise UserError(f"{flag} {path}: is the --input file; the predictions would replace it")
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a directory (give a file name)")
    above = files.nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(above):
        raise UserError(f"{flag} {path}: {above} is a file, not a directory")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: directory {above} is not writable")


def write_predictions(path: str, records) -> None:
    """Writes `records` as JSONL, atomically, record by record; creates missing parent directories.

    Raises:
      ValueError: a record holds NaN or infinity (no JSON); nothing is written then.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_atomic(path, (json.dumps(record, allow_nan=False) + "\n" for record in records))


def _png_beside(page: str) -> str:
    """The PNG that `--html PAGE` writes beside the page: the same name with the suffix .png."""
    return os.path.splitext(page)[0] + ".png"


def _flags() -> flags.FlagValues:
    """The command line's flags, defined afresh for each call of `main` (no value left from the last)."""
    values = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "A jaxft training run's directory.", flag_values=values)
    flags.DEFINE_string(
        "input", None, "CSV / TSV / JSONL file (optionally .gz) of texts.", flag_values=values
    )
    flags.DEFINE_string("output", None, "JSONL file to write (one object per input).", flag_values=values)
    flags.DEFINE_integer("batch-size", 128, "Examples per batch.", flag_values=values)
    flags.DEFINE_boolean("explain", False, "Add word attributions to every line.", flag_values=values)
    flags.DEFINE_enum(
        "explain-method",
        "ig",
        explain_lib.METHODS,
        "ig: integrated gradients; grad_input: gradient x input.",
        flag_values=values,
    )
    flags.DEFINE_integer("explain-steps", 50, "Integrated gradients' intervals.", flag_values=values)
    flags.DEFINE_enum(
        "explain-baseline",
        "pad",
        explain_lib.BASELINES,
        "Integrated gradients' baseline.",
        flag_values=values,
    )
    flags.DEFINE_string(
        "explain-label", None, "Explain this label (ner: entity type), not the predicted.", flag_values=values
    )
    flags.DEFINE_string(
        "html",
        None,
        "With --explain: write this HTML page of the attributions, and a PNG beside it.",
        flag_values=values,
    )
    return values


def main(argv=None) -> int:
    """Entry point of `python -m jaxft.predict` and `jaxft-predict`; `argv`: the flags (sys.argv[1:])."""
    values = _flags()
    argv = sys.argv[1:] if argv is None else list(argv)
    names = ("workdir", "input", "output", "batch-size", "explain", "explain-method", "explain-steps")
    names += ("explain-baseline", "explain-label", "html")
    cli.no_leftovers(cli.parse(values, ["jaxft-predict", *argv], __doc__, "jaxft-predict", names))
    cli.require(values, names[:3])
    args = types.SimpleNamespace(
        workdir=values.workdir,
        input=values.input,
        output=values.output,
        batch_size=values["batch-size"].value,
        html=values.html,
    )
    try:
        if args.batch_size < 1:
            raise UserError(f"--batch-size {args.batch_size}: must be a positive number of examples")
        check_output(args.output, args.input)
        if args.html is not None:
            if not values.explain:
                raise UserError("--html draws attributions: give --explain too")
            check_output(args.html, args.input, flag="--html")
            output = os.path.abspath(args.output)
            if output in (os.path.abspath(args.html), os.path.abspath(_png_beside(args.html))):
                raise UserError(
                    f"--html {args.html}: its page or picture would replace --output {args.output}"
                )
        if values.explain and values["explain-steps"].value < 1:
            steps_given = values["explain-steps"].value
            raise UserError(f"--explain-steps {steps_given}: must be a positive number of intervals")
        run = load_run(args.workdir)
        task = tasks.from_config(run.config)
        examples = task.read(args.input, run.config.data, require_label=False)
        if not examples:
            raise UserError(f"--input {args.input}: no examples to predict")
        if values.explain:
            records = explain_lib.explain(
                run,
                examples,
                label=values["explain-label"].value,
                steps=values["explain-steps"].value,
                method=values["explain-method"].value,
                baseline=values["explain-baseline"].value,
                batch_size=args.batch_size,
                progress=True,
            )
        else:
            outputs, features = predict_outputs(run, examples, args.batch_size, progress=True)
            records = task.prediction_records(examples, outputs, features, run.label_names)
        try:
            write_predictions(args.output, records)
        except OSError as error:  # e.g. the disk filled up: the old file stays as it was
            raise StorageError(f"--output {args.output}: {files.os_reason(error)}") from None
        except ValueError:  # NaN or infinity, which JSON cannot hold
            raise UserError(
                f"{args.workdir}: the model gave a non-finite output; nothing was written to {args.output}"
            ) from None
        if args.html is not None:
            try:
                explain_lib.render_html(records, args.html)
                explain_lib.render_png(records, _png_beside(args.html))
            except OSError as error:
                raise StorageError(f"--html {args.html}: {files.os_reason(error)}") from None
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # reading the run or the input, or anything else the machine refused
        print(f"error: {files.storage_error(error, args.workdir)}", file=sys.stderr)
        return 2
    print(f"wrote {len(examples)} predictions to {args.output} (parameters of step {run.step})")
    if args.html is not None:
        print(f"wrote the attributions' page {args.html} and picture {_png_beside(args.html)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
