"""Export a trained run to Hugging Face format: `python -m jaxft.export --workdir W --out DIR`.

Writes `config.json` (BertForSequenceClassification, with the run's labels as id2label / label2id),
`model.safetensors` and the tokenizer files, so that transformers' PyTorch classes load the model directly
and give the probabilities `jaxft.predict` gives. Uses the run's best checkpoint, else its newest.
"""

import argparse
import json
import os
import sys

from jaxft.errors import UserError
from jaxft.models import convert


def export(workdir: str, out: str) -> str:
    """Writes the run in `workdir` as a Hugging Face model directory `out`; returns `out`.

    Files are written to a temporary sibling directory and renamed into place, so `out` is never half
    written. An existing non-empty `out` is refused rather than overwritten.
    """
    from safetensors.numpy import save_file

    from jaxft.predict import load_run

    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"--out {out}: exists and is not an empty directory (choose a new one)")
    run = load_run(workdir)
    tensors = convert.flax_to_hf(run.params)
    config = {
        **run.bert_config.to_hf_dict(),
        "architectures": ["BertForSequenceClassification"],
        "num_labels": len(run.label_names),
        "id2label": dict(enumerate(run.label_names)),
        "label2id": {name: i for i, name in enumerate(run.label_names)},
        "problem_type": "single_label_classification",
        "classifier_dropout": run.config.model.classifier_dropout,
    }
    tmp = out.rstrip("/") + ".tmp-export"
    os.makedirs(tmp, exist_ok=True)
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    run.tokenizer.save_pretrained(tmp)
    if os.path.isdir(out):
        os.rmdir(out)
    os.replace(tmp, out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxft-export", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a jaxft training run's directory")
    parser.add_argument("--out", required=True, help="new directory for the Hugging Face model")
    args = parser.parse_args(argv)
    try:
        export(args.workdir, args.out)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.workdir} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
