"""Data-parallel fine-tuning under a launcher: `accelerate launch` (or torchrun) starts N copies of
`recall finetune` with the same arguments, and each copy trains on its own shard of every batch.

Without a launcher (WORLD_SIZE unset or 1) `Processes.alone()` is used and nothing here runs: the
single-process loop is exactly the one it has always been, and accelerate is not even imported.
Under a launcher `accelerate.Accelerator` sets up the process group (NCCL on GPUs, gloo on CPUs) and
the device of each process, and its collectives do the rest:

- every process reads the same seeded batches and takes its contiguous share of each batch's rows
  (`shard`); the loss of each share is weighted by the whole batch's answer tokens, so the summed
  (`sum_gradients`: all-reduce SUM) gradients are those of one process training on the whole batch,
  up to float rounding;
- the trainable weights start equal (broadcast from process 0) and every process applies the same
  summed gradients, so they stay equal;
- only process 0 writes checkpoints and outputs.

Why not `accelerator.prepare(model, optimizer, scheduler)` (DistributedDataParallel)? A batch runs
as micro-batches whose number differs between processes (a share may even be empty for a short last
batch), while DDP needs the same number of backward passes everywhere; a prepared scheduler steps
once per process; and the LoRA gradients are small (a few MB), so one all-reduce per step costs little.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from recall.errors import RecallError
from recall.models import default_device

Batch = dict[str, torch.Tensor]


def launched_processes() -> int:
    """How many processes a launcher started (its WORLD_SIZE); 1 without a launcher."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE") or 1))
    except ValueError:
        raise RecallError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel processes of one fine-tune."""

    rank: int
    world: int
    device: torch.device
    accelerator: Any = None  # accelerate.Accelerator when world > 1

    @classmethod
    def alone(cls) -> Processes:
        return cls(0, 1, torch.device(default_device()))

    @classmethod
    def from_environment(cls) -> Processes:
        """One process alone, or (WORLD_SIZE > 1, set by `accelerate launch` / torchrun) this one of many."""
        world = launched_processes()
        if world == 1:
            return cls.alone()
        try:
            from accelerate import Accelerator
        except ImportError:
            raise RecallError(
                f"WORLD_SIZE={world}: multi-process fine-tuning needs the accelerate package; pip install accelerate"
            ) from None
        accelerator = Accelerator(cpu=not torch.cuda.is_available())  # gloo on a machine without GPUs
        if accelerator.num_processes != world:
            raise RecallError(
                f"WORLD_SIZE={world} but accelerate set up {accelerator.num_processes} process(es) "
                f"({accelerator.distributed_type}); start recall with `accelerate launch` or torchrun"
            )
        device = torch.device("cpu") if accelerator.device.type == "cpu" else accelerator.device  # not "cpu:0"
        return cls(accelerator.process_index, world, device, accelerator)

    @property
    def main(self) -> bool:
        """The process that logs and writes."""
        return self.rank == 0

    def shard(self, batch: Batch) -> Batch | None:
        """This process's contiguous share of the batch's rows, cut to its longest row (right padding);
        None when the batch has fewer rows than there are processes and none is left for this one."""
        if self.world == 1:
            return batch
        rows = batch["input_ids"].shape[0]
        start, stop = rows * self.rank // self.world, rows * (self.rank + 1) // self.world
        if start == stop:
            return None
        part = {k: v[start:stop] for k, v in batch.items()}
        width = int(part["attention_mask"].sum(1).max())
        return {k: v[:, :width] for k, v in part.items()}

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Every process's gradients replaced by their sum over the processes (one all-reduce per dtype);
        a parameter a process computed no gradient for counts as zeros."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for dtype in dict.fromkeys(p.grad.dtype for p in params):
            group = [p for p in params if p.grad.dtype == dtype]
            flat = self.accelerator.reduce(torch.cat([p.grad.reshape(-1) for p in group]), reduction="sum")
            for p, value in zip(group, flat.split([p.numel() for p in group])):
                p.grad.copy_(value.view_as(p.grad))

    def sum(self, value: float) -> float:
        """`value` summed over the processes."""
        if self.world == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(total, reduction="sum").item()

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Process 0's values of `tensors` (parameters or plain tensors) in every process, in place."""
        if self.world == 1:
            return
        from accelerate.utils import broadcast

        with torch.no_grad():
            for t in tensors:
                t.data = broadcast(t.data.contiguous(), from_process=0)

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every process, by rank (a collective: every process must call it)."""
        if self.world == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def wait(self) -> None:
        """Until every process has got here."""
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def rng_state(self) -> dict:
        """This process's RNG state: the CPU generator's and the GPUs' (one process: all of them, as
        always; under a launcher: its own GPU only)."""
        if self.world == 1:
            return {
                "cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
        own = [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []
        return {"cpu": torch.get_rng_state(), "cuda": own}

    def set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["cpu"])
        if not (state["cuda"] and torch.cuda.is_available()):
            return
        if self.world == 1:
            torch.cuda.set_rng_state_all(state["cuda"])
        elif self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"][0], self.device)
