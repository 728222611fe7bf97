"""The replay buffer: ring order, shapes and dtypes, seeded sampling, save/load round trip, optional extras and
planner memories."""

from __future__ import annotations

import io

import pytest
import torch

from rlreg.buffer import ReplayBuffer, Transition

STATE = (2, 6, 5)
PLAN = 4
MEMORY = (3, 2, 2)


def batch(start: int, count: int, extras: bool = True, memory: bool = False) -> Transition:
    """``count`` transitions whose every tensor encodes its id ``start .. start + count - 1``."""
    ids = torch.arange(start, start + count)
    fill = ids.view(-1, 1, 1, 1).float()
    return Transition(
        state=fill.expand(count, *STATE).clone(),
        plan=ids.view(-1, 1).float().expand(count, PLAN).clone(),
        reward=ids.float() * 0.5,
        next_state=(fill + 0.25).expand(count, *STATE).clone(),
        terminated=ids % 3 == 0,
        extras=ids.view(-1, 1, 1, 1).to(torch.int16).expand(count, *STATE).clone() if extras else None,
        memory=fill.expand(count, *MEMORY).clone() if memory else None,
        next_memory=(fill + 0.5).expand(count, *MEMORY).clone() if memory else None,
    )


def stored_ids(buffer: ReplayBuffer) -> set[int]:
    every = buffer.sample(2000, torch.Generator().manual_seed(0))
    return set(every.plan[:, 0].long().tolist())


def test_ring_keeps_the_newest_capacity() -> None:
    buffer = ReplayBuffer(capacity=5)
    assert len(buffer) == 0 and buffer.nbytes == 0
    buffer.add(batch(0, 3))
    assert len(buffer) == 3 and stored_ids(buffer) == {0, 1, 2}
    buffer.add(batch(3, 4))  # wraps around: 0 and 1 are overwritten
    assert len(buffer) == 5 and stored_ids(buffer) == {2, 3, 4, 5, 6}
    buffer.add(batch(7, 12))  # more than the capacity at once: only the newest 5 stay
    assert len(buffer) == 5 and stored_ids(buffer) == {14, 15, 16, 17, 18}
    buffer.add(batch(19, 1))
    assert stored_ids(buffer) == {15, 16, 17, 18, 19}


def test_sample_shapes_dtypes_and_consistency() -> None:
    buffer = ReplayBuffer(capacity=8)
    buffer.add(batch(0, 6))
    sample = buffer.sample(10)
    assert sample.state.shape == (10, *STATE) and sample.state.dtype == torch.float32
    assert sample.next_state.shape == (10, *STATE)
    assert sample.plan.shape == (10, PLAN) and sample.reward.shape == (10,)
    assert sample.terminated.dtype == torch.bool and sample.terminated.shape == (10,)
    assert sample.extras is not None and sample.extras.dtype == torch.int16 and sample.extras.shape == (10, *STATE)
    # Every field of a sampled row comes from the same transition.
    ids = sample.plan[:, 0]
    assert torch.equal(sample.state[:, 0, 0, 0], ids) and torch.equal(sample.next_state[:, 0, 0, 0], ids + 0.25)
    assert torch.equal(sample.reward, ids * 0.5) and torch.equal(sample.extras[:, 0, 0, 0].float(), ids)
    assert torch.equal(sample.terminated, ids.long() % 3 == 0)
    assert buffer.nbytes == 8 * ReplayBuffer.bytes_per_transition(STATE, PLAN, STATE, extras_dtype=torch.int16)


def test_seeded_sampling_is_deterministic() -> None:
    buffer = ReplayBuffer(capacity=50)
    buffer.add(batch(0, 50))
    first = buffer.sample(16, torch.Generator().manual_seed(123))
    again = buffer.sample(16, torch.Generator().manual_seed(123))
    other = buffer.sample(16, torch.Generator().manual_seed(124))
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first.plan, other.plan)


@pytest.mark.parametrize("extras", [True, False])
@pytest.mark.parametrize("filled", [3, 11])  # partly filled, and wrapped around
def test_state_dict_round_trip(extras: bool, filled: int) -> None:
    buffer = ReplayBuffer(capacity=7)
    buffer.add(batch(0, filled, extras))
    stream = io.BytesIO()
    torch.save(buffer.state_dict(), stream)
    stream.seek(0)
    restored = ReplayBuffer(capacity=1)
    restored.load_state_dict(torch.load(stream, weights_only=True))
    assert len(restored) == len(buffer) and restored.capacity == 7
    for seed in range(3):
        a = buffer.sample(9, torch.Generator().manual_seed(seed))
        b = restored.sample(9, torch.Generator().manual_seed(seed))
        for x, y in zip(a, b, strict=True):
            assert (x is None and y is None) or (x.dtype == y.dtype and torch.equal(x, y))
    # The ring continues where it stopped: the next adds overwrite the same (oldest) transitions in both.
    buffer.add(batch(100, 4, extras))
    restored.add(batch(100, 4, extras))
    assert stored_ids(buffer) == stored_ids(restored)


def test_extras_none_is_stored_as_none_and_must_stay_consistent() -> None:
    buffer = ReplayBuffer(capacity=4)
    buffer.add(batch(0, 2, extras=False))
    assert buffer.sample(3).extras is None
    with pytest.raises(ValueError, match="must stay None"):
        buffer.add(batch(2, 2, extras=True))
    with_extras = ReplayBuffer(capacity=4)
    with_extras.add(batch(0, 2))
    with pytest.raises(ValueError, match="cannot be None"):
        with_extras.add(batch(2, 2, extras=False))
    with pytest.raises(ValueError, match="per-transition shape"):
        with_extras.add(batch(0, 2)._replace(plan=torch.zeros(2, PLAN + 1)))
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(capacity=4).sample(1)


def test_bytes_per_transition() -> None:
    # Two float32 states of 2x64^3, a 64-d plan, a reward, a bool, and two int64 segmentations.
    voxels = 64**3
    expected = 2 * 2 * voxels * 4 + 64 * 4 + 4 + 1 + 2 * voxels * 8
    assert ReplayBuffer.bytes_per_transition((2, 64, 64, 64), 64, (2, 64, 64, 64)) == expected
    assert ReplayBuffer.bytes_per_transition((2, 28, 28), 49, dtype=torch.float16) == 2 * 2 * 784 * 2 + 49 * 2 + 2 + 1


@pytest.mark.parametrize("filled", [3, 11])
def test_memories_are_stored_sampled_and_round_trip(filled: int) -> None:
    buffer = ReplayBuffer(capacity=7)
    buffer.add(batch(0, filled, memory=True))
    sample = buffer.sample(20, torch.Generator().manual_seed(0))
    assert sample.memory is not None and sample.next_memory is not None
    assert sample.memory.shape == (20, *MEMORY) and sample.next_memory.shape == (20, *MEMORY)
    ids = sample.plan[:, 0].view(-1, 1, 1, 1)
    assert torch.equal(sample.memory, ids.expand_as(sample.memory))  # rows stay together
    assert torch.equal(sample.next_memory, (ids + 0.5).expand_as(sample.next_memory))
    assert buffer.nbytes == 7 * ReplayBuffer.bytes_per_transition(STATE, PLAN, STATE, extras_dtype=torch.int16,
                                                                  memory_shape=MEMORY)
    state = buffer.state_dict()
    assert {"memory", "next_memory"} <= set(state["storage"])
    stream = io.BytesIO()
    torch.save(state, stream)
    stream.seek(0)
    restored = ReplayBuffer(capacity=1)
    restored.load_state_dict(torch.load(stream, weights_only=True))
    for seed in range(3):
        a = buffer.sample(9, torch.Generator().manual_seed(seed))
        b = restored.sample(9, torch.Generator().manual_seed(seed))
        for x, y in zip(a, b, strict=True):
            assert x is not None and y is not None and x.dtype == y.dtype and torch.equal(x, y)


def test_no_memory_takes_no_storage_and_memories_must_stay_consistent() -> None:
    plain = ReplayBuffer(capacity=4)
    plain.add(batch(0, 2))
    assert set(plain.state_dict()["storage"]) == {"state", "plan", "reward", "next_state", "terminated", "extras"}
    assert plain.sample(3).memory is None and plain.sample(3).next_memory is None
    with pytest.raises(ValueError, match="must stay None"):
        plain.add(batch(2, 2, memory=True))
    with_memory = ReplayBuffer(capacity=4)
    with_memory.add(batch(0, 2, memory=True))
    with pytest.raises(ValueError, match="cannot be None"):
        with_memory.add(batch(2, 2))
    with pytest.raises(ValueError, match="both be given"):
        with_memory.add(batch(2, 2, memory=True)._replace(next_memory=None))
    bad = with_memory.state_dict()
    del bad["storage"]["next_memory"]
    with pytest.raises(ValueError, match="only one of memory and next_memory"):
        ReplayBuffer(capacity=4).load_state_dict(bad)
    voxels = 64**3
    assert ReplayBuffer.bytes_per_transition((2, 64, 64, 64), 64, memory_shape=(32, 8, 8, 8)) == (
        2 * 2 * voxels * 4 + 64 * 4 + 4 + 1 + 2 * 32 * 8**3 * 4)
