"""Packing planner invariants (hypothesis), exactness against item-by-item reference algorithms, collators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qa_train.data.packing import (
    STRATEGIES,
    PackedDataset,
    PackingStats,
    collate_packed,
    collate_padded,
    pack_lengths,
    plan_packs,
)


def ref_bfd(lengths: list[int], cap: int) -> list[int]:
    """Textbook best-fit decreasing, one item at a time; returns the bin loads."""
    loads: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        x = lengths[i]
        fits = [b for b in range(len(loads)) if loads[b] + x <= cap]
        if fits:
            loads[max(fits, key=lambda b: (loads[b], -b))] += x
        else:
            loads.append(x)
    return loads


def ref_ffd(lengths: list[int], cap: int) -> list[list[int]]:
    """Textbook first-fit decreasing; returns the groups (bins in creation order, indices ascending)."""
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b in range(len(bins)):
            if loads[b] + lengths[i] <= cap:
                bins[b].append(i)
                loads[b] += lengths[i]
                break
        else:
            bins.append([i])
            loads.append(lengths[i])
    return [sorted(b) for b in bins]


@st.composite
def instances(draw, max_n: int = 120):
    cap = draw(st.integers(1, 64))
    lengths = draw(st.lists(st.integers(1, cap), max_size=max_n))
    return lengths, cap


def _check_valid(groups: list[list[int]], lengths: list[int], cap: int) -> None:
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(len(lengths))), "every index exactly once"
    assert all(g for g in groups), "no empty pack"
    assert all(sum(lengths[i] for i in g) <= cap for g in groups), "capacity respected"


@settings(max_examples=300, deadline=None)
@given(instances())
def test_every_strategy_packs_each_index_once_within_capacity(inst):
    lengths, cap = inst
    for strategy in STRATEGIES:
        groups = pack_lengths(lengths, cap, strategy)
        _check_valid(groups, lengths, cap)
        assert groups == pack_lengths(lengths, cap, strategy), "deterministic"


@settings(max_examples=300, deadline=None)
@given(instances())
def test_bfd_matches_item_by_item_best_fit(inst):
    """The grouped-by-length BFD gives the same bin loads as the textbook algorithm."""
    lengths, cap = inst
    groups = pack_lengths(lengths, cap, "bfd")
    loads = sorted(sum(lengths[i] for i in g) for g in groups)
    assert loads == sorted(ref_bfd(lengths, cap))


@settings(max_examples=300, deadline=None)
@given(instances())
def test_ffd_matches_item_by_item_first_fit(inst):
    lengths, cap = inst
    assert pack_lengths(lengths, cap, "ffd") == ref_ffd(lengths, cap)


@settings(max_examples=200, deadline=None)
@given(instances())
def test_decreasing_strategies_never_much_worse_than_next_fit(inst):
    """Any-fit property: no two packs could be merged. Hence packs < 2*sum/cap + 1; and next_fit is never below
    the optimum, so FFD/BFD's 11/9*OPT + 6/9 guarantee bounds them by next_fit."""
    lengths, cap = inst
    nf = len(pack_lengths(lengths, cap, "next_fit"))
    for strategy in ("bfd", "ffd"):
        groups = pack_lengths(lengths, cap, strategy)
        loads = sorted(sum(lengths[i] for i in g) for g in groups)
        if len(loads) >= 2:
            assert loads[0] + loads[1] > cap, "two packs could have been one"
        assert len(groups) <= 11 / 9 * nf + 6 / 9


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(200, 3000), st.sampled_from([512, 2048, 4096]))
def test_bfd_and_ffd_never_worse_than_next_fit_on_realistic_lengths(seed, n, cap):
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(cap / 7), 0.8, n)), 1, cap).astype(int).tolist()
    nf = len(pack_lengths(lengths, cap, "next_fit"))
    assert len(pack_lengths(lengths, cap, "bfd")) <= nf
    assert len(pack_lengths(lengths, cap, "ffd")) <= nf


def test_next_fit_can_beat_bfd_on_an_adversarial_order():
    """Why the invariant above is not universal: listed in an order that fills each pack exactly, next-fit is
    optimal while BFD (which re-sorts) needs one pack more. Found by random search; kept as documentation."""
    lengths, cap = [2, 9, 2, 5, 3, 5, 3, 2, 3, 5], 13
    assert len(pack_lengths(lengths, cap, "next_fit")) == 3 == math.ceil(sum(lengths) / cap)
    assert len(pack_lengths(lengths, cap, "bfd")) == 4


def test_next_fit_is_the_in_order_greedy():
    assert pack_lengths([3, 3, 3, 1, 4, 2], 6, "next_fit") == [[0, 1], [2, 3], [4, 5]]
    assert pack_lengths([5, 1, 5, 1], 6, "bfd") == [[0, 1], [2, 3]]


def test_too_long_sample_names_index_and_length():
    with pytest.raises(ValueError, match=r"sample 2 has length 5000 > max_length 4096"):
        pack_lengths([10, 4096, 5000, 20], 4096)
    with pytest.raises(ValueError, match=r"sample 1 has length 0"):
        pack_lengths([10, 0], 16)


def test_unknown_strategy_and_bad_max_length():
    with pytest.raises(ValueError, match="unknown packing strategy 'wfd'.*bfd, ffd, next_fit"):
        pack_lengths([1, 2], 8, "wfd")
    with pytest.raises(ValueError, match="max_length"):
        pack_lengths([1, 2], 0)


def test_empty_input():
    assert pack_lengths([], 8) == []
    groups, stats = plan_packs([], 8)
    assert groups == [] and stats.packs == 0 and stats.lower_bound == 0


def test_stats_values_and_log_line():
    groups, stats = plan_packs([6, 6, 4, 4, 3], 10, "bfd")
    assert stats == PackingStats(
        strategy="bfd", max_length=10, samples=5, packs=3, tokens=23, lower_bound=3, efficiency=23 / 30
    )
    d = stats.as_dict()
    assert d["excess_over_lower_bound"] == 0.0 and d["packs"] == 3
    assert "5 samples -> 3 packs (lower bound 3" in stats.log_line()
    assert len(groups) == 3


def _sample(ids: list[int], labels: list[int] | None = None) -> dict:
    return {"input_ids": ids, "labels": list(ids) if labels is None else labels}


def test_collate_packed_flattens_packs_into_one_row():
    a, b, c = _sample([5, 6, 7]), _sample([8, 9], [-100, 9]), _sample([10, 11, 12, 13])
    batch = collate_packed([[a, b], {"samples": [c]}])
    assert set(batch) == {
        "input_ids",
        "labels",
        "position_ids",
        "cu_seq_lens_q",
        "cu_seq_lens_k",
        "max_length_q",
        "max_length_k",
    }
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, 11, 12, 13]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 3, 5, 9]
    assert batch["max_length_q"] == batch["max_length_k"] == 4
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (1, 9)
    # bare samples are accepted too (an unpacked dataset through the same collator)
    assert collate_packed([a, b])["input_ids"].tolist() == [[5, 6, 7, 8, 9]]


def test_collate_packed_rejects_bad_samples():
    with pytest.raises(ValueError, match="sample 1: input_ids \\(2\\) and labels \\(1\\)"):
        collate_packed([[_sample([1]), _sample([1, 2], [2])]])
    with pytest.raises(ValueError, match="no samples"):
        collate_packed([])


def test_packed_dataset_yields_packs_and_feeds_the_collator():
    samples = [_sample(list(range(1, n + 1))) for n in (7, 3, 5, 1, 8)]
    ds, stats = PackedDataset.build(samples, max_length=8, strategy="bfd")
    assert isinstance(ds, torch.utils.data.Dataset)
    assert len(ds) == stats.packs == 3 == stats.lower_bound
    seen = sorted(id(s) for i in range(len(ds)) for s in ds[i])
    assert seen == sorted(id(s) for s in samples)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_packed)
    rows = list(loader)
    assert [r["input_ids"].shape[1] for r in rows] == [16, 8]
    assert sum(r["cu_seq_lens_q"].numel() - 1 for r in rows) == 5
    same, _ = PackedDataset.build(samples, 8, lengths=[7, 3, 5, 1, 8])
    assert same.groups == ds.groups
    with pytest.raises(ValueError, match="got 2 lengths for 5 samples"):
        PackedDataset.build(samples, 8, lengths=[7, 3])


def test_collate_padded_longest_and_fixed():
    a, b = _sample([5, 6, 7], [-100, 6, 7]), _sample([8])
    out = collate_padded([a, b], pad_token_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    fixed = collate_padded([a, b], pad_token_id=3, pad_to=5)
    assert fixed["input_ids"].shape == (2, 5) and fixed["input_ids"][1].tolist() == [8, 3, 3, 3, 3]
    with pytest.raises(ValueError, match="pad_to=2"):
        collate_padded([a], pad_token_id=0, pad_to=2)
