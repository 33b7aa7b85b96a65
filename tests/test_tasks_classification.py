"""Task selection: classification stays the default; MRPC-style sentence pairs (BOM, tabs, stray quotes) with
the positive class's F1; every task config loads and validates; a run cannot resume as another task; and
(where ../shared/data exists) the MRPC and CoNLL-2003 files read to their published sizes."""

import codecs
import json
import os

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from jaxft import config as config_lib
from jaxft import tasks
from jaxft.configs import conll03, default, mrpc, multilabel, squad, stsb, tiny
from jaxft.data import conll
from jaxft.errors import UserError
from jaxft.tasks import tagging
from jaxft.training import train
from tests.helpers import check_final_examples

DATA = os.environ.get("JAXFT_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
WORDS = "the film was great and you got two hours of book staff room after first week".split()


@pytest.mark.parametrize(
    "make, name, metric",
    [
        (default.get_config, "classification", "accuracy"),
        (tiny.get_config, "classification", "accuracy"),
        (mrpc.get_config, "classification", "f1"),
        (stsb.get_config, "regression", "pearson"),
        (multilabel.get_config, "multilabel", "micro_f1"),
        (conll03.get_config, "ner", "f1"),
        (squad.get_config, "qa", "f1"),
    ],
)
def test_configs_choose_their_task_and_best_metric(make, name, metric):
    for config in [make()] + ([make("tiny")] if make not in (default.get_config, tiny.get_config) else []):
        # The paths a run must be given (the task configs leave them to the command line)
        config.data.train_path = config.data.train_path or "train.jsonl"
        config.model.checkpoint = config.model.checkpoint or "bert-base-uncased"
        config_lib.check(config)
        task = tasks.from_config(config)
        assert task.name == name and tasks.best_metric(config, task) == metric
        hash(task)  # a static argument of the compiled steps
    locked = default.get_config()
    locked.lock()  # as config_flags hands it over: unknown keys, task ones included, are errors
    with pytest.raises(AttributeError, match="treshold"):
        locked.task.treshold = 0.3


def _mrpc(count: int, seed: int) -> bytes:
    lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    for i in range(count):
        a = " ".join(WORDS[(i + seed + k) % len(WORDS)] for k in range(5))
        b = '"' + " ".join(WORDS[(2 * i + k) % len(WORDS)] for k in range(4))  # an unbalanced quote, as MRPC
        lines.append(f"{(i + seed) % 2}\t{1000 + i}\t{2000 + i}\t{a}\t{b}")
    return codecs.BOM_UTF8 + ("\n".join(lines) + "\n").encode()


def test_mrpc_pairs_report_the_positive_f1_and_pick_the_best_by_it(tmp_path):
    config = mrpc.get_config("tiny")
    (tmp_path / "train.tsv").write_bytes(_mrpc(32, 0))
    (tmp_path / "dev.tsv").write_bytes(_mrpc(17, 1))
    config.data.train_path, config.data.eval_path = str(tmp_path / "train.tsv"), str(tmp_path / "dev.tsv")
    config.data.test_path = None
    config.training.num_train_steps, config.training.eval_every, config.training.checkpoint_every = 2, 2, 2
    final = train.train_and_evaluate(config, str(tmp_path / "run"))
    report = json.loads((tmp_path / "run/eval/final_eval.json").read_text())
    assert report["report"]["macro avg"]["support"] == 17 and report["labels"] == ["0", "1"]
    assert final["eval"]["f1"] == report["report"]["1"]["f1-score"]
    assert check_final_examples(str(tmp_path / "run"), final["eval"], "classification", 17)["positive"] == 1
    best = os.listdir(tmp_path / "run/checkpoints/best")
    assert best == ["2"]
    # Resuming this classification run as another task is refused before anything is written.
    config.task.name = "regression"
    config.data.positive_label = None
    config.training.best_metric = "auto"
    with pytest.raises(UserError, match="task.name='regression' differs from 'classification'"):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_unknown_task_and_wrong_best_metric_are_user_errors(tmp_path):
    config = tiny.get_config()
    config.task.name = "summarisation"
    with pytest.raises(UserError, match="task.name='summarisation' must be one of"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.realdata
@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "conll2003")), reason=f"no conll2003 under {DATA}")
def test_conll2003_reads_to_its_published_counts():
    sentences = conll.read_conll(os.path.join(DATA, "conll2003", "eng.train"), scheme="iob1")
    assert len(sentences) == 14041 and sum(len(s.words) for s in sentences) == 203621
    counts = {}
    for sentence in sentences:
        for kind, _, _ in get_entities(list(sentence.tags)):
            counts[kind] = counts.get(kind, 0) + 1
    assert counts == {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600}
    assert tagging.tag_vocab(sentences) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG"] + [
        "B-PER",
        "I-PER",
    ]


@pytest.mark.realdata
@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "mrpc")), reason=f"no mrpc under {DATA}")
def test_mrpc_reads_to_its_published_counts(monkeypatch):
    monkeypatch.setenv("JAXFT_DATA", os.path.abspath(DATA))
    config = mrpc.get_config()
    config.model.checkpoint = None
    task = tasks.from_config(config)
    from jaxft.training import pipeline

    names, splits = pipeline.read_splits(config.data, None, 0, task)
    assert names == ["0", "1"]
    assert {k: len(v.examples) for k, v in splits.items()} == {"train": 3668, "eval": 408, "test": 1725}
    assert int(splits["eval"].labels.sum()) == 279 and splits["train"].examples[0].text.startswith("Amrozi")
