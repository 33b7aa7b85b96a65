"""Continual learning (jaxft.strategies.continual, jaxft.recipes.continual): each piece against a reference.

EWC penalty and KD term equal NumPy; the vmap Fisher equals a loop of per-example gradients; the reservoir
buffer equals a hand-run of Algorithm R and keeps every example with probability capacity / seen; the
replay term scores each buffered row with its own task's head; adapters leave earlier tasks' logits
bit-identical; a grown head keeps its old columns; the forgetting summary of a known R equals hand values;
every method runs a tiny 2-task sequence end to end; bench/continual.py splits 20 Newsgroups into its
class-incremental stages as documented.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from jaxft.configs import default
from jaxft.data import batching
from jaxft.errors import UserError
from jaxft.models.bert import BertEncoder
from jaxft.recipes import continual as loop
from jaxft.strategies import continual as cl
from tests.helpers import tiny_bert

CONFIG = tiny_bert(
    40, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=40, dropout=0.1
)


def _features(n, width=12, seed=0, num_labels=2):
    """Random token rows of varying length; the label is a function of the first word, so it can be learnt."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, width + 1, n).astype(np.int32)
    ids = np.zeros((n, width), np.int32)
    for i, length in enumerate(lengths):
        ids[i, :length] = rng.integers(5, CONFIG.vocab_size, length)
        ids[i, 0], ids[i, length - 1] = 2, 3  # [CLS] ... [SEP]
    labels = (ids[:, 1] % num_labels).astype(np.int32)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "length": lengths, "labels": labels}


def _bert(seed=0, encoder=None):
    encoder = encoder or BertEncoder(CONFIG)
    dummy = jnp.zeros((1, 8), jnp.int32)
    return encoder, encoder.init(jax.random.PRNGKey(seed), dummy, jnp.ones_like(dummy))["params"]


def test_ewc_penalty_equals_numpy():
    rng = np.random.default_rng(0)
    shapes = {"a": {"kernel": (3, 4)}, "b": {"bias": (5,)}}
    tree = lambda: jax.tree.map(
        lambda s: rng.normal(size=s).astype(np.float32), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )  # noqa: E731
    params, anchor = tree(), tree()
    fisher = jax.tree.map(np.abs, tree())
    expected = (
        0.5
        * 7.0
        * sum(
            np.sum(f * (p - a) ** 2)
            for p, a, f in zip(
                jax.tree.leaves(params), jax.tree.leaves(anchor), jax.tree.leaves(fisher), strict=True
            )
        )
    )
    np.testing.assert_allclose(float(cl.ewc_penalty(params, anchor, fisher, 7.0)), expected, rtol=1e-6)
    assert float(cl.ewc_penalty(params, params, fisher, 7.0)) == 0.0


def test_fisher_vmap_equals_loop_of_per_example_grads():
    encoder, bert = _bert()
    head = cl.init_head(jax.random.PRNGKey(1), CONFIG.hidden_size, 3)
    split = _features(5, seed=1)
    # Two chunks of 3 rows, the second with one padding row (weight 0), which must not count.
    batches = [batching.make_batch(split, None, idx, 12, 3) for idx in (np.arange(3), np.arange(3, 5))]
    fisher = cl.fisher_diagonal(encoder, bert, head, batches)
    total = jax.tree.map(np.zeros_like, bert)
    grad_one = jax.jit(jax.grad(lambda b, i, t, m: cl.example_nll(b, head, i, t, m, encoder=encoder)))
    for i in range(5):  # one example at a time, no vmap
        mask = (np.arange(12) < split["length"][i]).astype(np.int32)
        grad = grad_one(bert, split["input_ids"][i], split["token_type_ids"][i], mask)
        total = jax.tree.map(lambda t, g: t + np.square(np.asarray(g)), total, grad)
    for got, want in zip(jax.tree.leaves(fisher), jax.tree.leaves(total), strict=True):
        np.testing.assert_allclose(np.asarray(got), want / 5, rtol=1e-6, atol=1e-6)
    assert max(float(np.max(f)) for f in jax.tree.leaves(fisher)) > 0


def _hand_reservoir(stream, capacity, seed):
    """Algorithm R written out step by step, with the same generator calls."""
    rng = np.random.default_rng(seed)
    kept = []
    for n, item in enumerate(stream):
        if n < capacity:
            kept.append(item)
            continue
        j = int(rng.integers(0, n + 1))
        if j < capacity:
            kept[j] = item
    return kept


def test_reservoir_buffer_is_algorithm_r_bounded_seeded_with_task_ids():
    features = _features(30, seed=2)
    buffer = cl.ReservoirBuffer(7, seed=3)
    buffer.add_task("first", {k: v[:12] for k, v in features.items()}, features["labels"][:12])
    buffer.add_task("second", {k: v[12:] for k, v in features.items()}, features["labels"][12:])
    assert len(buffer) == 7 and buffer.seen == 30
    stream = [("first", i) for i in range(12)] + [("second", i) for i in range(12, 30)]
    expected = _hand_reservoir(stream, 7, seed=3)
    got = []
    for item in buffer.items:
        row = next(
            i
            for i in range(30)
            if np.array_equal(features["input_ids"][i, : features["length"][i]], item["input_ids"])
        )
        got.append((item["task"], row))
        assert item["label"] == features["labels"][row]
    assert got == expected
    # The first `capacity` offers fill the buffer in order: the hand-computable part of the run.
    small = cl.ReservoirBuffer(3, seed=0)
    for i in range(3):
        small.offer({"task": "t", "i": i})
    assert [x["i"] for x in small.items] == [0, 1, 2]
    other = cl.ReservoirBuffer(7, seed=4)
    for task, i in stream:
        other.offer({"task": task, "i": i})
    assert [(x["task"], x["i"]) for x in other.items] == _hand_reservoir(stream, 7, seed=4) != expected
    # Uniform membership: over many seeds each of 20 items is kept about capacity/n = 0.25 of the time.
    counts = np.zeros(20)
    for seed in range(2000):
        b = cl.ReservoirBuffer(5, seed)
        for i in range(20):
            b.offer({"task": "t", "i": i})
        counts[[x["i"] for x in b.items]] += 1
    np.testing.assert_allclose(counts / 2000, 0.25, atol=0.04)
    batch = buffer.sample_batch(4, np.random.default_rng(0), {"first": 0, "second": 1}, [8, 16])
    assert batch["input_ids"].shape == (4, 16) and set(batch["task"]) <= {0, 1}
    assert np.array_equal(batch["attention_mask"].sum(1), (batch["input_ids"] > 0).sum(1))


def test_replay_term_scores_each_row_with_its_own_tasks_head():
    """The replay loss = the mean, over buffered rows, of each row's NLL under its own task's head, each row
    encoded alone and unpadded (a reference that shares nothing with the batched, masked step)."""
    encoder, bert = _bert(
        encoder=BertEncoder(
            dataclasses.replace(CONFIG, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        )
    )
    heads = {
        name: cl.init_head(jax.random.PRNGKey(n), CONFIG.hidden_size, classes)
        for n, (name, classes) in enumerate([("a", 3), ("b", 2), ("c", 2)])
    }
    buffer = cl.ReservoirBuffer(capacity=50, seed=0)
    for name, classes, seed in (("a", 3, 1), ("b", 2, 2)):
        split = _features(6, seed=seed, num_labels=classes)
        buffer.add_task(name, split, split["labels"])
    replay = buffer.sample_batch(8, np.random.default_rng(0), {"a": 0, "b": 1, "c": 2}, [12])
    assert set(replay["task"]) == {0, 1}  # both earlier tasks in the batch
    # The replayed rows as the sequence's transform adds them: scored with `OwnHeadCrossEntropy`.
    replay_heads = ("a", "b", "c")
    model = loop.MultiHeadClassifier(encoder.config, replay_heads)
    inputs = {k: jnp.asarray(replay[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    outputs = model.apply(
        {"params": {"bert": bert, "heads": heads}},
        inputs["input_ids"],
        inputs["attention_mask"],
        inputs["token_type_ids"],
        deterministic=True,
    )
    total, weight = loop.OwnHeadCrossEntropy(replay_heads).loss(outputs, jax.tree.map(jnp.asarray, replay))
    metrics = {"replay": total / weight}
    nlls = []
    for i in range(8):
        n = int(replay["attention_mask"][i].sum())
        _, pooled = encoder.apply(
            {"params": bert},
            replay["input_ids"][i : i + 1, :n],
            np.ones((1, n), np.int32),  # the encoder's order: ids, attention mask, token types
            replay["token_type_ids"][i : i + 1, :n],
            deterministic=True,
        )
        head = heads[replay_heads[replay["task"][i]]]
        logits = np.asarray(pooled, np.float64) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
        nlls.append(np.log(np.exp(logits[0]).sum()) - logits[0, replay["labels"][i]])
    np.testing.assert_allclose(float(metrics["replay"]), np.mean(nlls), rtol=1e-5)


def test_kd_term_zero_for_equal_logits_and_equals_numpy_kl():
    rng = np.random.default_rng(5)
    old, new = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    weights = np.array([1, 1, 1, 0], np.float32)
    assert float(cl.kd_term(old, old, 2.0, weights)) == pytest.approx(0.0, abs=1e-7)

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(old[:3] / 2.0), softmax(new[:3] / 2.0)
    expected = 4.0 * np.mean(np.sum(p * np.log(p / q), -1))
    np.testing.assert_allclose(float(cl.kd_term(new, old, 2.0, weights)), expected, rtol=1e-5)


def test_grow_head_keeps_old_columns_exactly():
    head = cl.init_head(jax.random.PRNGKey(0), 8, 2)
    head = {"kernel": head["kernel"], "bias": jnp.array([0.5, -0.25])}
    grown = cl.grow_head(head, 1, jax.random.PRNGKey(1))
    assert grown["kernel"].shape == (8, 3) and grown["bias"].shape == (3,)
    assert np.array_equal(grown["kernel"][:, :2], head["kernel"])
    assert np.array_equal(grown["bias"][:2], head["bias"]) and float(grown["bias"][2]) == 0.0
    with pytest.raises(UserError):
        cl.grow_head(head, 0, jax.random.PRNGKey(1))


def test_forgetting_summary_of_known_matrix():
    r = [[0.9, None, None], [0.7, 0.8, None], [0.6, 0.75, 0.95]]
    summary = cl.forgetting_summary(r)
    assert summary["average_accuracy"] == pytest.approx((0.6 + 0.75 + 0.95) / 3)
    # Task 0: best 0.9 (after task 0), last 0.6 -> 0.3; task 1: best 0.8, last 0.75 -> 0.05.
    assert summary["forgetting"] == pytest.approx([0.3, 0.05])
    assert summary["average_forgetting"] == pytest.approx(0.175)
    assert cl.forgetting_summary([[0.5]])["average_forgetting"] is None
    assert "| t1 | 0.7000 | 0.8000 |  |" in cl.matrix_markdown(["t0", "t1", "t2"], r)


def _tasks():
    return [
        loop.TaskData("a", "a", 2, _features(48, seed=10), _features(20, seed=11)),
        loop.TaskData(
            "b", "b", 3, _features(40, seed=12, num_labels=3), _features(20, seed=13, num_labels=3)
        ),
    ]


def _optimizer():
    opt = default.get_config().optimizer
    opt.warmup_ratio = 0.1
    return opt


def _config(method, **kw):
    return cl.ContinualConfig(
        method=method, batch_size=16, eval_batch_size=16, learning_rate=1e-3, adapter_learning_rate=1e-2,
        adapter_size=4, fisher_examples=12, fisher_chunk=4, replay_capacity=10, replay_batch_size=4, **kw,
    )  # fmt: skip


@pytest.mark.slow
def test_adapters_leave_earlier_tasks_bit_identical():
    tasks = _tasks()
    first = loop.run_sequence(tasks[:1], _config("adapter"), CONFIG, _optimizer(), log=lambda _: None)
    both = loop.run_sequence(tasks, _config("adapter"), CONFIG, _optimizer(), log=lambda _: None)
    encoder = loop.wrap(BertEncoder(CONFIG), loop.PeftConfig(method="adapter", adapter_size=4))
    batch = loop._device_batch(batching.make_batch(tasks[0].eval, None, np.arange(16), 12, 16))

    def logits(result):
        bert = cl.merge_trees(result["params"]["bert"], result["adapters"]["a"])
        return np.asarray(loop.eval_logits(bert, result["params"]["heads"]["a"], batch, encoder=encoder))

    assert np.array_equal(logits(first), logits(both))
    assert both["R"][1][0] == first["R"][0][0] and both["forgetting"] == [0.0]
    # The later task did train its own adapters (they moved from their zero start).
    assert (
        float(jnp.abs(both["adapters"]["b"]["encoder"]["layer_0"]["output"]["adapter"]["up"]["kernel"]).max())
        > 0
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["naive", "ewc", "replay", "kd"])
def test_two_task_sequence_runs(method):
    result = loop.run_sequence(_tasks(), _config(method), CONFIG, _optimizer(), log=lambda _: None)
    r = result["R"]
    assert len(r) == 2 and all(len(row) == 2 for row in r) and r[0][1] is None
    assert all(0.0 <= r[i][j] <= 1.0 for i in range(2) for j in range(i + 1))
    last = result["final_metrics"][1]
    assert {"ewc": "ewc", "replay": "replay", "kd": "kd"}.get(method, "ce") in last
    assert np.isfinite(last["loss"])


@pytest.mark.slow
def test_class_incremental_grows_the_head(tmp_path):
    train, dev = _features(60, seed=20, num_labels=3), _features(30, seed=21, num_labels=3)
    stages = loop.class_incremental_tasks("ci", train, dev, [[0, 1], [2]])
    assert [s.num_labels for s in stages] == [2, 3]
    assert set(stages[1].train["labels"]) == {2} and set(stages[0].eval["labels"]) <= {0, 1}
    result = loop.run_sequence(
        stages, _config("naive"), CONFIG, _optimizer(), log=lambda _: None, workdir=str(tmp_path)
    )
    assert result["params"]["heads"]["ci"]["kernel"].shape == (CONFIG.hidden_size, 3)
    # Each stage wrote its parameters (the head as wide as it was then) and its row of R to its own directory.
    saved = serialization.msgpack_restore((tmp_path / "stage0_ci_stage0" / "params.msgpack").read_bytes())
    assert saved["heads"]["ci"]["kernel"].shape == (CONFIG.hidden_size, 2)
    row = (tmp_path / "stage1_ci_stage1" / "accuracy.txt").read_text().split()
    np.testing.assert_allclose([float(v) for v in row], result["R"][1], atol=1e-6)
    sizes = [len(s.eval["labels"]) for s in stages]
    expected = (sizes[0] * result["R"][1][0] + sizes[1] * result["R"][1][1]) / sum(sizes)
    assert result["seen_accuracy"][1] == pytest.approx(expected)
    with pytest.raises(UserError, match="continual.method='adapter'"):
        loop.run_sequence(stages, _config("adapter"), CONFIG, _optimizer(), log=lambda _: None)
    with pytest.raises(UserError, match="continual.method"):
        cl.ContinualConfig(method="nope")


def _leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.slow
def test_ewc_and_kd_keep_the_first_task_closer_than_naive_fine_tuning(monkeypatch):
    """Same seed and data: EWC ends task b with a smaller Fisher-weighted distance to its anchor (the encoder
    after task a, the Fisher of task a), and LwF with task a's head answering task b's inputs closer to what
    it answered before task b, than naive fine-tuning does."""
    tasks, quiet = _tasks(), lambda _: None
    seen = {"accuracy": [], "fisher": [], "record": []}
    real_accuracy, real_fisher, real_record = loop.accuracy, cl.fisher_diagonal, loop.record_logits

    def accuracy(encoder, bert, *args):
        seen["accuracy"].append(jax.device_get(bert))
        return real_accuracy(encoder, bert, *args)

    def fisher_diagonal(encoder, bert, head, batches):
        fisher = real_fisher(encoder, bert, head, batches)
        seen["fisher"].append((jax.device_get(bert), jax.device_get(fisher)))
        return fisher

    def record_logits(encoder, bert, head, split, buckets, batch_size):
        logits = real_record(encoder, bert, head, split, buckets, batch_size)
        seen["record"].append(((encoder, split, buckets, batch_size), logits))
        return logits

    monkeypatch.setattr(loop, "accuracy", accuracy)
    monkeypatch.setattr(cl, "fisher_diagonal", fisher_diagonal)
    monkeypatch.setattr(loop, "record_logits", record_logits)
    naive = loop.run_sequence(tasks, _config("naive"), CONFIG, _optimizer(), log=quiet)
    after_a = seen["accuracy"][0]  # the naive encoder after task a (evaluated on a alone)
    ewc = loop.run_sequence(tasks, _config("ewc"), CONFIG, _optimizer(), log=quiet)
    anchor, fisher = seen["fisher"][0]
    assert _leaves_equal(anchor, after_a)  # both runs leave task a at the same point

    def distance(bert):
        return sum(
            float(np.sum(np.asarray(f, np.float64) * np.square(np.asarray(p, np.float64) - a)))
            for p, a, f in zip(
                jax.tree.leaves(bert), jax.tree.leaves(anchor), jax.tree.leaves(fisher), strict=True
            )
        )

    moved_naive, moved_ewc = distance(naive["params"]["bert"]), distance(ewc["params"]["bert"])
    assert 0 < moved_ewc < 0.5 * moved_naive, (moved_ewc, moved_naive)
    assert ewc["final_metrics"][1]["ewc"] > 0

    kd = loop.run_sequence(tasks, _config("kd"), CONFIG, _optimizer(), log=quiet)
    (encoder, split, buckets, batch_size), before = seen["record"][0]  # task a's head on task b's inputs
    assert split is tasks[1].train
    head_a = naive["params"]["heads"]["a"]  # naive never trains task a's head again
    np.testing.assert_array_equal(before, real_record(encoder, after_a, head_a, split, buckets, batch_size))

    def drift(result):
        after = real_record(
            encoder, result["params"]["bert"], result["params"]["heads"]["a"], *seen["record"][0][0][1:]
        )
        return float(np.mean(np.square(after - before)))

    drift_naive, drift_kd = drift(naive), drift(kd)
    # A third less here (3.9e-6 against 5.8e-6 with seed 0). Without the term (kd_weight 0) task a's head
    # gets no gradient (only weight decay moves it) and the encoder trains as naive's: about equal drifts.
    # A larger weight (10) does not help in 3 steps: Adam moves task a's head by about the learning rate
    # whatever the gradient's size.
    assert 0 < drift_kd < 0.8 * drift_naive, (drift_kd, drift_naive)


def test_bench_newsgroups_stages_are_four_groups_each_in_alphabetical_order(tmp_path, tiny_tokenizer_dir):
    """bench/continual.py --sequence newsgroups: 5 class-incremental stages of 4 groups, labels numbered
    alphabetically, each stage's rows exactly its groups' messages of the (seeded) subsets."""
    import gzip
    import importlib.util
    import json
    import pathlib

    from jaxft.data import tokenize

    path = pathlib.Path(__file__).parents[1] / "bench" / "continual.py"
    spec = importlib.util.spec_from_file_location("bench_continual", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    groups = [f"g{g:02d}.topic" for g in range(20)][::-1]  # in reverse: the order must come from the names
    directory = tmp_path / "20newsgroups"
    directory.mkdir()
    for split, per_group in (("train", 3), ("test", 2)):
        with gzip.open(directory / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            for g in groups:
                for i in range(per_group):
                    row = {"id": f"{g}/{i}", "label": g, "text": "the cat sat " * (i + 1)}
                    f.write(json.dumps(row) + "\n")
    args = bench.parse_args(
        ["--data", str(tmp_path), "--sequence", "newsgroups", "--train-examples", "0"]
        + ["--newsgroups-eval", "30"]
    )
    tasks = bench.load_newsgroups(args, tokenize.load_tokenizer(tiny_tokenizer_dir))
    assert [t.name for t in tasks] == [f"newsgroups/stage{s}" for s in range(5)]
    assert {t.head for t in tasks} == {"newsgroups"} and [t.num_labels for t in tasks] == [4, 8, 12, 16, 20]
    for s, task in enumerate(tasks):
        # Stage s holds groups g{4s}..g{4s+3} (alphabetical), as head columns 4s..4s+3, 3 messages each.
        assert np.bincount(task.train["labels"], minlength=20).tolist() == [
            3 if 4 * s <= c < 4 * s + 4 else 0 for c in range(20)
        ]
        assert set(task.eval["labels"].tolist()) <= set(range(4 * s, 4 * s + 4))
    assert sum(len(t.eval["labels"]) for t in tasks) == 30  # the seeded test subset, split by stage
