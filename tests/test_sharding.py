"""Train-data shards over processes (`data.num_shards`): each process tokenises and holds only its shards'
examples, and the processes' rows of every global batch together are the rows one process builds from the
whole split with the same shards. Processes are simulated here (the exchange of row lengths is
`pipeline.assemble_shards`'s input); tests/test_multiprocess.py runs two real ones."""

import copy
import json

import jax
import numpy as np
import pytest
from transformers import AutoTokenizer

from jaxft import tasks
from jaxft.configs import squad as squad_config
from jaxft.configs import tiny
from jaxft.data import batching
from jaxft.training import pipeline

BATCH = 8


def test_one_shard_is_the_plain_plan():
    lengths = np.random.default_rng(0).integers(1, 64, 101)
    plain = batching.train_batch_plan(lengths, [16, 32, 64], 8, seed=3, epoch=1)
    sharded = batching.train_batch_plan(
        lengths, [16, 32, 64], 8, seed=3, epoch=1, shard_of=np.zeros(101, int), num_shards=1
    )
    assert [(s, list(i)) for s, i in plain] == [(s, list(i)) for s, i in sharded]


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_each_part_of_a_sharded_batch_comes_from_its_shard(drop_remainder):
    lengths = np.random.default_rng(1).integers(1, 64, 203)
    shard_of = np.arange(203) % 3
    buckets = [16, 32, 64]
    plan = batching.train_batch_plan(
        lengths, buckets, 12, seed=0, epoch=2, shard_of=shard_of, num_shards=3, drop_remainder=drop_remainder
    )
    seen = []
    for seq_len, batch in plan:
        assert len(batch) == 12
        for s in range(3):
            part = batch[4 * s : 4 * (s + 1)]
            real = part[part >= 0]
            assert (shard_of[real] == s).all() and (real == part[: len(real)]).all()  # padding at the end
            assert (lengths[real] <= seq_len).all()
            assert drop_remainder is False or len(real) == 4
        seen += list(batch[batch >= 0])
    if drop_remainder:
        bucket_of = batching.assign_buckets(lengths, buckets)
        full = sum(min(np.sum((bucket_of == b) & (shard_of == s)) for s in range(3)) // 4 for b in range(3))
        assert len(plan) == full and len(set(seen)) == len(seen)
    else:
        assert sorted(seen) == list(range(203))  # every example exactly once
        assert len(plan) == pipeline.steps_per_epoch(_planned(lengths, shard_of, 3), buckets, 12)


def _planned(lengths, shard_of, count) -> pipeline.Split:
    shards = pipeline.Shards(count, shard_of, lengths, np.arange(len(lengths)))
    return pipeline.Split("train", "-", [], np.zeros(0), {"length": lengths}, shards)


def _squad_file(path) -> str:
    rng = np.random.default_rng(0)
    words = "the film was very good and the movie was bad but it is a great story".split()
    paragraphs = []
    for i in range(21):
        context = " ".join(rng.choice(words, int(rng.integers(10, 70))))
        start = context.index(" ") + 1
        answer = context[start:].split(" ")[0]
        qas = [
            {"id": f"q{i}", "question": "what was it ?", "answers": [{"text": answer, "answer_start": start}]}
        ]
        paragraphs.append({"context": context, "qas": qas})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return str(path)


def _config(name: str, tmp_path):
    if name == "classification":
        config = tiny.get_config()
    else:  # several windows per question: rows are not examples
        config = squad_config.get_config("tiny")
        config.data.train_path = config.data.eval_path = _squad_file(tmp_path / "train.json")
    config.data.eval_path = None
    config.data.test_path = None
    return config


def _shares(config, count: int, processes: int):
    """Each simulated process's train split, as `tokenize_splits` leaves it on that process."""
    task = tasks.from_config(config)
    names, splits = pipeline.read_splits(config.data, None, 0, task)
    tokenizer = AutoTokenizer.from_pretrained(config.model.tokenizer)
    full, total = splits["train"], len(splits["train"].examples)
    shares = []
    for q in range(processes):
        split = copy.copy(full)
        mine = pipeline.owned_examples(total, count, q, processes)
        split.examples = [full.examples[i] for i in mine]
        split.labels = np.asarray(full.labels)[mine]
        split.features = task.tokenize(split.examples, tokenizer, config.data, None, "train", names)
        shares.append(split)
    rows = [pipeline.rows_per_example(s.features, len(s.examples)) for s in shares]
    lengths = [s.features["length"] for s in shares]
    for q, split in enumerate(shares):
        split.shards = pipeline.assemble_shards(total, count, q, rows, lengths)
    return shares, total


def _batches(split, processes: int, index: int, monkeypatch, steps: int) -> list[dict]:
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    monkeypatch.setattr(jax, "process_index", lambda: index)
    batches = pipeline.train_batches(split, [16, 32], BATCH, seed=5, start_step=0)
    return [next(batches) for _ in range(steps)]


def _rows(batch) -> dict:
    """{row: (its tokens, its label)} of the real rows of a batch."""
    real = batch["weights"] > 0
    return {
        int(i): (tuple(ids[m > 0]), np.asarray(label).tobytes())
        for i, ids, m, label in zip(
            batch["index"][real],
            batch["input_ids"][real],
            batch["attention_mask"][real],
            batch["labels"][real],
            strict=True,
        )
    }


@pytest.mark.parametrize("name", ["classification", "qa"])
@pytest.mark.parametrize("count", [2, 4])
def test_two_processes_build_the_global_batches_of_one_process(name, count, tmp_path, monkeypatch):
    config = _config(name, tmp_path)
    (whole,), total = _shares(config, count, 1)
    (first, second), _ = _shares(config, count, 2)
    # Each process tokenised only its shards' examples; together, once each.
    assert len(first.examples) + len(second.examples) == total and 0 < len(first.examples) < total
    assert sorted([*first.shards.local_rows, *second.shards.local_rows]) == list(whole.shards.local_rows)
    for shares in (first, second):  # every process agrees on the plan's inputs
        np.testing.assert_array_equal(shares.shards.lengths, whole.shards.lengths)
        np.testing.assert_array_equal(shares.shards.of_row, whole.shards.of_row)
    if name == "qa":
        assert len(whole.shards.lengths) > total  # several windows per question
    steps = 2 * pipeline.steps_per_epoch(whole, [16, 32], BATCH)  # two epochs
    reference = _batches(whole, 1, 0, monkeypatch, steps)
    parts = [_batches(share, 2, q, monkeypatch, steps) for q, share in enumerate((first, second))]
    for step, batch in enumerate(reference):
        rows0, rows1 = _rows(parts[0][step]), _rows(parts[1][step])
        assert not rows0.keys() & rows1.keys()
        assert {**rows0, **rows1} == _rows(batch)
        assert all(whole.shards.of_row[r] < count // 2 for r in rows0)  # process 0 holds shards 0..count/2-1


def test_num_shards_must_be_a_multiple_of_the_processes(monkeypatch):
    config = tiny.get_config()
    config.data.num_shards = 3
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(Exception, match="data.num_shards=3 must be a positive multiple of the 2 processes"):
        pipeline.num_shards(config.data)
