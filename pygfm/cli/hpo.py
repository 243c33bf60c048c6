"""``pygfm-hpo``: Bayesian hyperparameter search (DeepHyper) over pygfm-train settings.

It then trains the best configurations in full (--promote).

  pygfm-hpo [CONFIG.yaml] [--run-dir DIR] [--set key=value ...] [--resume] [--promote K]

With no CONFIG it runs the demo search (12 short trials of the demo model on the
shipped demo data, about 7 minutes on a 2-core CPU). Each trial is a bounded
pygfm-train run in DIR/trials/NNNNN; a trial that fails (NaN loss, out of memory,
crash, invalid combination) is recorded with its error and the search goes on.
Results: DIR/trials.csv, objective.png, summary.md and best.yaml (the best
configuration as a ready-to-run pygfm-train config). --resume continues a search
(finished trials are not repeated; interrupted ones continue from their
checkpoints); --promote K trains the best K configurations with the full budget
(after the search, or at once on a finished search with --resume).

Clusters: evaluator.launcher runs each trial behind a launcher prefix (e.g. 'srun
-N 1 -n 4 --exclusive'), or evaluator.kind=mpi under `mpiexec -n N pygfm-hpo ...`
makes rank 0 drive the search and ranks 1..N-1 run one trial each.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ._errors import entry_point

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pygfm-hpo", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="campaign YAML (default: the demo search)")
    parser.add_argument("--run-dir", help="output directory (default runs/hpo-<config name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a campaign setting, e.g. "
                        "trials=20 or budget.max_steps=50 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the search in --run-dir")
    parser.add_argument("--promote", type=int, default=0, metavar="K",
                        help="then train the best K configurations with the full budget")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--print-config", action="store_true",
                        help="print the checked campaign config and exit")
    return parser


def _abort_job(holder: dict):
    """Under MPI: end every rank (the workers wait for rank 0's messages)."""
    def abort(code: int) -> None:
        if holder.get("comm") is not None:
            holder["comm"].Abort(code)
    return abort


def _failures() -> tuple:
    from pygfm.hpo.search import HPOError
    return (HPOError,)


@entry_point("pygfm-hpo", interrupted="interrupted; continue with --resume")
def main(argv, context) -> int:
    args = _parser().parse_args(argv)
    from pygfm.distributed import launched_by_mpi
    from pygfm.hpo.config import load_hpo_config

    holder: dict = {}
    context.abort, context.failures = _abort_job(holder), _failures()
    if args.promote < 0:
        raise ValueError(f"--promote: expected K >= 0, got {args.promote}")
    config = load_hpo_config(args.config, args.overrides)
    evaluator = config["evaluator"]
    if evaluator["kind"] == "mpi":
        from pygfm.distributed import mpi_comm
        comm = holder["comm"] = mpi_comm()
        if comm is None or comm.Get_size() < 2:
            raise ValueError("evaluator.kind is mpi: start pygfm-hpo with mpiexec/srun "
                             "and at least 2 ranks (rank 0 drives the search, every other "
                             "rank runs trials)")
        if comm.Get_rank() != 0:
            from pygfm.hpo.evaluators import mpi_worker_loop
            mpi_worker_loop(comm, evaluator["threads"], evaluator["gpus_per_node"],
                            evaluator["launcher"])
            return 0
    elif launched_by_mpi():
        raise ValueError("pygfm-hpo was started by an MPI launcher with several ranks, "
                         "but evaluator.kind is process: run it once (it starts the "
                         "trials itself), or set evaluator.kind=mpi")
    if args.print_config:
        import yaml
        print(yaml.safe_dump(config, sort_keys=False), end="")
        if holder.get("comm") is not None:  # release the worker ranks
            from pygfm.hpo.evaluators import MPIEvaluator
            MPIEvaluator(holder["comm"]).close()
        return 0
    return _search(args, config)


def _search(args, config: dict) -> int:
    from pygfm.hpo import Campaign

    def stop(signum, frame):  # a scheduler's time limit: stop the trials, keep the journal
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    name = Path(args.config).stem if args.config else "demo"
    run_dir = Path(args.run_dir or Path("runs") / f"hpo-{name}")
    campaign = Campaign(config, run_dir, resume=args.resume, progress=not args.quiet)
    evaluator = config["evaluator"]
    if not args.quiet:
        print(f"pygfm-hpo: {config['trials']} trial(s) of {len(config['space'])} "
              f"setting(s), {evaluator['kind']} evaluator, into {run_dir}", flush=True)
    try:
        best = campaign.run()
        if best is None:
            print(f"pygfm-hpo: error: all {len(campaign.records)} trial(s) failed; see "
                  f"{run_dir / 'summary.md'}", file=sys.stderr, flush=True)
            return 1
        if not args.quiet:
            print((run_dir / "summary.md").read_text(encoding="utf-8"), flush=True)
        if args.promote:
            results = campaign.promote(args.promote)
            if not args.quiet:
                print(f"pygfm-hpo: promoted runs: {run_dir / 'promoted.csv'}", flush=True)
            if not any(r["status"] == "ok" for r in results):
                return 1
    finally:
        campaign.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
