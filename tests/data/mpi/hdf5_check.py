"""Run under mpiexec by tests/data/formats/test_hdf5.py: every rank reads its share of
an HDF5 file (argv[1], format argv[2]) with the rank and size MPI gives it, all ranks
with the file open at once; rank 0 checks that the shares partition the positions and
equal a one-process read, and prints ``ALL OK on N ranks``."""

from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

from pygfm.data.formats import ReadOptions, get_format

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()


def main(path: str, name: str) -> int:
    fmt = get_format(name)
    mine = [(k, s.energy, s.positions.sum()) for k, s in fmt.read(path, ReadOptions(), RANK, SIZE)]
    shares = COMM.gather(mine, root=0)
    if RANK != 0:
        return 0
    alone = {k: (s.energy, s.positions.sum()) for k, s in fmt.read(path, ReadOptions(), 0, 1)}
    merged = {}
    for rank, share in enumerate(shares):
        for k, energy, total in share:
            if k % SIZE != rank or k in merged:
                print(f"FAIL: rank {rank} read position {k}")
                return 1
            merged[k] = (energy, total)
    if sorted(merged) != sorted(alone) or any(
            merged[k][0] != alone[k][0] or not np.isclose(merged[k][1], alone[k][1])
            for k in alone):
        print(f"FAIL: {SIZE} ranks read {sorted(merged)}, one process {sorted(alone)}")
        return 1
    print(f"ALL OK on {SIZE} ranks ({len(merged)} conformers)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
