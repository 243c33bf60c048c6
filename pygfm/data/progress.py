"""MPIProgress: a thread that keeps MPI's progress engine turning on this rank, so that
other ranks' one-sided reads of a :class:`~pygfm.data.store.DistributedStore` are
served while this rank computes outside MPI.

Why: a ``Win.Get`` on memory exposed with ``Win.Create`` is, in MPICH (ch4, UCX or
OFI, one node or several without hardware RMA for such windows), a request that the
*owner* must answer, and the owner answers only from inside an MPI call. A training
rank spends its steps in torch (gloo collectives are not MPI calls), so without help
a remote fetch waits until the owner happens to enter MPI: measured on 2 ranks of
MPICH 5.0.2 (ch4:ucx), a fetch from a rank busy for 2 s took 1.9 s; worse, two ranks
can wait on each other (one in a gloo all-reduce, the other's loader waiting for a
fetch from it), a deadlock.

How: a daemon thread calls ``Iprobe`` on a private duplicate of the communicator
every ``interval`` seconds (the call enters MPI's progress engine and answers pending
requests; it receives nothing). mpi4py releases the GIL inside MPI calls, and the
thread sleeps between calls, so its cost is a few microseconds of GIL per wake-up
(about 1000 a second at the default 1 ms), not a core. A remote fetch then waits at
most about one interval per round trip, plus the GIL hand-over when the owner's main
thread is in pure Python (torch ops release the GIL). MPICH's own alternative,
``MPIR_CVAR_ASYNC_PROGRESS=1`` in the launcher's environment, spins a progress thread
per rank that takes a whole core; it works too (this thread is then unnecessary but
harmless).

Needs MPI initialized with ``MPI_THREAD_MULTIPLE`` (mpi4py's default), since the
thread calls MPI while other threads may do so.
"""

from __future__ import annotations

import atexit
import threading

__all__ = ["MPIProgress"]

DEFAULT_INTERVAL = 1e-3  # seconds between progress calls


class MPIProgress:
    """Start with ``MPIProgress(comm)`` (collective: it duplicates ``comm``); stop
    with :meth:`stop` (idempotent, not collective). Also stopped at interpreter
    exit, before mpi4py finalizes MPI."""

    def __init__(self, comm, interval: float = DEFAULT_INTERVAL):
        from mpi4py import MPI

        if not interval > 0:
            raise ValueError(f"MPIProgress: interval must be > 0 seconds, got {interval!r}")
        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise RuntimeError(
                "MPIProgress: MPI was initialized without MPI_THREAD_MULTIPLE, which a "
                "progress thread needs; leave mpi4py.rc.thread_level at 'multiple' (the "
                "default) or set MPIR_CVAR_ASYNC_PROGRESS=1 for MPICH instead")
        self.interval = float(interval)
        self._comm = comm.Dup()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pygfm-mpi-progress",
                                        daemon=True)
        # Registered after mpi4py initialized MPI, so it runs before MPI_Finalize.
        atexit.register(self.stop)
        self._thread.start()

    def _run(self) -> None:
        comm, wait, interval = self._comm, self._stop.wait, self.interval
        while not wait(interval):
            comm.Iprobe()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop the thread and wait for it (its last call takes microseconds)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        atexit.unregister(self.stop)
        from mpi4py import MPI

        if not MPI.Is_finalized():
            self._comm.Free()
