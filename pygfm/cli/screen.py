"""``pygfm-screen``: predict energies (and forces) of many structures with a
trained model, streaming, sharded over ranks, resumable.

  pygfm-screen --model CKPT --input SPEC --output PATH [--heads NAME,...|all|auto]
               [--forces] [--top-k K --rank-by COLUMN] [--precision fp64|fp32|bf16]
               [--batch-atoms N] [--chunk N] [--device auto|cpu|cuda]

SPEC: random:N[,seed=S][,min_atoms=2][,max_atoms=500][,box=10][,elements=H.C.O]
(the SC26 benchmark generator), substitutions:TEMPLATE:EL1.EL2[,sites=X] (every
decoration of a template cell, e.g. substitutions:bulk-Cu-fcc-3.6-2:Cu.Ni.Au),
a pygfm dataset directory, or any file ase.io reads. OUTPUT ends in .csv, .bp
(ADIOS2) or .npz. Rerunning the same command after an interruption continues
where it stopped. Under mpiexec/srun each rank takes its own chunks.
"""

from __future__ import annotations

import argparse
import sys

from ._errors import entry_point

__all__ = ["main"]


def _abort_job(comm):
    """Under MPI: end every rank after an error on this one (the others may wait
    for it in a collective)."""
    def abort(code: int) -> None:
        if comm is not None and comm.Get_size() > 1:
            comm.Abort(code)
    return abort


@entry_point("pygfm-screen")
def main(argv, context) -> int:
    parser = argparse.ArgumentParser(prog="pygfm-screen", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a pygfm checkpoint (best.pt)")
    parser.add_argument("--input", required=True, help="what to screen (see below)")
    parser.add_argument("--output", required=True, help="results: .csv, .bp or .npz")
    parser.add_argument("--heads", default="all", help="comma-separated head names, all, "
                        "or auto (blend heads by composition)")
    parser.add_argument("--forces", action="store_true", help="also the largest force norm")
    parser.add_argument("--top-k", type=int, default=0, help="list the K best structures")
    parser.add_argument("--rank-by", default=None,
                        help="column to rank by, lowest first (default energy_per_atom of "
                             "the first head, or of auto)")
    parser.add_argument("--precision", default="fp32", choices=("fp64", "fp32", "bf16"))
    parser.add_argument("--batch-atoms", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=4096, help="structures per chunk "
                        "(the unit of sharding and of resuming)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--neighbors", default="auto", choices=("auto", "host", "device"),
                        help="where neighbor lists are built: host (CPU, in the producer), "
                        "device (the model's), auto: device on a GPU")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    from pygfm.distributed import mpi_comm
    from pygfm.screen import ScreenSettings, screen

    comm = mpi_comm()
    context.abort = _abort_job(comm)
    settings = ScreenSettings(model=args.model, input=args.input, output=args.output,
                              heads=args.heads, forces=args.forces, top_k=args.top_k,
                              rank_by=args.rank_by, precision=args.precision,
                              batch_atoms=args.batch_atoms, chunk=args.chunk,
                              device=args.device, neighbors=args.neighbors,
                              progress=not args.quiet)
    summary = screen(settings, comm)
    if summary is not None:
        rate = summary["structures_per_s"]
        print(f"{summary['structures']} structures in {summary['output']}; this run: "
              f"{summary['structures_this_run']} structures, {summary['atoms_this_run']} atoms "
              f"in {summary['seconds']:.1f} s"
              + (f" ({rate:.0f} structures/s, {summary['atoms_per_s']:.0f} atoms/s)"
                 if rate else ""))
        for row in summary.get("top_k", []):
            print("  " + "  ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
