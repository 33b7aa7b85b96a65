"""Inference with a trained run: `python -m jaxft.predict --workdir W --input F.jsonl|.csv --output P.jsonl`.

Writes one JSON object per input example, in input order: its text (and text pair), the predicted label
and a `probabilities` mapping from every label to its probability. Uses the run's best checkpoint (else its
newest), its label set and its saved tokenizer, so a workdir is all it needs.
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

from jaxft import checkpoint, parallel, steps
from jaxft.data import batching, readers, tokenize
from jaxft.data import labels as labels_lib
from jaxft.errors import UserError
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
    with open(paths[train.MODEL_CONFIG]) as f:
        bert_config = BertConfig.from_dict(json.load(f))
    label_names = labels_lib.load_label_vocab(paths["labels.json"])
    tokenizer = tokenize.load_tokenizer(os.path.join(workdir, train.TOKENIZER_DIR))
    model = train.create_model(config, bert_config, len(label_names))
    template = jax.device_get(train.initial_params_shape(model, config))
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
    _, step = checkpoint.find_checkpoint(workdir, key="--workdir")
    params = checkpoint.params_from_workdir(workdir, template, key="--workdir")
    return TrainedRun(config, label_names, bert_config, params, tokenizer, step)


def predict_probabilities(
    run: TrainedRun, examples: list, batch_size: int = 128, progress: bool = False
) -> np.ndarray:
    """Class probabilities [N, labels] for `examples`, in their order."""
    from jaxft import train

    model = train.create_model(run.config, run.bert_config, len(run.label_names))
    features, _ = tokenize.tokenize(examples, run.tokenizer, run.config.data.max_seq_length)
    buckets = batching.bucket_lengths(run.config.data.max_seq_length, run.config.data.num_buckets)
    batch_size = parallel.eval_batch_size(batch_size)
    p_predict = parallel.pmap_eval_step(steps.predict_step, model=model)
    params = parallel.replicate(run.params)
    out = np.zeros((len(examples), len(run.label_names)), np.float32)
    plan = batching.eval_batch_plan(features["length"], buckets, batch_size)
    for seq_len, indices in tqdm.tqdm(plan, desc="predict", unit="batch", disable=not progress):
        batch = batching.make_batch(features, None, indices, seq_len, batch_size)
        probabilities = p_predict(params, parallel.split_for_devices(batch))
        probabilities = np.asarray(probabilities).reshape(batch_size, -1)
        out[indices] = probabilities[: len(indices)]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxft-predict", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a jaxft training run's directory")
    parser.add_argument("--input", required=True, help="CSV / TSV / JSONL file (optionally .gz) of texts")
    parser.add_argument("--output", required=True, help="JSONL file to write (one object per input)")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per batch (default 128)")
    args = parser.parse_args(argv)
    try:
        run = load_run(args.workdir)
        data = run.config.data
        examples = readers.read_examples(
            args.input,
            text_field=data.text_field,
            label_field=None,
            text_pair_field=data.text_pair_field,
            fmt=data.format,
            has_header=data.has_header,
            require_label=False,
        )
        probabilities = predict_probabilities(run, examples, args.batch_size, progress=True)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        for example, row in zip(examples, probabilities, strict=True):
            record = {"text": example.text}
            if example.text_pair is not None:
                record["text_pair"] = example.text_pair
            record["label"] = run.label_names[int(row.argmax())]
            record["probabilities"] = {name: float(p) for name, p in zip(run.label_names, row, strict=True)}
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, args.output)
    print(f"wrote {len(examples)} predictions to {args.output} (parameters of step {run.step})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
