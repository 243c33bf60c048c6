"""Where this process stands in a parallel job, discovered from the environment.

The one place that knows the launchers. The same command runs alone, under an
MPI launcher (``mpiexec``/``mpirun`` of MPICH/Hydra, Open MPI, MVAPICH, Intel
MPI; ``srun``; Cray PALS' ``mpiexec`` on Aurora and Polaris, Cray PMI) or under
``torchrun``; :func:`discover` reads the variables each one sets:

===============  ======================  =========================  ===========================
launcher         rank / size             local rank / local size    notes
===============  ======================  =========================  ===========================
torchrun         RANK / WORLD_SIZE       LOCAL_RANK /               also MASTER_ADDR, MASTER_PORT
                                         LOCAL_WORLD_SIZE
Open MPI         OMPI_COMM_WORLD_RANK /  OMPI_COMM_WORLD_LOCAL_*
                 OMPI_COMM_WORLD_SIZE
MVAPICH          MV2_COMM_WORLD_RANK /   MV2_COMM_WORLD_LOCAL_*
                 MV2_COMM_WORLD_SIZE
Cray PALS        PALS_RANKID / PMI_SIZE  PALS_LOCAL_RANKID /        Aurora's mpiexec
                                         PALS_LOCAL_SIZE
MPICH (Hydra)    PMI_RANK / PMI_SIZE     MPI_LOCALRANKID /          also Intel MPI
                                         MPI_LOCALNRANKS
Cray PMI         PMI_RANK / PMI_SIZE     PMI_LOCAL_RANK /
                                         PMI_LOCAL_SIZE
other PMI        PMI_RANK / PMI_SIZE     (from Slurm or others)
PMIx             PMIX_RANK / PMIX_SIZE   (from Slurm or Open MPI)
Slurm (srun)     SLURM_PROCID /          SLURM_LOCALID /            a batch script alone sets no
                 SLURM_STEP_NUM_TASKS    SLURM_STEP_TASKS_PER_NODE  SLURM_STEP_NUM_TASKS > 1
===============  ======================  =========================  ===========================

A launcher that starts one process is a single run. :func:`mpi_comm` returns
mpi4py's COMM_WORLD only when an MPI launcher started more than one process, so
a plain run never imports MPI. GPUs are bound by local rank (:func:`gpu_index`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

__all__ = ["Launch", "LAUNCH_VARIABLES", "discover", "gpu_index", "launched_by_mpi", "mpi_comm",
           "rank_and_size", "without_launch_variables"]


@dataclass(frozen=True)
class _Launcher:
    name: str
    rank: str
    size: str
    local_rank: tuple[str, ...]
    local_size: tuple[str, ...]
    mpi: bool = True
    marker: str | None = None  # a variable that tells launchers with the same rank names apart


# Checked in order: the first launcher whose rank and size variables are both set
# wins. Specific launchers come before the generic PMI names they also set (PALS
# and Hydra set PMI_RANK too), and Slurm last (srun also launches MPI programs).
_LAUNCHERS = (
    _Launcher("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
              ("OMPI_COMM_WORLD_LOCAL_RANK",), ("OMPI_COMM_WORLD_LOCAL_SIZE",)),
    _Launcher("mvapich", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE",
              ("MV2_COMM_WORLD_LOCAL_RANK",), ("MV2_COMM_WORLD_LOCAL_SIZE",)),
    _Launcher("pals", "PALS_RANKID", "PMI_SIZE", ("PALS_LOCAL_RANKID", "PMI_LOCAL_RANK"),
              ("PALS_LOCAL_SIZE", "PMI_LOCAL_SIZE")),
    _Launcher("hydra", "PMI_RANK", "PMI_SIZE", ("MPI_LOCALRANKID",), ("MPI_LOCALNRANKS",),
              marker="MPI_LOCALRANKID"),
    _Launcher("cray-pmi", "PMI_RANK", "PMI_SIZE", ("PMI_LOCAL_RANK",), ("PMI_LOCAL_SIZE",),
              marker="PMI_LOCAL_RANK"),
    _Launcher("pmi", "PMI_RANK", "PMI_SIZE", (), ()),  # another PMI-1/2 launcher
    _Launcher("pmix", "PMIX_RANK", "PMIX_SIZE", ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"),
              ("OMPI_COMM_WORLD_LOCAL_SIZE",)),
    _Launcher("slurm", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", ("SLURM_LOCALID",),
              ("SLURM_STEP_TASKS_PER_NODE",)),
)
_TORCHRUN = _Launcher("torchrun", "RANK", "WORLD_SIZE", ("LOCAL_RANK",), ("LOCAL_WORLD_SIZE",),
                      mpi=False)

# Every variable above, plus the prefixes launchers use for their own state: what
# a child process must not inherit if it is not to believe it is a rank of this job.
LAUNCH_VARIABLES = frozenset(
    name for launcher in _LAUNCHERS + (_TORCHRUN,)
    for name in (launcher.rank, launcher.size) + launcher.local_rank + launcher.local_size
) | {"SLURM_NTASKS", "SLURM_STEP_ID", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
     "TORCHELASTIC_RUN_ID"}
_LAUNCH_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "HYDRA_", "HYDI_", "MV2_", "MPIR_",
                    "I_MPI_", "PALS_")


@dataclass(frozen=True)
class Launch:
    """This process's place in the job.

    ``launcher`` is "single", "torchrun" or the MPI launcher's name (see the
    module's table); ``local_rank`` counts the processes on this node (0 when
    the launcher does not say); ``local_size`` is None when unknown."""
    launcher: str
    rank: int
    size: int
    local_rank: int
    local_size: int | None

    @property
    def mpi(self) -> bool:
        """Whether an MPI launcher started this process as one of several."""
        return self.launcher not in ("single", "torchrun")


def _integer(environ: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = environ.get(name, "")
        # Slurm writes tasks per node as "4(x2),3": the first is this layout's own count
        match = re.match(r"\s*(\d+)", value)
        if match:
            return int(match.group(1))
    return None


def discover(environ: Mapping[str, str] | None = None) -> Launch:
    """This process's :class:`Launch`, from ``environ`` (default ``os.environ``).

    Raises ``ValueError`` naming the variables when a launcher's values are
    inconsistent (a rank outside 0..size-1)."""
    environ = os.environ if environ is None else environ
    for launcher in _LAUNCHERS + (_TORCHRUN,):
        rank, size = _integer(environ, (launcher.rank,)), _integer(environ, (launcher.size,))
        if rank is None or size is None or size <= 1:
            continue
        if launcher.marker is not None and launcher.marker not in environ:
            continue
        if not 0 <= rank < size:
            raise ValueError(f"{launcher.rank}={rank} is not a rank of {launcher.size}={size} "
                             f"({launcher.name} launch)")
        local_rank = _integer(environ, launcher.local_rank)
        if local_rank is None:  # another launcher's local rank is still this node's
            local_rank = _integer(environ, tuple(n for other in _LAUNCHERS + (_TORCHRUN,)
                                                 for n in other.local_rank))
        local_size = _integer(environ, launcher.local_size)
        return Launch(launcher.name, rank, size, local_rank or 0, local_size)
    return Launch("single", 0, 1, 0, 1)


def launched_by_mpi(environ: Mapping[str, str] | None = None) -> bool:
    """True when an MPI launcher started this process as one of several."""
    return discover(environ).mpi


def gpu_index(device_count: int, environ: Mapping[str, str] | None = None) -> int:
    """The GPU this process takes: its local rank modulo ``device_count``.

    Ranks on one node get different GPUs; the global rank would give every
    node's first process GPU 0 only by chance."""
    if device_count < 1:
        raise ValueError(f"device_count: expected at least one GPU, got {device_count}")
    return discover(environ).local_rank % device_count


def without_launch_variables(environ: Mapping[str, str] | None = None) -> dict:
    """A copy of ``environ`` without what launchers set for this process: for a
    child that must run as a job of its own (an HPO trial)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items()
            if k not in LAUNCH_VARIABLES and not k.startswith(_LAUNCH_PREFIXES)}


def mpi_comm():
    """mpi4py's COMM_WORLD when launched by MPI with more than one process, else None.

    Fails with a clear message when the launcher says there are several
    processes but mpi4py is not installed (every rank would otherwise do all
    the work)."""
    if not launched_by_mpi():
        return None
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError("this process was started by an MPI launcher with several ranks, "
                          "but mpi4py is not installed: pip install mpi4py") from error
    return MPI.COMM_WORLD


def rank_and_size(comm=None) -> tuple[int, int]:
    """(rank, world size) of ``comm`` or, without one, of the launcher's environment."""
    if comm is not None:
        return comm.Get_rank(), comm.Get_size()
    launch = discover()
    return launch.rank, launch.size
