"""Whether a strategy's difference from a baseline holds beyond seed noise: a paired bootstrap interval.

A comparison (`jaxft.compare`) trains every strategy with the same seeds and evaluates it on the same
examples, so a strategy's runs pair with the baseline's by seed, and its predictions with the baseline's by
example. The difference in mean metric then varies for two reasons: another seed (initialisation, data
order, dropout) and another test set drawn from the same population. `paired_difference` resamples both,
in that hierarchy (Efron & Tibshirani 1993; the "seeds and test set" variance of Bouthillier et al. 2021):
each replicate draws the seeds with replacement, then the evaluation examples with replacement (one draw
per evaluation set, applied to both sides and to every seed evaluated on that set, so that the pairing
holds; `data.max_eval_examples` gives each seed a subset of its own), and recomputes each metric from the
examples' predictions (`metric_on_resamples`). The 95% percentile interval of the replicates is the
interval; the difference "holds" when it excludes 0.

The examples' predictions are what a run's final report writes beside it (`jaxft.evaluate.write_examples`)
for the tasks whose metrics are recomputed here: single-label classification (accuracy, macro / weighted
F1, the positive label's F1), multi-label classification (micro / macro / weighted / samples F1, subset
accuracy), regression (Pearson, Spearman, MSE), NER (seqeval's entity-level micro F1, precision, recall from
each sentence's correct, predicted and true entities; token accuracy) and QA (SQuAD's exact match and F1,
means of each question's score). Every one is a function of per-example counts, so a
resample is a vector of multiplicities (how often each example was drawn) and a replicate's metric is a
weighted sum: [replicates, examples] @ [examples, ...]. Where a cell lacks them (another task or metric, a
run from before they were written) only the seeds are resampled, and the table says so. Few seeds make the
seed level coarse (3 seeds give 10 distinct multisets): the interval is then narrower than the seeds'
true spread, which more seeds repair and nothing else does.
"""

import dataclasses
from collections.abc import Mapping

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
_CHUNK = 250  # replicates per batch: [chunk, examples] arrays stay small for 25,000-example test sets

# The metrics recomputed from each task's per-example predictions.
EXAMPLE_METRICS = {
    "classification": ("accuracy", "macro_f1", "weighted_f1", "f1"),
    "multilabel": ("micro_f1", "macro_f1", "weighted_f1", "samples_f1", "subset_accuracy"),
    "regression": ("pearson", "spearman", "mse"),
    "ner": ("f1", "precision", "recall", "accuracy"),
    "qa": ("exact_match", "f1"),
}
# The arrays that the evaluation data alone decide: two cells evaluated the same examples where they agree.
_DATA_KEYS = {
    "classification": ("label",),
    "multilabel": ("label",),
    "regression": ("label",),
    "ner": ("true_entities", "words"),
    "qa": ("question",),
}


@dataclasses.dataclass(frozen=True)
class Evidence:
    """One cell's result: its metric on every evaluation example, and those examples' arrays where its
    final report wrote them (`jaxft.evaluate.read_examples`: "task" and the task's arrays), else None."""

    value: float
    examples: Mapping[str, np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class Difference:
    """A strategy's mean metric minus the baseline's, over the seeds both finished, with its interval.

    Attributes:
      difference: mean over the paired seeds of (strategy's metric - baseline's).
      low, high: the `level` percentile interval of the bootstrap replicates.
      seeds: how many seeds were paired.
      examples: how many distinct evaluation examples were resampled, over the seeds' evaluation sets
        (0: the seeds only).
      resamples: bootstrap replicates (those with a finite metric; a correlation of a constant is NaN).
      level: the interval's coverage.
    """

    difference: float
    low: float
    high: float
    seeds: int
    examples: int
    resamples: int
    level: float = LEVEL

    @property
    def holds(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0

    @property
    def resampled(self) -> str:
        return "seeds × examples" if self.examples else "seeds"


def metric_on_resamples(examples: Mapping[str, np.ndarray], metric: str, counts: np.ndarray) -> np.ndarray:
    """The metric on each resample of the examples.

    Args:
      examples: "task" and its arrays, as `jaxft.evaluate.write_examples` wrote them.
      metric: one of `EXAMPLE_METRICS[task]`.
      counts: [R, N] how often each of the N examples was drawn in each of R resamples (all ones: the
        evaluation itself).

    Returns:
      [R] float64: what the task's report gives on the examples repeated as `counts` says.
    """
    task = str(examples["task"])
    if metric not in EXAMPLE_METRICS.get(task, ()):
        raise ValueError(f"{metric!r} is not recomputed from {task!r} predictions")
    counts = np.asarray(counts, np.float64)
    if task == "classification":
        return _classification(examples, metric, counts)
    if task == "multilabel":
        return _multilabel(examples, metric, counts)
    if task == "ner":
        return _ner(examples, metric, counts)
    if task == "qa":  # each question's score (x100, SQuAD's scale), averaged
        return counts @ np.asarray(examples[metric], np.float64) / counts.sum(1)
    return _regression(examples, metric, counts)


def _f1(tp: np.ndarray, true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """F1 = 2 tp / (true + predicted), 0 where a label is neither true nor predicted (zero_division=0)."""
    denominator = true + predicted
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def _averaged_f1(tp, true, predicted, metric: str) -> np.ndarray:
    """sklearn's averages over the labels [R, L]: "micro" pools the counts, "macro" is the mean of every
    label's F1, "weighted" weighs each by its true count."""
    if metric == "micro_f1":
        return _f1(tp.sum(1), true.sum(1), predicted.sum(1))
    f1 = _f1(tp, true, predicted)
    if metric == "macro_f1":
        return f1.mean(1)
    support = true.sum(1)
    return np.divide((f1 * true).sum(1), support, out=np.zeros_like(support), where=support > 0)


def _classification(examples, metric, counts) -> np.ndarray:
    labels, predicted = np.asarray(examples["label"]), np.asarray(examples["predicted"])
    num_labels = int(examples["num_labels"])
    if metric == "accuracy":
        return counts @ (labels == predicted) / counts.sum(1)
    tp = counts @ _one_hot(np.where(labels == predicted, labels, -1), num_labels)
    true, chosen = counts @ _one_hot(labels, num_labels), counts @ _one_hot(predicted, num_labels)
    if metric == "f1":
        positive = int(examples["positive"])
        return _f1(tp[:, positive], true[:, positive], chosen[:, positive])
    return _averaged_f1(tp, true, chosen, metric)


def _one_hot(ids: np.ndarray, size: int) -> np.ndarray:
    """[N] ids -> [N, size] float64; an id of -1 is a row of zeros."""
    return (ids[:, None] == np.arange(size)).astype(np.float64)


def _multilabel(examples, metric, counts) -> np.ndarray:
    truth = np.asarray(examples["label"]).astype(bool)
    predicted = np.asarray(examples["predicted"]).astype(bool)
    drawn = counts.sum(1)
    if metric == "subset_accuracy":
        return counts @ (truth == predicted).all(1) / drawn
    tp = (truth & predicted).astype(np.float64)
    if metric == "samples_f1":  # each example's own F1 (0 where it has no label and predicts none)
        per_example = _f1(tp.sum(1), truth.sum(1).astype(np.float64), predicted.sum(1).astype(np.float64))
        return counts @ per_example / drawn
    return _averaged_f1(counts @ tp, counts @ truth, counts @ predicted, metric)


def _ner(examples, metric, counts) -> np.ndarray:
    """seqeval's micro averages pool the entities of every drawn sentence; token accuracy pools its words."""
    total = {key: counts @ np.asarray(examples[key], np.float64) for key in examples if key != "task"}
    if metric == "accuracy":
        return total["correct_words"] / total["words"]
    if metric == "f1":
        return _f1(total["correct_entities"], total["true_entities"], total["predicted_entities"])
    denominator = total["predicted_entities" if metric == "precision" else "true_entities"]
    return np.divide(
        total["correct_entities"], denominator, out=np.zeros_like(denominator), where=denominator > 0
    )


def _regression(examples, metric, counts) -> np.ndarray:
    targets = np.asarray(examples["label"], np.float64)
    predictions = np.asarray(examples["prediction"], np.float64)
    if metric == "mse":
        return counts @ np.square(predictions - targets) / counts.sum(1)
    if metric == "spearman":  # Pearson's of the ranks, ties averaged, in each resample
        targets, predictions = _ranks(targets, counts), _ranks(predictions, counts)
    else:
        targets, predictions = (
            np.broadcast_to(targets, counts.shape),
            np.broadcast_to(predictions, counts.shape),
        )
    return _weighted_pearson(targets, predictions, counts)


def _ranks(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[R, N]: each example's average rank (1-based, ties averaged) among the resample's draws."""
    distinct, group = np.unique(values, return_inverse=True)
    replicates, groups = len(counts), len(distinct)
    flat = (groups * np.arange(replicates)[:, None] + group).ravel()
    per_value = np.bincount(flat, counts.ravel(), replicates * groups).reshape(replicates, groups)  # draws
    below = np.cumsum(per_value, 1) - per_value
    return (below + (per_value + 1) / 2)[:, group]


def _weighted_pearson(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    drawn = counts.sum(1, keepdims=True)
    x = x - (counts * x).sum(1, keepdims=True) / drawn
    y = y - (counts * y).sum(1, keepdims=True) / drawn
    covariance, x_var, y_var = ((counts * a * b).sum(1) for a, b in ((x, y), (x, x), (y, y)))
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant side: NaN, as SciPy says
        return covariance / np.sqrt(x_var * y_var)


def resample_counts(rng: np.random.Generator, replicates: int, num_examples: int) -> np.ndarray:
    """[replicates, num_examples] multiplicities of `num_examples` draws with replacement per replicate."""
    rows = rng.integers(0, num_examples, (replicates, num_examples))
    flat = (rows + num_examples * np.arange(replicates)[:, None]).ravel()
    return np.bincount(flat, minlength=replicates * num_examples).reshape(replicates, num_examples)


def num_examples(examples: Mapping[str, np.ndarray]) -> int:
    """How many examples a report's per-example arrays describe."""
    return len(examples[_DATA_KEYS[str(examples["task"])][0]])


def _example_sets(pairs: list[tuple[Evidence, Evidence]], metric: str) -> list[int] | None:
    """For each pair, the index of its evaluation set among the distinct sets (seeds evaluated on one subset
    share it: `data.max_eval_examples` draws a subset per seed); None where a cell wrote no predictions that
    recompute `metric`, or a strategy's and the baseline's of one seed are not for the same examples."""
    keys = []
    for a, b in pairs:
        if a.examples is None or b.examples is None:
            return None
        task = str(a.examples["task"])
        if metric not in EXAMPLE_METRICS.get(task, ()) or str(b.examples["task"]) != task:
            return None
        if task == "classification" and metric == "f1" and int(a.examples["positive"]) < 0:
            return None
        data = [(np.asarray(a.examples[key]), np.asarray(b.examples[key])) for key in _DATA_KEYS[task]]
        if not all(np.array_equal(x, y) for x, y in data):
            return None
        keys.append(b"".join(x.tobytes() for x, _ in data))
    distinct = list(dict.fromkeys(keys))
    return [distinct.index(key) for key in keys]


def paired_difference(
    strategy: Mapping[int, Evidence],
    baseline: Mapping[int, Evidence],
    metric: str,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> Difference | None:
    """The strategy's mean metric minus the baseline's, with its paired bootstrap interval.

    Args:
      strategy, baseline: each cell's `Evidence` by its seed; only seeds in both are paired.
      metric: the compared metric (the cells' `training.best_metric`).
      resamples: bootstrap replicates.
      level: the interval's coverage (0.95: the 2.5th and 97.5th percentiles).
      seed: of the resampling, so that a table is the same every time it is written.

    Returns:
      The difference; None with no paired seed, or one seed and no examples to resample.
    """
    seeds = sorted(set(strategy) & set(baseline))
    pairs = [(strategy[s], baseline[s]) for s in seeds]
    if not pairs:
        return None
    difference = float(np.mean([a.value - b.value for a, b in pairs]))
    sets = _example_sets(pairs, metric)
    if sets is None and len(pairs) < 2:
        return None
    sizes = [num_examples(a.examples) for a, _ in pairs] if sets else []
    rng = np.random.default_rng(seed)
    replicates = []
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        if sets is not None:
            # One draw per evaluation set, shared by the strategy, the baseline and every seed that has it.
            draws = {}
            for k in sets:
                if k not in draws:
                    draws[k] = resample_counts(rng, size, sizes[sets.index(k)])
            per_seed = np.stack(
                [
                    metric_on_resamples(a.examples, metric, draws[k])
                    - metric_on_resamples(b.examples, metric, draws[k])
                    for (a, b), k in zip(pairs, sets, strict=True)
                ],
                1,
            )  # [size, seeds]
        else:
            per_seed = np.broadcast_to([a.value - b.value for a, b in pairs], (size, len(pairs)))
        picks = rng.integers(0, len(pairs), (size, len(pairs)))
        replicates.append(np.take_along_axis(per_seed, picks, 1).mean(1))
    values = np.concatenate(replicates)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    examples = sum(sizes[sets.index(k)] for k in set(sets)) if sets is not None else 0
    return Difference(difference, float(low), float(high), len(pairs), examples, int(values.size), level)
