"""The model card of an exported run (`README.md` in the Hugging Face Hub's convention) and the Hub upload.

The card opens with the Hub's YAML metadata: `library_name` (transformers, which loads the directory), the
`pipeline_tag` of the task, `base_model` (the checkpoint's Hub id, where known), `datasets` (Hub or TFDS names
the run read), `tags` and `model-index` with the final metrics of every split the run evaluated. Then the
recipe (the config's training keys), the data, the label set, the final report as the run printed it, and how
it was measured (the step of the parameters, jaxft's version). Everything is read from the workdir: the card
says what this run measured, nothing else.

`push` uploads an exported directory with `huggingface_hub` (a transformers dependency): the token comes from
`HF_TOKEN` or `huggingface-cli login`; no token, an offline hub (`HF_HUB_OFFLINE=1`) or a network error is one
`UserError` line.
"""

import json
import os
import re

from jaxft import __version__, files
from jaxft.errors import UserError

# Task name -> (the Hub's pipeline tag, its task type and display name in model-index).
PIPELINES = {
    "classification": ("text-classification", "Text Classification"),
    "relation": ("text-classification", "Text Classification"),
    "regression": ("text-classification", "Text Classification"),
    "multilabel": ("text-classification", "Text Classification"),
    "ner": ("token-classification", "Token Classification"),
    "qa": ("question-answering", "Question Answering"),
    "pet": ("fill-mask", "Text Classification"),
    "mlm": ("fill-mask", "Fill-Mask"),
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# model-index lists the task's metrics; the loss and the counts are in the report
_SKIPPED = ("num_examples", "loss", "masked_tokens")


def base_model(config) -> str | None:
    """The Hub id the run started from: `model.checkpoint` itself when it is one, else the checkpoint
    directory's `_name_or_path` when that is one; None for a local checkpoint of unknown origin."""
    checkpoint = config.model.checkpoint
    if checkpoint is None:
        return None
    if _HUB_ID.fullmatch(checkpoint) and not os.path.exists(checkpoint):
        return checkpoint
    try:
        name = files.read_json_object(os.path.join(checkpoint, "config.json")).get("_name_or_path")
    except (OSError, UserError):
        return None
    return name if isinstance(name, str) and _HUB_ID.fullmatch(name) else None


def dataset_names(config) -> list[str]:
    """The Hub / TFDS dataset names among the run's data paths (`hf:NAME...`, `tfds:NAME...`), in order."""
    names = []
    for key in ("train_path", "eval_path", "test_path"):
        path = config.data.get(key)
        if isinstance(path, str) and path.split(":", 1)[0] in ("hf", "tfds"):
            name = path.split(":")[1].split("/")[0] if path.startswith("tfds:") else path.split(":")[1]
            if name not in names:
                names.append(name)
    return names


def _yaml(value, indent: int = 0) -> str:
    """A small YAML writer for the card's metadata (strings JSON-quoted, which YAML reads as strings)."""
    pad = "  " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:\n{_yaml(item, indent + 1)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return "\n".join(lines)
    lines = []
    for item in value:
        if isinstance(item, dict):
            text = _yaml(item, indent + 1)
            lines.append(f"{pad}- {text.lstrip()}")
        else:
            lines.append(f"{pad}- {_scalar(item)}")
    return "\n".join(lines)


def _scalar(value) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return json.dumps(str(value))


def metadata(config, final: dict, model_name: str) -> dict:
    """The card's YAML metadata as a dict (see the module docstring)."""
    task = config.task.name
    pipeline, display = PIPELINES[task]
    meta = {"library_name": "transformers", "pipeline_tag": pipeline, "tags": ["jaxft", task]}
    if config.peft.method != "none":
        meta["tags"].append(f"peft-{config.peft.method}")
    base = base_model(config)
    if base:
        meta["base_model"] = base
    datasets = dataset_names(config)
    if datasets:
        meta["datasets"] = datasets
    results = []
    for split in ("eval", "test"):
        if split not in final:
            continue
        metrics = [
            {"type": name, "value": round(float(value), 4), "name": f"{split} {name}"}
            for name, value in final[split].items()
            if name not in _SKIPPED and isinstance(value, int | float)
        ]
        name = os.path.basename(str(config.data[f"{split}_path"]))
        dataset = {"name": name, "type": "custom", "split": split}
        if datasets:
            dataset["type"] = datasets[0]
        results.append({"task": {"type": pipeline, "name": display}, "dataset": dataset, "metrics": metrics})
    meta["model-index"] = [{"name": model_name, "results": results}]
    return meta


def model_card(workdir: str, config, label_names: list[str], model_name: str, architecture: str) -> str:
    """The README.md of the export of the run in `workdir` (its final_metrics.json and final reports)."""
    final_path = os.path.join(workdir, "final_metrics.json")
    final = files.read_json_object(final_path) if os.path.exists(final_path) else {}
    meta = metadata(config, final, model_name)
    t, o = config.training, config.optimizer
    steps = f"{t.num_train_steps} steps" if t.num_train_steps > 0 else f"{t.num_epochs} epochs"
    recipe = [
        f"- task: `{config.task.name}`; model: {meta.get('base_model', config.model.checkpoint)} "
        f"exported as `{architecture}`",
        f"- {steps}, batch {t.batch_size}, AdamW lr {o.learning_rate} (warm-up: "
        f"{o.warmup_steps or o.warmup_ratio} {'steps' if o.warmup_steps else 'of the steps'}, weight decay "
        f"{o.weight_decay}), max_seq_length {config.data.max_seq_length}, seed {config.seed}",
    ]
    if config.task.name == "multilabel":  # the threshold predict uses: where tuned, load_run put it here
        tuned = final.get("tuned")
        how = f" (chosen on the eval split by {tuned['metric']})" if isinstance(tuned, dict) else ""
        recipe.append(f"- a label is predicted when its probability exceeds {config.task.threshold:g}{how}")
    strategies = [f"peft.method={config.peft.method}"] if config.peft.method != "none" else []
    if config.adversarial.method != "none":
        strategies.append(f"adversarial.method={config.adversarial.method}")
    for key in ("label_smoothing", "rdrop_alpha"):
        if config.regularization[key]:
            strategies.append(f"regularization.{key}={config.regularization[key]}")
    if o.layer_decay != 1.0:
        strategies.append(f"optimizer.layer_decay={o.layer_decay}")
    if strategies:
        recipe.append("- strategies: " + ", ".join(f"`{s}`" for s in strategies))
    data = [f"- {split}: `{config.data[f'{split}_path']}`" for split in ("train", "eval", "test")
            if config.data.get(f"{split}_path")]  # fmt: skip
    shown = ", ".join(f"`{name}`" for name in label_names[:40]) + (" ..." if len(label_names) > 40 else "")
    labels = [f"- labels ({len(label_names)}): {shown}"] if label_names or config.task.name != "mlm" else []
    parts = [
        "---",
        _yaml(meta),
        "---",
        "",
        f"# {model_name}",
        "",
        f"Fine-tuned with [jaxft](https://pypi.org/project/jaxft/) {__version__} (JAX/Flax) and exported to "
        "transformers' format: transformers loads this directory and gives the outputs jaxft gives.",
        "",
        "## Recipe",
        "",
        *recipe,
        "",
        "## Data",
        "",
        *data,
        *labels,
        "",
        "## Results",
        "",
    ]
    if not final:
        parts.append("The run has no final evaluation (no eval or test split, or it did not finish).")
    else:
        step = final.get("params_from_step")
        parts.append(
            f"The parameters of step {step} (the best evaluation by `training.best_metric`), evaluated on "
            "every example of each split by jaxft's exact evaluation:"
        )
        for split in ("eval", "test"):
            path = os.path.join(workdir, "eval", f"final_{split}.txt")
            if split in final and os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    parts += ["", f"### {split}", "", "```", f.read().rstrip(), "```"]
    return "\n".join(parts) + "\n"


def push(out: str, repo_id: str, private: bool = False) -> str:
    """Uploads the exported directory `out` to the Hub repository `repo_id` (created if missing); returns
    the repository's URL.

    Raises:
      UserError: no token, the hub is offline, or the upload failed (one line with the reason).
    """
    import huggingface_hub

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise UserError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set; unset it to upload")
    if huggingface_hub.get_token() is None:
        raise UserError(
            f"--push-to-hub {repo_id}: no Hugging Face token (set HF_TOKEN or run `huggingface-cli login`)"
        )
    api = huggingface_hub.HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=out, repo_id=repo_id, repo_type="model", commit_message="jaxft export")
    except Exception as error:  # network, authentication, a bad repo id: one line, whatever was raised
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise UserError(f"--push-to-hub {repo_id}: the upload failed: {reason}") from None
    return str(url)
