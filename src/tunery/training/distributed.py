"""Data-parallel training across processes: which rank this is, and the few collectives the loop needs.

``python -m tunery.training --processes N spec.json`` starts ``torch.distributed.run`` (torchrun) in-process,
which starts N ranks of ``python -m tunery.training spec.json``; each rank calls ``join`` and gets a
``Ranks``: ``gloo`` on CPU, ``nccl`` on CUDA (one GPU per local rank). A single process gets ``SINGLE`` and
no collective ever runs.

Each optimizer step's examples are sharded by rank (``shard``: rank r takes examples r, r+N, ...), so the
global batch is exactly a single process's. The trainable-token count is summed across ranks before any
backward pass, every rank divides its loss sum by that global count, and the LoRA gradients are then summed
across ranks (``sum_gradients``): the result is the single-process gradient, whatever the number of ranks.

Why the gradients are all-reduced here rather than by wrapping the model in ``DistributedDataParallel``:
DDP's reducer expects each rank to run the same number of forward passes through the wrapper, one per
backward. Here a rank's micro-batch count depends on its examples' lengths (it may even have none on an
epoch's short last step), and the LM head runs on trainable positions only, outside the model's forward
(``training.head``). One flat all-reduce of the LoRA gradients after the last micro-batch is what DDP's
buckets do in the end, with no such constraint; it is one collective per step (the LoRA gradients are a
few MB).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ranks:
    """This process's place among the ranks training one job (``SINGLE`` when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone writes progress records, checkpoints and state, and reads pause/cancel requests."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of one step's examples (all of them when alone)."""
        return list(items[self.rank :: self.world])

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums of ``values`` over all ranks (float64, so token counts stay exact)."""
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor.cpu()]

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its sum over all ranks (a missing gradient counts as zeros)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for param in params:
            size = param.numel()
            param.grad = flat[offset : offset + size].view_as(param).clone()
            offset += size

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (pause/cancel requests, so all ranks stop at the same step)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = Ranks()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def join(device: str) -> Ranks:
    """This process's ``Ranks``: joins the process group torchrun set up (``WORLD_SIZE`` > 1), else ``SINGLE``.

    ``device`` is the spec's (``auto``/``cpu``/``cuda``): CUDA ranks use ``nccl`` and GPU ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Ranks(rank=rank, world=world, local_rank=local_rank)


def leave(ranks: Ranks) -> None:
    """Tear the process group down (after the last collective)."""
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def torchrun(processes: int, spec_path: str) -> int:
    """Run ``processes`` ranks of the trainer on this machine under torchrun; their worst exit code.

    torchrun stops every rank as soon as one fails, so a rank that dies ends the whole run (the worker then
    treats it as a trainer that died). Multi-node runs launch the same trainer with torchrun's own
    rendezvous options instead (see README, "Scaling out").
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(processes), "-m", "tunery.training", spec_path]
    )
    try:
        run(args)
    except ChildFailedError:
        return 1
    return 0
