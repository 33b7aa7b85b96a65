"""Export a trained run to Hugging Face format: `python -m jaxft.export --workdir W --out DIR`.

Writes `config.json`, `model.safetensors` and the tokenizer files, so that transformers' PyTorch classes load
the model directly and give the outputs `jaxft.predict` gives. The architecture follows the run's task:
`BertForSequenceClassification` with `problem_type` "single_label_classification", "regression" or
"multi_label_classification", `BertForTokenClassification` (NER) or `BertForQuestionAnswering` (QA); the
last two have no pooler, nor do our models. A pet run becomes `BertForMaskedLM` (its masked-LM head, decoder
tied to the word embeddings); config.json's `jaxft_prompt` holds the template, the labels and their
verbaliser words: the label probabilities are the softmax of its logits at the [MASK] over those words'
tokens, for the template filled in as `jaxft.tasks.pet` does. A relation run exports with
`task.relation_pooling="cls"` only (as `BertForSequenceClassification`, whose inputs carry the entity
markers, which the exported tokenizer holds); "markers" pooling has no Hugging Face class and is refused.
The run's labels are id2label / label2id. Uses the run's best checkpoint, else its newest.

`README.md` is the model card (`jaxft.card`): the Hub's metadata (pipeline tag, base model, datasets, the
final metrics as model-index), then the recipe, the data, the labels and the final reports.
`--push-to-hub OWNER/NAME [--private]` then uploads the directory to the Hugging Face Hub.
"""

import json
import os
import secrets
import shutil
import sys

from absl import flags

from jaxft import card, cli, files, tasks
from jaxft.errors import UserError
from jaxft.models import convert, families
from jaxft.predict import load_run
from jaxft.strategies import peft as peft_lib
from jaxft.training import trained


def export(workdir: str, out: str, base_model: str | None = None) -> str:
    """Writes the run in `workdir` as a Hugging Face model directory `out`; returns `out`.

    Files are written to a new temporary sibling directory of this export's own (never one a crashed export
    left) and renamed into place, so `out` is never half written and holds nothing else. An existing
    non-empty `out`, or a file there, is refused rather than overwritten. `base_model`: the Hub id the card
    names as the base model (default: found from the run's checkpoint, `card.base_model`).
    """
    from safetensors.numpy import save

    files.check_directory_path(out, "--out")
    if os.path.isdir(out) and os.listdir(out):
        raise UserError(f"--out {out}: exists and is not an empty directory (choose a new one)")
    saved = trained.saved_config(workdir)
    peft = peft_lib.from_config(saved) if saved is not None else peft_lib.PeftConfig()
    if peft.method in ("adapter", "prompt", "prefix"):
        raise UserError(
            f"peft.method={peft.method!r} adds layers or inputs that a plain Hugging Face model lacks; "
            "use jaxft.predict with this workdir (lora and bitfit runs export)"
        )
    run = load_run(workdir)
    family = families.of(run.bert_config)
    params = dict(peft_lib.merge_lora(run.params, peft))  # LoRA folded into the kernels
    qa_head = params.pop("qa_outputs", None)
    if qa_head is not None:  # converted as a classifier, then named as the family's QA class names it
        params["classifier"] = qa_head
    tensors = convert.flax_to_hf(params, family)
    if qa_head is not None:
        qa = family.qa_name + "."
        tensors = {name.replace("classifier.", qa, 1): value for name, value in tensors.items()}
    config = {
        **run.bert_config.to_hf_dict(),
        **tasks.from_config(run.config).export_config(run.label_names),
    }
    if run.config.model.classifier_dropout is not None:  # else the family's own default stays
        config["classifier_dropout"] = run.config.model.classifier_dropout
    # The tasks name BERT's classes; the family's have the same suffixes (RobertaForTokenClassification).
    config["architectures"] = [
        family.class_prefix + name.removeprefix("Bert") for name in config["architectures"]
    ]
    # A directory of our own, new and empty: a fixed name would pick up what a crashed export left there.
    tmp = f"{out.rstrip('/')}.tmp-export-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        os.mkdir(tmp)
        # Written by us, not by safetensors' save_file, whose file is owner-only (0600): this way it gets
        # the umask's mode, as the other files do.
        with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
            f.write(save(tensors, metadata={"format": "pt"}))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        run.tokenizer.save_pretrained(tmp)
        card_config = run.config.copy_and_resolve_references()
        if base_model:
            card_config.model.checkpoint = base_model
        name, architecture = os.path.basename(os.path.abspath(out)), config["architectures"][0]
        text = card.model_card(workdir, card_config, run.label_names, name, architecture)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(text)
        if os.path.isdir(out):
            os.rmdir(out)
        os.replace(tmp, out)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):  # a full or read-only disk
            raise files.storage_error(error, out, "exporting") from None
        raise
    return out


def _flags() -> flags.FlagValues:
    """The command line's flags, defined afresh for each call of `main` (no value left from the last)."""
    values = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "A jaxft training run's directory.", flag_values=values)
    flags.DEFINE_string("out", None, "New directory for the Hugging Face model.", flag_values=values)
    flags.DEFINE_string(
        "push-to-hub", None, "Then upload it to this Hub repository (OWNER/NAME).", flag_values=values
    )
    flags.DEFINE_bool("private", False, "With --push-to-hub: a private repository.", flag_values=values)
    flags.DEFINE_string("base-model", None, "The base model's Hub id, for the card.", flag_values=values)
    return values


def main(argv=None) -> int:
    """Entry point of `python -m jaxft.export` and `jaxft-export`; `argv`: the flags (sys.argv[1:])."""
    values = _flags()
    argv = sys.argv[1:] if argv is None else list(argv)
    names = ("workdir", "out", "push-to-hub", "private", "base-model")
    cli.no_leftovers(cli.parse(values, ["jaxft-export", *argv], __doc__, "jaxft-export", names))
    cli.require(values, ("workdir", "out"))
    args = values
    repo_id = values["push-to-hub"].value
    try:
        export(args.workdir, args.out, values["base-model"].value)
        if repo_id:
            print(f"exported {args.workdir} to {args.out}")
            url = card.push(args.out, repo_id, private=values.private)
            print(f"uploaded {args.out} to {url}")
            return 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # reading the run, or anything else the machine refused
        print(f"error: {files.storage_error(error, args.workdir)}", file=sys.stderr)
        return 2
    print(f"exported {args.workdir} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
