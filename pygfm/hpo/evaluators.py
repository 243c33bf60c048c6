"""Where trials run: each trial is a separate ``pygfm-train`` process.

* :class:`ProcessEvaluator` (default): up to ``workers`` trials at once as child
  processes of ``pygfm-hpo``, each optionally behind a launcher prefix
  (``srun -N 1 -n 4 --exclusive``, ``mpiexec -n 2``) so that one trial can
  itself be a multi-rank, multi-GPU run on a cluster.
* :class:`MPIEvaluator`: under ``mpiexec -n N`` / ``srun -n N``, rank 0 drives the
  search and ranks 1..N-1 each run one trial at a time, started as a local
  child process. Messages go through mpi4py, so it works with MPICH and Open MPI
  alike (DeepHyper's own MPI evaluator runs trials inside the ranks: it aborts
  with the MPICH wheel, and a crashing trial would take its rank down).

A trial process that crashes, runs out of memory or is killed is one failed
trial: nothing runs inside ``pygfm-hpo`` itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..distributed import discover, without_launch_variables

__all__ = ["ProcessEvaluator", "MPIEvaluator", "trial_command", "trial_environment",
           "mpi_worker_loop", "Finished"]

def trial_environment(threads: int | None = None, gpu: str | None = None) -> dict:
    # a trial started from a rank of this job must not believe it is one of its ranks
    env = without_launch_variables()
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = env["HIP_VISIBLE_DEVICES"] = gpu
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def trial_command(config_path: Path, run_dir: Path, resume: bool,
                  launcher: list | None = None) -> list:
    command = [sys.executable, "-m", "pygfm.cli.train", str(config_path),
               "--run-dir", str(run_dir), "--quiet"]
    if resume:
        command.append("--resume")
    return list(launcher or []) + command


class Finished:
    """A trial process that ended: its id, exit status, seconds, and whether it
    was stopped for exceeding the time limit."""

    def __init__(self, trial, returncode: int, seconds: float, timed_out: bool):
        self.trial, self.returncode, self.seconds, self.timed_out = \
            trial, returncode, seconds, timed_out


def _stop_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the trial's process group, SIGKILL it after ``grace`` seconds."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class _Running:
    def __init__(self, trial, process, log, timeout):
        self.trial, self.process, self.log = trial, process, log
        self.started = time.monotonic()
        self.timeout = timeout


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the trial gets SIGKILL when pygfm-hpo dies (even by SIGKILL), so a
    resumed search never finds an orphan still writing into a trial's directory."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start(command: list, log_path: Path, env: dict) -> tuple:
    log = open(log_path, "ab")  # noqa: SIM115 - closed when the trial ends
    log.write(f"$ {' '.join(command)}\n".encode())
    log.flush()
    try:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=_die_with_parent if sys.platform == "linux"
                                   else None)
    except OSError as error:  # launcher not found: the trial fails, the search goes on
        log.write(f"pygfm-hpo: cannot start the trial: {error}\n".encode())
        log.close()
        return None, None
    return process, log


class ProcessEvaluator:
    """Up to ``workers`` trials at once as local child processes."""

    def __init__(self, workers: int = 1, launcher: list | None = None,
                 threads: int | None = None, gpus_per_node: int = 0):
        self.workers, self.launcher, self.threads = workers, launcher, threads
        self.gpus_per_node = gpus_per_node
        self.running: list[_Running] = []
        self._failed_starts: list[Finished] = []

    @property
    def free(self) -> int:
        return self.workers - len(self.running) - len(self._failed_starts)

    def submit(self, trial, config_path: Path, run_dir: Path, log_path: Path, resume: bool,
               timeout: float | None) -> None:
        gpu = None
        if self.gpus_per_node:
            busy = {r.gpu for r in self.running}
            gpu = str(next(g for g in range(self.gpus_per_node) if str(g) not in busy)) \
                if len(busy) < self.gpus_per_node else None
        command = trial_command(config_path, run_dir, resume, self.launcher)
        process, log = _start(command, log_path, trial_environment(self.threads, gpu))
        if process is None:
            self._failed_starts.append(Finished(trial, 127, 0.0, False))
            return
        entry = _Running(trial, process, log, timeout)
        entry.gpu = gpu
        self.running.append(entry)

    def poll(self, wait: float = 0.5) -> list:
        """Trials that ended (waits up to ``wait`` seconds for one)."""
        deadline = time.monotonic() + wait
        while True:
            done, self._failed_starts = self._failed_starts, []
            for entry in list(self.running):
                elapsed = time.monotonic() - entry.started
                timed_out = entry.timeout is not None and elapsed > entry.timeout \
                    and entry.process.poll() is None
                if timed_out:
                    _stop_group(entry.process)
                code = entry.process.poll()
                if code is None:
                    continue
                entry.log.close()
                self.running.remove(entry)
                done.append(Finished(entry.trial, code, elapsed, timed_out))
            if done or time.monotonic() >= deadline or not self.running:
                return done
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))

    def close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Stop every running trial (they resume from their checkpoints later)."""
        for entry in self.running:
            _stop_group(entry.process)
            entry.log.close()
        self.running = []


# ----------------------------------------------------------------- MPI
_TASK, _RESULT = 11, 12


def mpi_worker_loop(comm, threads: int | None = None, gpus_per_node: int = 0,
                    launcher: list | None = None) -> None:
    """A worker rank: run the trials rank 0 sends until it sends None."""
    gpu = str(discover().local_rank % gpus_per_node) if gpus_per_node else None
    current: list = []

    def terminate(signum, frame):  # mpiexec stopping the job: take the trial along
        for process in current:
            _stop_group(process, grace=5.0)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    while True:
        task = comm.recv(source=0, tag=_TASK)
        if task is None:
            return
        trial, config_path, run_dir, log_path, resume, timeout = task
        command = trial_command(Path(config_path), Path(run_dir), resume, launcher)
        started = time.monotonic()
        process, log = _start(command, Path(log_path), trial_environment(threads, gpu))
        if process is None:
            comm.send((trial, 127, 0.0, False), dest=0, tag=_RESULT)
            continue
        current[:] = [process]
        timed_out = False
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(process)
        current.clear()
        log.close()
        comm.send((trial, process.returncode, time.monotonic() - started, timed_out),
                  dest=0, tag=_RESULT)


class MPIEvaluator:
    """Rank 0's side: one trial at a time on each of ranks 1..N-1."""

    def __init__(self, comm):
        if comm is None or comm.Get_size() < 2:
            raise RuntimeError("evaluator.kind mpi needs mpiexec/srun with at least 2 ranks "
                               "(rank 0 drives the search, every other rank runs trials)")
        self.comm = comm
        self.idle = list(range(1, comm.Get_size()))
        self.busy: dict = {}

    @property
    def workers(self) -> int:
        return self.comm.Get_size() - 1

    @property
    def free(self) -> int:
        return len(self.idle)

    def submit(self, trial, config_path: Path, run_dir: Path, log_path: Path, resume: bool,
               timeout: float | None) -> None:
        rank = self.idle.pop(0)
        self.busy[rank] = trial
        self.comm.send((trial, str(config_path), str(run_dir), str(log_path), resume, timeout),
                       dest=rank, tag=_TASK)

    def poll(self, wait: float = 0.5) -> list:
        from mpi4py import MPI

        deadline = time.monotonic() + wait
        done = []
        status = MPI.Status()
        while True:
            while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_RESULT, status=status):
                rank = status.Get_source()
                trial, code, seconds, timed_out = self.comm.recv(source=rank, tag=_RESULT)
                self.busy.pop(rank, None)
                self.idle.append(rank)
                done.append(Finished(trial, code, seconds, timed_out))
            if done or time.monotonic() >= deadline or not self.busy:
                return done
            time.sleep(0.05)

    def close(self) -> None:
        """Wait for running trials, then release every worker rank."""
        while self.busy:
            self.poll(1.0)
        for rank in range(1, self.comm.Get_size()):
            self.comm.send(None, dest=rank, tag=_TASK)

    def shutdown(self) -> None:
        """Interrupted: end the job; the workers stop their trials on SIGTERM (and
        the trials resume from their checkpoints with --resume)."""
        self.comm.Abort(130)
