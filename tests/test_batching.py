"""Tests for jaxft.data.batching."""

import numpy as np
import pytest

from jaxft.data.batching import (
    assign_buckets,
    bucket_lengths,
    eval_batch_plan,
    make_batch,
    train_batch_plan,
)

BATCH = 8
BUCKETS = [16, 32, 48, 64]


@pytest.mark.parametrize(
    "args, expected",
    [
        ((128,), [32, 64, 96, 128]),
        ((100,), [32, 64, 80, 100]),
        ((128, 1), [128]),
        ((512, 2), [256, 512]),
        ((20,), [16, 20]),
        ((8,), [8]),
        ((64, 4, 8), [16, 32, 48, 64]),
    ],
)
def test_bucket_lengths(args, expected):
    assert bucket_lengths(*args) == expected


def test_assign_buckets_picks_the_smallest_that_fits():
    assert assign_buckets(np.array([1, 16, 17, 32, 33, 64]), BUCKETS).tolist() == [0, 0, 1, 1, 2, 3]
    with pytest.raises(ValueError):
        assign_buckets(np.array([65]), BUCKETS)


def random_lengths(n, seed=0):
    return np.random.default_rng(seed).integers(3, 65, size=n).astype(np.int32)


def check_plan(plan, lengths):
    seen = np.concatenate([indices for _, indices in plan])
    assert sorted(seen.tolist()) == list(range(len(lengths)))  # every example exactly once
    for seq_len, indices in plan:
        assert 1 <= len(indices) <= BATCH
        assert seq_len in BUCKETS and lengths[indices].max() <= seq_len
        # The smallest fitting bucket: padding is not wasted on a longer one.
        assert (assign_buckets(lengths[indices], BUCKETS) == BUCKETS.index(seq_len)).all()


@pytest.mark.parametrize("n", [BATCH - 1, BATCH, BATCH + 1, 10 * BATCH + 3])
def test_train_plan_covers_every_example_once(n):
    lengths = random_lengths(n)
    for epoch in range(3):
        check_plan(train_batch_plan(lengths, BUCKETS, BATCH, seed=1, epoch=epoch), lengths)


@pytest.mark.parametrize("n", [BATCH - 1, BATCH, BATCH + 1, 10 * BATCH + 3])
def test_eval_plan_covers_every_example_once_in_order(n):
    lengths = random_lengths(n)
    plan = eval_batch_plan(lengths, BUCKETS, BATCH)
    check_plan(plan, lengths)
    assert [seq_len for seq_len, _ in plan] == sorted(seq_len for seq_len, _ in plan)
    for _, indices in plan:
        assert (np.diff(indices) > 0).all()


def flatten(plan):
    return [(seq_len, indices.tolist()) for seq_len, indices in plan]


def test_train_plan_is_deterministic_in_seed_and_epoch():
    lengths = random_lengths(200)
    plan = flatten(train_batch_plan(lengths, BUCKETS, BATCH, seed=3, epoch=2))
    assert plan == flatten(train_batch_plan(lengths, BUCKETS, BATCH, seed=3, epoch=2))
    assert plan != flatten(train_batch_plan(lengths, BUCKETS, BATCH, seed=3, epoch=3))
    assert plan != flatten(train_batch_plan(lengths, BUCKETS, BATCH, seed=4, epoch=2))
    # Buckets interleave instead of running one after another.
    order = [seq_len for seq_len, _ in plan]
    assert order != sorted(order)


def test_drop_remainder_keeps_only_full_batches():
    lengths = np.full(2 * BATCH + 3, 10)
    plan = train_batch_plan(lengths, BUCKETS, BATCH, seed=0, epoch=0, drop_remainder=True)
    assert [len(indices) for _, indices in plan] == [BATCH, BATCH]
    assert len(set(np.concatenate([i for _, i in plan]).tolist())) == 2 * BATCH


def features_for(lengths, width=64):
    n = len(lengths)
    positions = np.arange(width)
    valid = positions < np.asarray(lengths)[:, None]
    input_ids = np.where(valid, 100 + np.arange(n)[:, None] * width + positions, 0).astype(np.int32)
    token_type_ids = np.where(valid & (positions >= 2), 1, 0).astype(np.int32)
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "length": np.asarray(lengths, np.int32)}


def test_make_batch_pads_with_zero_weight_rows():
    features = features_for([5, 3, 16, 9])
    labels = np.array([1, 0, 2, 1], np.int32)
    batch = make_batch(features, labels, np.array([2, 0]), seq_len=16, batch_size=4)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "input_ids": ((4, 16), np.int32),
        "token_type_ids": ((4, 16), np.int32),
        "attention_mask": ((4, 16), np.int32),
        "labels": ((4,), np.int32),
        "weights": ((4,), np.float32),
        "index": ((4,), np.int32),
    }
    np.testing.assert_array_equal(batch["input_ids"][:2], features["input_ids"][[2, 0], :16])
    np.testing.assert_array_equal(batch["token_type_ids"][:2], features["token_type_ids"][[2, 0], :16])
    assert batch["attention_mask"][:2].sum(axis=1).tolist() == [16, 5]
    assert batch["attention_mask"][1, :5].all() and not batch["attention_mask"][1, 5:].any()
    assert batch["labels"].tolist() == [2, 1, 0, 0]
    assert batch["weights"].tolist() == [1, 1, 0, 0]
    assert batch["index"].tolist() == [2, 0, -1, -1]
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert not batch[key][2:].any()


def test_make_batch_without_labels_and_bad_sizes():
    features = features_for([5, 30])
    assert make_batch(features, None, np.array([0]), 16, 2)["labels"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="does not fit"):
        make_batch(features, None, np.array([1]), 16, 2)
    with pytest.raises(ValueError, match="do not fit"):
        make_batch(features, None, np.array([0, 0, 0]), 16, 2)
