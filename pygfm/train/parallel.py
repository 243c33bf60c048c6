"""Data-parallel training: find the job's ranks and start torch.distributed.

The same command runs alone, under ``mpiexec``/``srun`` (MPI: rank 0 picks an
address and port and broadcasts them with mpi4py) or under ``torchrun``
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set by it). The
process group uses gloo on CPUs and NCCL (RCCL on ROCm) on GPUs.

Gradients are averaged with bucketed all-reduces of the flattened gradients
after the backward pass: the arithmetic of DistributedDataParallel, without its
hooks (which do not see the gradients that force training takes inside the
forward pass, and which need every parameter to be used in every step: a batch
need not visit every head).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import sys

import torch
import torch.distributed as dist

from ..distributed import discover, mpi_comm

from .config import ConfigError
from .resume import config_differences

__all__ = ["Parallel", "RankConfigError"]


class RankConfigError(ConfigError):
    """The ranks of one job were given different configs. Every rank raises it
    (they all compared the same configs), so none needs to end the others."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _address() -> str:
    host = socket.gethostname()
    try:
        return socket.gethostbyname(host)
    except OSError:
        return "127.0.0.1"


class Parallel:
    """This process's place in the job; a no-op when it runs alone."""

    def __init__(self, backend: str = "auto", device: torch.device | None = None,
                 timeout: float = 300.0):
        self.comm = mpi_comm()
        launch = discover()
        if self.comm is not None:
            self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
            self.launcher = "mpi"
        elif launch.launcher == "torchrun":
            self.rank, self.size = launch.rank, launch.size
            self.launcher = "torchrun"
        else:
            self.rank, self.size, self.launcher = 0, 1, "single"
        self.local_rank = launch.local_rank
        self.started = False
        if self.size == 1:
            return
        if backend == "auto":
            backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        if self.launcher == "mpi":
            address = (os.environ.get("MASTER_ADDR") or _address(),
                       int(os.environ.get("MASTER_PORT", 0)) or _free_port()) \
                if self.rank == 0 else None
            address = self.comm.bcast(address, root=0)
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address[0], str(address[1])
        dist.init_process_group(backend=backend, rank=self.rank, world_size=self.size,
                                timeout=datetime.timedelta(seconds=timeout))
        self.backend = backend
        self.started = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------- collectives
    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a new tensor on the tensor's device)."""
        if self.size == 1:
            return tensor.clone()
        out = tensor.to(self._collective_device(), copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(tensor.device)

    def allreduce_max(self, value: int) -> int:
        """The largest ``value`` over ranks (the loader's step count)."""
        if self.size == 1:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        if self.size == 1:
            return bool(flag)
        return self.allreduce_max(int(bool(flag))) > 0

    def _collective_device(self):
        return torch.device("cuda", torch.cuda.current_device()) \
            if self.started and self.backend == "nccl" else torch.device("cpu")

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Make every rank's weights and buffers rank 0's."""
        if self.size == 1:
            return
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)

    def sum_gradients(self, parameters, bucket_bytes: int = 32 * 2**20) -> None:
        """Sum the gradients of ``parameters`` over ranks in place (a missing
        gradient counts as zero, and becomes a tensor)."""
        if self.size == 1:
            return
        params = [p for p in parameters if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket, size = [], 0
        for p in params + [None]:
            if p is not None and (not bucket or (p.grad.dtype == bucket[0].grad.dtype
                                                 and size < bucket_bytes)):
                bucket.append(p)
                size += p.grad.numel() * p.grad.element_size()
                continue
            if bucket:
                flat = torch.cat([q.grad.reshape(-1) for q in bucket])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                offset = 0
                for q in bucket:
                    n = q.grad.numel()
                    q.grad.copy_(flat[offset:offset + n].view_as(q.grad))
                    offset += n
            bucket, size = ([p], p.grad.numel() * p.grad.element_size()) if p is not None \
                else ([], 0)

    def check_same_config(self, config: dict) -> None:
        """RankConfigError on every rank when the ranks' resolved configs differ
        (say an environment-dependent --set): the message names the keys."""
        if self.size == 1:
            return
        text = json.dumps(config, sort_keys=True, default=str)
        digests = [None] * self.size
        dist.all_gather_object(digests, hashlib.sha256(text.encode()).hexdigest())
        if len(set(digests)) == 1:
            return
        configs = [None] * self.size
        dist.all_gather_object(configs, config)
        other = next(r for r in range(self.size) if digests[r] != digests[0])
        keys = config_differences(configs[0], configs[other])
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        raise RankConfigError(f"the ranks were given different configs: rank {other} differs "
                              f"from rank 0 in {shown or 'its config'}; every rank must "
                              "run the same config (check --set values that depend on the "
                              "environment)")

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        """End the process group once every rank is done with it: rank 0 hosts the
        group's TCP store, and a rank that tore it down while another still used it
        ended that one in std::terminate (seen as exit code 6 of a finished run)."""
        if self.started:
            dist.barrier()
            dist.destroy_process_group()
            self.started = False

    def abort(self, code: int = 1) -> None:
        """End the whole job after an error on this rank, so no other rank waits
        forever in a collective (MPI: Abort; torchrun's agent stops the others
        when this process exits)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is not None and self.size > 1:
            self.comm.Abort(code)
        os._exit(code)
