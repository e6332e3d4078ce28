"""Memory a run would hold at its peak, estimated from its sizes before any compute, against what this machine (or
its GPU) has: a configuration that cannot fit is refused in one line naming its inputs and the limit, instead of
failing minutes in with a traceback, swapping, or being killed.

    needs = [Need("the weights of each network", {"width": 1024, "depth": 16}, 5 * 16 * 1024 ** 2 * 4), ...]
    problem = memory_problem(needs)    None, or one line: the inputs of the largest need, the total, the limit

A command's estimate counts the allocations that grow with its inputs (each derived from what its code allocates
and checked against a measured peak within a stated factor); it is an order of magnitude, not a bound.
"""
from __future__ import annotations

from dataclasses import dataclass

from sim.machine import physical_memory

FLOAT32, FLOAT64, INT64 = 4, 8, 8


@dataclass(frozen=True)
class Need:
    """`size` bytes held at the peak for `what`, set by `inputs` ({name: value}, the names a user gives)."""

    what: str
    inputs: dict
    size: int


def machine_memory() -> int | None:
    """Physical memory of this machine in bytes (None where the system does not say)."""
    return physical_memory()


def device_memory(device: str) -> int | None:
    """Total memory in bytes of a CUDA device ("cuda", "cuda:N"); None for the CPU (its memory is the host's)."""
    if not device.startswith("cuda"):
        return None
    import torch
    return torch.cuda.get_device_properties(torch.device(device)).total_memory


def size_text(size: float) -> str:
    """Bytes as text with a binary unit: 512 B, 3.2 GiB, 7.1 PiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:.3g} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def memory_problem(needs: list[Need], limit: int | None = None, where: str = "this machine's memory"
                   ) -> str | None:
    """None when the needs fit in `limit` bytes (default: this machine's memory; no limit known: None), else one
    line: the inputs of the largest need with their values, the total, the limit and what the largest need is."""
    limit = machine_memory() if limit is None else limit
    total = sum(need.size for need in needs)
    if limit is None or total <= limit:
        return None
    largest = max(needs, key=lambda need: need.size)
    inputs = ", ".join(f"{name}={value}" for name, value in largest.inputs.items())
    return (f"{inputs}: this run would hold about {size_text(total)} in memory at its peak, more than "
            f"{where} ({size_text(limit)}); {size_text(largest.size)} of it {largest.what}")
