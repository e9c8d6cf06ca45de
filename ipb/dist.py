"""Collectives over data-parallel workers, as no-ops in a single process (plain torch, no Ray).

    python -c "import torch; from ipb.dist import all_reduce_sum; print(all_reduce_sum(torch.ones(2)))"

Ray Train sets up the process group (gloo on CPU, NCCL on GPU); unit tests and one-worker
trials have none, and every helper here is then the identity. Every rank must call the same
collectives in the same order, which is why methods call them even with nothing to count.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over workers when a process group is up, else a copy-free identity."""
    if not is_distributed():
        return x
    x = x.clone()
    if dist.get_backend() == "nccl" and x.device.type != "cuda":
        y = x.cuda()        # NCCL reduces CUDA tensors only
        dist.all_reduce(y)
        return y.to(x.device)
    dist.all_reduce(x)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(x) / world_size()


def global_sum(x: float) -> float:
    """A Python number summed over workers (counts, sizes)."""
    return float(all_reduce_sum(torch.tensor([float(x)], dtype=torch.float64))[0])
