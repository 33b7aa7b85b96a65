"""Deletion test of word attributions: does cutting the top-attributed words hurt more than random ones?

    python bench/explain_deletion.py --workdir runs/demo                        # the run's dev split
    python bench/explain_deletion.py --workdir runs/demo --max-examples 50 --method grad_input
    python bench/explain_deletion.py --workdir runs/sst2 --input DATA/sst2/dev.tsv --ks 1,3,5 --steps 50

For each example of the split (the run's data.eval_path unless --input; the first --max-examples), the run
predicts a label with probability p, and `jaxft.explain` attributes that prediction to its words. Then k
words are deleted from the text (their characters cut out, the spaces around them closed up) in two ways:

* top-k: the k words with the highest attribution (the words that raised the predicted label's logit most);
* random-k: k words drawn uniformly (numpy's default_rng seeded with --seed and the example's index),
  averaged over --repeats draws.

and the run predicts again. The score of a way is the mean drop of the originally predicted label's
probability, p - p', over the examples (an example with fewer than k words loses all of them). Faithful
attributions give top-k a clearly larger drop than random-k at every k. Prints a markdown table for each k
(top-k, random-k, their difference) and one JSON line with the settings; tasks: classification and pet,
single texts or pairs (a pair's words compete with the text's).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxft import explain, predict, tasks  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained classification (or pet) run")
    parser.add_argument("--input", default=None, help="examples to explain (default: the run's eval split)")
    parser.add_argument("--max-examples", type=int, default=None, help="the first N examples only")
    parser.add_argument("--ks", default="1,3,5", help="numbers of words to delete, comma-separated")
    parser.add_argument("--method", default="ig", choices=explain.METHODS)
    parser.add_argument("--steps", type=int, default=50, help="integrated gradients' intervals")
    parser.add_argument("--baseline", default="pad", choices=explain.BASELINES)
    parser.add_argument("--seed", type=int, default=0, help="seeds the random deletions")
    parser.add_argument("--repeats", type=int, default=3, help="random deletions averaged per example and k")
    parser.add_argument("--batch-size", type=int, default=32)
    return parser.parse_args(argv)


def without_words(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with the characters of `spans` cut out and the whitespace left behind closed up."""
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + " " + text[end:]
    return " ".join(text.split())


def deleted(example, words: explain.Words, chosen) -> object:
    """`example` with the words `chosen` (indices into `words`) cut out of its text and text pair."""
    by_segment = {0: [], 1: []}
    for i in chosen:
        by_segment[words.segments[i]].append(words.spans[i])
    text = without_words(example.text, by_segment[0])
    pair = example.text_pair
    if pair is not None:
        pair = without_words(pair, by_segment[1])
    return dataclasses.replace(example, text=text, text_pair=pair)


def main(argv=None) -> None:
    args = parse_args(argv)
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    started = time.time()
    run = predict.load_run(args.workdir)
    task = tasks.from_config(run.config)
    if task.name not in ("classification", "pet"):
        raise SystemExit(f"error: the deletion test takes classification or pet runs, not {task.name}")
    path = args.input or run.config.data.eval_path
    examples = task.read(path, run.config.data, require_label=False)[: args.max_examples]
    records = explain.explain(
        run,
        examples,
        steps=args.steps,
        method=args.method,
        baseline=args.baseline,
        batch_size=args.batch_size,
    )
    features = task.features_for_prediction(examples, run.tokenizer, run.config.data.max_seq_length)
    words = explain.example_words(task, examples, features, run.tokenizer, run.config.data.max_seq_length)
    label_index = [run.label_names.index(r["label"]) for r in records]
    before = np.array([r["probabilities"][r["label"]] for r in records])
    variants, owners = [], []  # (way, k) of each deleted example
    for i, (example, record, example_words) in enumerate(zip(examples, records, words, strict=True)):
        scores = np.array([s for _, s in record["attributions"] + record.get("pair_attributions", [])])
        for k in ks:
            top = np.argsort(-scores, kind="stable")[:k]
            variants.append(deleted(example, example_words, top))
            owners.append((i, "top", k))
            rng = np.random.default_rng([args.seed, i, k])
            for _ in range(args.repeats):
                pick = rng.permutation(len(scores))[:k]
                variants.append(deleted(example, example_words, pick))
                owners.append((i, "random", k))
    after = predict.predict_probabilities(run, variants, args.batch_size)
    drops = {}
    for (i, way, k), probabilities in zip(owners, after, strict=True):
        drops.setdefault((way, k), {}).setdefault(i, []).append(before[i] - probabilities[label_index[i]])
    print(f"{len(examples)} examples of {path}; method {args.method}, baseline {args.baseline}, "
          f"steps {args.steps}; random: {args.repeats} draws, seed {args.seed}")  # fmt: skip
    print("\n| k | top-k drop | random-k drop | difference |\n|---|---|---|---|")
    table = {}
    for k in ks:
        top = float(np.mean([np.mean(v) for v in drops[("top", k)].values()]))
        random = float(np.mean([np.mean(v) for v in drops[("random", k)].values()]))
        table[k] = {"top": top, "random": random}
        print(f"| {k} | {top:.4f} | {random:.4f} | {top - random:+.4f} |")
    summary = {
        "workdir": args.workdir,
        "input": path,
        "examples": len(examples),
        "method": args.method,
        "baseline": args.baseline,
        "steps": args.steps,
        "seed": args.seed,
        "repeats": args.repeats,
        "drops": table,
        "seconds": round(time.time() - started, 1),
    }
    print("\n" + json.dumps(summary))


if __name__ == "__main__":
    main()
