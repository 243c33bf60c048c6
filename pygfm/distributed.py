"""Where this process stands in a parallel job, discovered from the environment.

The same command runs alone, under ``mpiexec``/``srun`` (MPI) or under
``torchrun``: :func:`mpi_comm` returns mpi4py's COMM_WORLD only when an MPI
launcher started more than one process, so a plain run never imports MPI.
"""

from __future__ import annotations

import os

__all__ = ["mpi_comm", "launched_by_mpi", "rank_and_size"]

# (size variable, rank variable) set by common MPI launchers
_MPI_ENV = (("PMI_SIZE", "PMI_RANK"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
            ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"), ("PMIX_SIZE", "PMIX_RANK"),
            ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID"))


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process as one of several."""
    for size_name, _ in _MPI_ENV:
        value = os.environ.get(size_name)
        if value and value.isdigit() and int(value) > 1:
            return True
    return False


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
    """(rank, world size) of ``comm`` or, without one, of torchrun's environment."""
    if comm is not None:
        return comm.Get_rank(), comm.Get_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
