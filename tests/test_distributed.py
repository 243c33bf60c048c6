"""pygfm.distributed: every launcher's environment gives the right rank, size and GPU."""

from __future__ import annotations

import pytest

from pygfm.distributed import (Launch, LAUNCH_VARIABLES, discover, gpu_index, launched_by_mpi,
                               without_launch_variables)

# What each launcher sets for the 6th of 8 processes, the 2nd of 4 on its node
# (variables as each launcher's documentation names them), plus decoys other
# launchers' runs often leave behind.
ENVIRONMENTS = {
    "openmpi": {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8",
                "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
                "PMIX_RANK": "5"},
    "mvapich": {"MV2_COMM_WORLD_RANK": "5", "MV2_COMM_WORLD_SIZE": "8",
                "MV2_COMM_WORLD_LOCAL_RANK": "1", "MV2_COMM_WORLD_LOCAL_SIZE": "4"},
    # Aurora: Cray PALS' mpiexec sets PALS_* and Cray PMI's PMI_RANK/PMI_SIZE
    "pals": {"PALS_RANKID": "5", "PALS_LOCAL_RANKID": "1", "PALS_NODEID": "1",
             "PALS_LOCAL_SIZE": "4", "PMI_RANK": "5", "PMI_SIZE": "8", "PMI_LOCAL_RANK": "1",
             "PMI_LOCAL_SIZE": "4"},
    "hydra": {"PMI_RANK": "5", "PMI_SIZE": "8", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "4",
              "PMI_FD": "7", "HYDRA_CONTROL_FD": "9"},
    "cray-pmi": {"PMI_RANK": "5", "PMI_SIZE": "8", "PMI_LOCAL_RANK": "1", "PMI_LOCAL_SIZE": "4"},
    "pmix": {"PMIX_RANK": "5", "PMIX_SIZE": "8", "SLURM_LOCALID": "1"},
    "slurm": {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8",
              "SLURM_LOCALID": "1", "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_STEP_ID": "0"},
    "torchrun": {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                 "MASTER_ADDR": "node01", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"},
}


@pytest.mark.parametrize("name", sorted(ENVIRONMENTS))
def test_each_launcher(name):
    environ = dict(ENVIRONMENTS[name], HOME="/root", PATH="/usr/bin")
    local_size = None if name == "pmix" else 4
    assert discover(environ) == Launch(name, 5, 8, 1, local_size)
    assert launched_by_mpi(environ) is (name != "torchrun")
    assert gpu_index(4, environ) == 1 and gpu_index(1, environ) == 0
    child = without_launch_variables(environ)
    assert child == {"HOME": "/root", "PATH": "/usr/bin"}, name
    assert discover(child) == Launch("single", 0, 1, 0, 1)


def test_srun_of_an_mpi_program_is_one_job():
    # srun with PMI-2 under Slurm sets both sets; they agree, and the MPI one wins
    environ = dict(ENVIRONMENTS["slurm"], PMI_RANK="5", PMI_SIZE="8")
    launch = discover(environ)
    assert (launch.rank, launch.size, launch.local_rank) == (5, 8, 1)


@pytest.mark.parametrize("environ", [
    {}, {"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_LOCALID": "0"},  # a batch script
    {"PMI_RANK": "0", "PMI_SIZE": "1"}, {"RANK": "0", "WORLD_SIZE": "1"},
    {"OMPI_COMM_WORLD_SIZE": "4"},  # a size without a rank is not a launch
], ids=["nothing", "sbatch-script", "mpiexec-n-1", "torchrun-1", "size-only"])
def test_single_process(environ):
    assert discover(environ) == Launch("single", 0, 1, 0, 1)
    assert not launched_by_mpi(environ)


def test_local_rank_from_another_launcher_when_the_own_is_missing():
    environ = {"PMI_RANK": "3", "PMI_SIZE": "4", "SLURM_LOCALID": "3"}  # hydra inside srun
    assert discover(environ).local_rank == 3


def test_inconsistent_launch_is_named():
    with pytest.raises(ValueError, match="PMI_RANK=9 is not a rank of PMI_SIZE=4"):
        discover({"PMI_RANK": "9", "PMI_SIZE": "4"})
    with pytest.raises(ValueError, match="device_count"):
        gpu_index(0, {})


def test_every_documented_variable_is_removed_for_children():
    for environ in ENVIRONMENTS.values():
        assert set(environ) - {"PMI_FD", "HYDRA_CONTROL_FD", "PALS_NODEID"} <= LAUNCH_VARIABLES


def test_a_bare_pmi_launch():
    launch = discover({"PMI_RANK": "2", "PMI_SIZE": "3", "SLURM_LOCALID": "0"})
    assert launch == Launch("pmi", 2, 3, 0, None) and launch.mpi
