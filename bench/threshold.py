"""A multi-label run's decision threshold chosen on dev, then applied once to test (GoEmotions' protocol).

    python bench/threshold.py --workdir runs/bench_goemotions --out runs/bench/goemotions_threshold.json

Reads the run's dev and test files (its config's data.eval_path and data.test_path), predicts each label's
probability with the run's best parameters (`jaxft.load`), and picks the one threshold, shared by all labels,
that maximises macro-F1 on dev over 0.05, 0.10, ..., 0.95; prints dev and test macro- and micro-F1 at 0.5
and at that threshold (scikit-learn's `f1_score`). The test split is not looked at until the threshold is
fixed.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jaxft  # noqa: E402
from jaxft import predict  # noqa: E402


def scores(truth: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import f1_score

    predicted = (probabilities > threshold).astype(np.int64)
    return {
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    predictor = jaxft.load(args.workdir)
    run, task = predictor.run, predictor.task
    splits = {}
    for name, path in (("dev", run.config.data.eval_path), ("test", run.config.data.test_path)):
        examples = task.read(path, run.config.data)
        probabilities, _ = predict.predict_outputs(run, examples)
        splits[name] = (task.encode(examples, run.label_names).astype(np.int64), probabilities)
    grid = [round(0.05 * i, 2) for i in range(1, 20)]
    dev_macro = [scores(*splits["dev"], t)["macro_f1"] for t in grid]
    chosen = grid[int(np.argmax(dev_macro))]
    result = {
        "workdir": args.workdir,
        "params_step": run.step,
        "threshold": chosen,
        "dev_macro_f1_by_threshold": dict(zip(map(str, grid), dev_macro, strict=True)),
        **{f"{name}@0.5": scores(*splits[name], 0.5) for name in splits},
        **{f"{name}@chosen": scores(*splits[name], chosen) for name in splits},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "dev_macro_f1_by_threshold"}, indent=2))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
