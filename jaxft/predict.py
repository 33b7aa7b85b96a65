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
Uses the run's best checkpoint (else its newest), its label set and its saved tokenizer, so a workdir is all
it needs. Bad input ends with one `error:` line on stderr and exit status 2; --batch-size and --output are
checked before anything is loaded. Missing parent directories of --output are created, and an existing
--output is replaced only once all predictions are written.
"""

import argparse
import dataclasses
import json
import os
import sys

import jax
import ml_collections
import numpy as np
import tqdm

from jaxft import checkpoint, files, parallel, steps, tasks, trained
from jaxft.data import batching, tokenize
from jaxft.data import labels as labels_lib
from jaxft.errors import StorageError, UserError
from jaxft.models.bert import BertConfig


@dataclasses.dataclass
class TrainedRun:
    """What a finished (or running) workdir holds: enough to predict and to export."""

    config: ml_collections.ConfigDict
    label_names: list[str]
    bert_config: BertConfig
    params: dict
    tokenizer: object
    step: int


def load_run(workdir: str) -> TrainedRun:
    """Loads a workdir's config, labels, tokenizer and best (else newest) parameters.

    Raises:
      UserError: `workdir` is not a jaxft run or has no checkpoint yet.
    """
    from jaxft import train  # deferred: train imports this module's neighbours, not the other way round

    paths = {name: os.path.join(workdir, name) for name in ("config.json", "labels.json", train.MODEL_CONFIG)}
    for path in paths.values():
        if not os.path.exists(path):
            raise UserError(f"{workdir}: not a jaxft workdir ({os.path.basename(path)} is missing)")
    with open(paths["config.json"]) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if "task" not in config:  # a run from before tasks existed: classification
        config.task = ml_collections.ConfigDict(tasks.DEFAULTS)
    with open(paths[train.MODEL_CONFIG]) as f:
        bert_config = BertConfig.from_dict(json.load(f))
    label_names = labels_lib.load_label_vocab(paths["labels.json"])
    tokenizer = tokenize.load_tokenizer(os.path.join(workdir, train.TOKENIZER_DIR))
    tasks.from_config(config).prepare_tokenizer(tokenizer)  # no-op: the saved tokenizer has them already
    model = train.create_model(config, bert_config, len(label_names), tokenizer)
    template = jax.device_get(trained.initial_params_shape(model, config))
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
    _, step = checkpoint.find_checkpoint(workdir, key="--workdir")
    params = trained.load_params(workdir, template, model, key="--workdir")
    return TrainedRun(config, label_names, bert_config, params, tokenizer, step)


def predict_outputs(
    run: TrainedRun, examples: list, batch_size: int = 128, progress: bool = False
) -> tuple[np.ndarray, dict]:
    """The task's outputs for `examples` in their order, and their features.

    Outputs: class probabilities [N, labels] (classification), values [N] (regression), label probabilities
    [N, labels] (multilabel), predicted tag ids per position [N, max_seq_length] (ner), start / end logits
    per window and position [windows, max_seq_length, 2] (qa).
    """
    from jaxft import train

    task = tasks.from_config(run.config)
    model = train.create_model(run.config, run.bert_config, len(run.label_names), run.tokenizer)
    features = task.features_for_prediction(examples, run.tokenizer, run.config.data.max_seq_length)
    buckets = batching.bucket_lengths(run.config.data.max_seq_length, run.config.data.num_buckets)
    batch_size = parallel.eval_batch_size(batch_size)
    # The run's own layout: "fsdp" keeps parameters too large to replicate sharded here as in training.
    parallelism = parallel.from_config(run.config.training)
    p_predict = parallelism.eval_step(steps.predict_step, model=model, task=task)
    params = parallelism.place_params(run.params)
    out = None
    plan = batching.eval_batch_plan(features["length"], buckets, batch_size)
    for seq_len, indices in tqdm.tqdm(plan, desc="predict", unit="batch", disable=not progress):
        batch = batching.make_batch(features, None, indices, seq_len, batch_size)
        outputs = np.asarray(p_predict(params, parallel.split_for_devices(batch)))
        outputs = outputs.reshape(batch_size, *outputs.shape[2:])  # [devices, rows, ...] -> [rows, ...]
        if out is None:  # one row per example (QA: per context window)
            out = np.zeros((len(features["length"]), *outputs.shape[1:]), outputs.dtype)
        out[indices] = outputs[: len(indices)]
    return out, features


def predict_probabilities(
    run: TrainedRun, examples: list, batch_size: int = 128, progress: bool = False
) -> np.ndarray:
    """Class probabilities [N, labels] for `examples`, in their order (a classification run)."""
    return predict_outputs(run, examples, batch_size, progress)[0]


def check_output(path: str) -> None:
    """Raises UserError if `path` cannot become the output file, before any inference is spent on it.

    Missing parent directories are fine: they are created when the predictions are written.
    """
    if os.path.isdir(path):
        raise UserError(f"--output {path}: is a directory (give a file name)")
    above = files.nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(above):
        raise UserError(f"--output {path}: {above} is a file, not a directory")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UserError(f"--output {path}: directory {above} is not writable")


def write_predictions(path: str, records) -> None:
    """Writes `records` as JSONL, atomically, record by record; creates missing parent directories."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_atomic(path, (json.dumps(record) + "\n" for record in records))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxft-predict", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a jaxft training run's directory")
    parser.add_argument("--input", required=True, help="CSV / TSV / JSONL file (optionally .gz) of texts")
    parser.add_argument("--output", required=True, help="JSONL file to write (one object per input)")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per batch (default 128)")
    args = parser.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise UserError(f"--batch-size {args.batch_size}: must be a positive number of examples")
        check_output(args.output)
        run = load_run(args.workdir)
        task = tasks.from_config(run.config)
        examples = task.read(args.input, run.config.data, require_label=False)
        outputs, features = predict_outputs(run, examples, args.batch_size, progress=True)
        records = task.prediction_records(examples, outputs, features, run.label_names)
        try:
            write_predictions(args.output, records)
        except OSError as error:  # e.g. the disk filled up: the old file stays as it was
            raise StorageError(f"--output {args.output}: {files.os_reason(error)}") from None
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # reading the run or the input, or anything else the machine refused
        print(f"error: {files.storage_error(error, args.workdir)}", file=sys.stderr)
        return 2
    print(f"wrote {len(examples)} predictions to {args.output} (parameters of step {run.step})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
