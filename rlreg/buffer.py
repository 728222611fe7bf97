"""A ring replay buffer of batched transitions, stored on one device (SPAC keeps 800 transitions).

It stores **plans** (the planner's low-dimensional meta-action, e.g. 64 numbers), not the dense step fields: the
actor recomputes a field from ``(state, plan)`` during an update, so a transition costs two states and a few
numbers (plus the task's extras, e.g. two segmentations), and the critics score ``Q(s, p)`` as in the paper.

A planner with a recurrent memory (``network.memory="gru"``) also stores the memory it acted from (``memory``)
and the one it produced (``next_memory``), the "stored state" of R2D2 (Kapturowski et al., ICLR 2019) without
burn-in, so an update recomputes the plans of ``state`` and ``next_state`` from the memories they were acted with.
Without memory these fields are ``None`` and take no storage.

Storage is allocated on the first :meth:`ReplayBuffer.add` with the shapes and dtypes seen there (nothing is cast
down to save memory), ``capacity`` rows per field; :meth:`ReplayBuffer.bytes_per_transition` sizes ``capacity``
from a memory budget. Adding and sampling are vectorised over the batch; sampling draws indices on the CPU from a
``torch.Generator``, so a seeded generator gives the same samples on any device.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["ReplayBuffer", "Transition"]

_FORMAT_VERSION = 1


class Transition(NamedTuple):
    """A batch of ``B`` transitions (the leading dimension of every tensor)."""

    state: Tensor
    """``(B, C, *S)`` observation the plan was taken in."""
    plan: Tensor
    """``(B, P)`` plan (meta-action) sampled by the planner."""
    reward: Tensor
    """``(B,)`` float reward."""
    next_state: Tensor
    """``(B, C, *S)`` observation after the step."""
    terminated: Tensor
    """``(B,)`` bool: the episode ended in success, so the target does not bootstrap (truncation is not stored:
    a truncated transition bootstraps like any other)."""
    extras: Tensor | None
    """``(B, ...)`` task tensors for the auxiliary loss (e.g. ``[fixed_seg, warped_seg]``), or ``None``."""
    memory: Tensor | None = None
    """``(B, *M)`` the planner's memory the plan was taken with (zero at an episode's first step), or ``None``
    for a planner without memory."""
    next_memory: Tensor | None = None
    """``(B, *M)`` the planner's memory after the step (the one ``next_state`` is acted with), or ``None``."""


_FIELDS = Transition._fields
_OPTIONAL = ("extras", "memory", "next_memory")


class ReplayBuffer:
    """Fixed-capacity FIFO replay memory; the oldest transitions are overwritten first.

    Memory is ``capacity * bytes_per_transition(...)`` on ``device``, allocated on the first :meth:`add`.
    """

    def __init__(self, capacity: int, device: torch.device | str = "cpu") -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self._storage: dict[str, Tensor] = {}
        self._position = 0  # next row to write
        self._size = 0

    def __len__(self) -> int:
        """Number of stored transitions, at most ``capacity``."""
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes allocated for storage (0 before the first :meth:`add`)."""
        return sum(t.numel() * t.element_size() for t in self._storage.values())

    def add(self, batch: Transition) -> None:
        """Append ``B`` transitions in one vectorised write; when ``B > capacity`` only the newest ``capacity`` stay.

        Tensors are copied to the buffer's device in the dtype of the storage (set by the first call). Shapes
        (beyond the batch dimension) and the presence of ``extras`` and of the memories must stay the same as in
        the first call; ``memory`` and ``next_memory`` come together.
        """
        fields = self._check(batch)
        count = fields["reward"].shape[0]
        if count == 0:
            return
        if count > self.capacity:  # only the newest rows would survive; also keeps the write indices distinct
            fields = {name: t[count - self.capacity:] for name, t in fields.items()}
            self._position = (self._position + count - self.capacity) % self.capacity
            count = self.capacity
        if not self._storage:
            self._storage = {name: torch.empty((self.capacity, *t.shape[1:]), dtype=t.dtype, device=self.device)
                             for name, t in fields.items()}
        rows = (self._position + torch.arange(count, device=self.device)) % self.capacity
        for name, tensor in fields.items():
            self._storage[name][rows] = tensor.detach().to(self.device)
        self._position = (self._position + count) % self.capacity
        self._size = min(self._size + count, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Transition:
        """``batch_size`` transitions drawn uniformly with replacement.

        Args:
            batch_size: number of transitions.
            generator: a CPU ``torch.Generator`` for reproducible indices; ``None`` uses the global CPU RNG.

        Returns:
            :class:`Transition` of new tensors on the buffer's device, in the stored dtypes.
        """
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        index = torch.randint(self._size, (batch_size,), generator=generator).to(self.device)
        stored = {name: self._storage[name][index] for name in self._storage}
        return Transition(stored["state"], stored["plan"], stored["reward"], stored["next_state"], stored["terminated"],
                          stored.get("extras"), stored.get("memory"), stored.get("next_memory"))

    def state_dict(self) -> dict[str, Any]:
        """Contents for ``torch.save``: tensors, ints and a dict only (loadable with ``weights_only=True``).

        Only the filled rows are saved. Rows ``0..size-1`` are exactly the filled ones (the ring starts at row 0),
        and the write position is saved with them, so a reload continues the ring where it stopped.
        """
        return {
            "format_version": _FORMAT_VERSION,
            "capacity": self.capacity,
            "position": self._position,
            "size": self._size,
            "storage": {name: t[: self._size].clone() for name, t in self._storage.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output exactly (the buffer's own device is kept; tensors are moved to it)."""
        if state.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"unsupported replay buffer format {state.get('format_version')!r}")
        capacity, position, size = int(state["capacity"]), int(state["position"]), int(state["size"])
        if not (capacity >= 1 and 0 <= size <= capacity and 0 <= position < capacity):
            raise ValueError(f"inconsistent replay buffer state: capacity {capacity}, size {size}, "
                             f"position {position}")
        storage: dict[str, Tensor] = state["storage"]
        unknown = set(storage) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown replay buffer fields {sorted(unknown)}")
        missing = [name for name in _FIELDS if name not in _OPTIONAL and name not in storage]
        if (storage or size) and missing:
            raise ValueError(f"replay buffer state lacks the fields {missing}")
        if ("memory" in storage) != ("next_memory" in storage):
            raise ValueError("replay buffer state holds only one of memory and next_memory")
        self.capacity, self._position, self._size = capacity, position, size
        self._storage = {}
        for name, saved in storage.items():
            if saved.shape[0] != size:
                raise ValueError(f"field {name!r} holds {saved.shape[0]} rows, expected {size}")
            full = torch.empty((capacity, *saved.shape[1:]), dtype=saved.dtype, device=self.device)
            full[:size] = saved.to(self.device)
            self._storage[name] = full

    @staticmethod
    def bytes_per_transition(state_shape: tuple[int, ...] | torch.Size, plan_dim: int,
                             extras_shape: tuple[int, ...] | torch.Size | None = None,
                             dtype: torch.dtype = torch.float32, extras_dtype: torch.dtype = torch.int64,
                             memory_shape: tuple[int, ...] | torch.Size | None = None) -> int:
        """Storage bytes of one transition, to size ``capacity`` by memory (``budget // bytes_per_transition``).

        Args:
            state_shape: ``(C, *S)`` one state without the batch dimension (stored twice: state, next state).
            plan_dim: plan size ``P``.
            extras_shape: ``(...)`` one transition's extras without the batch dimension, or ``None``.
            dtype: dtype of states, plan and reward (terminated is one ``bool`` byte).
            extras_dtype: dtype of the extras (segmentations; ``uint8`` / ``int16`` save memory).
            memory_shape: ``(*M)`` one planner memory without the batch dimension (stored twice, in ``dtype``:
                memory and next memory), or ``None`` for a planner without memory.

        Returns:
            Bytes, e.g. ``2*2*64**3*4 + 64*4 + 4 + 1`` = about 4 MiB for a 3D ``64**3`` pair with a 64-d plan.
        """
        item = torch.empty((), dtype=dtype).element_size()
        total = 2 * math.prod(state_shape) * item + plan_dim * item + item + 1
        if extras_shape is not None:
            total += math.prod(extras_shape) * torch.empty((), dtype=extras_dtype).element_size()
        if memory_shape is not None:
            total += 2 * math.prod(memory_shape) * item
        return total

    def _check(self, batch: Transition) -> dict[str, Tensor]:
        """Validate a batch against itself and the storage; return its tensors by field name (without ``None``)."""
        fields = {name: t for name, t in zip(_FIELDS, batch, strict=True) if t is not None}
        missing = [name for name in _FIELDS if name not in _OPTIONAL and name not in fields]
        if missing:
            raise ValueError(f"transition fields {missing} are None")
        if (batch.memory is None) != (batch.next_memory is None):
            raise ValueError("memory and next_memory must both be given or both be None")
        if batch.memory is not None and batch.next_memory is not None and batch.memory.shape != batch.next_memory.shape:
            raise ValueError(f"memory {tuple(batch.memory.shape)} and next_memory "
                             f"{tuple(batch.next_memory.shape)} differ")
        count = batch.reward.shape[0]
        if batch.reward.ndim != 1 or batch.terminated.shape != (count,) or batch.plan.ndim != 2:
            raise ValueError(f"need reward and terminated (B,) and plan (B, P); got {tuple(batch.reward.shape)}, "
                             f"{tuple(batch.terminated.shape)}, {tuple(batch.plan.shape)}")
        if batch.state.shape != batch.next_state.shape:
            raise ValueError(f"state {tuple(batch.state.shape)} and next_state {tuple(batch.next_state.shape)} differ")
        for name, tensor in fields.items():
            if tensor.shape[0] != count:
                raise ValueError(f"{name} has batch size {tensor.shape[0]}, reward has {count}")
            if self._storage:
                if name not in self._storage:
                    raise ValueError(f"{name} was None in the first add; it must stay None")
                if tensor.shape[1:] != self._storage[name].shape[1:]:
                    raise ValueError(f"{name} has per-transition shape {tuple(tensor.shape[1:])}, the buffer stores "
                                     f"{tuple(self._storage[name].shape[1:])}")
        for name in _OPTIONAL:
            if self._storage and name in self._storage and name not in fields:
                raise ValueError(f"{name} was stored in the first add; it cannot be None now")
        return fields
