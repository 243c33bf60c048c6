"""``pygfm-train``: train a multi-head PaiNN foundation model.

  pygfm-train [CONFIG.yaml] [--run-dir DIR] [--set key=value ...] [--resume]

With no CONFIG it runs the demo on the shipped demo datasets: joint training of
three heads (EMT metals, GFN2-xTB and PBE molecules; demo.yaml), then fine-tuning
on a small B3LYP set with a new head, compared against the same model trained
from scratch with the same budget (demo-finetune.yaml). About 10 minutes on a
2-core CPU.

The same command runs alone, under ``mpiexec -n N`` / ``srun`` (needs mpi4py) or
``torchrun --nproc-per-node N``. ``--print-defaults`` shows every setting with
its default; ``--set`` takes dotted keys (``--set optimizer.lr=3e-4 --set
datasets[0].weight=2``). A run directory that already holds a run is never
overwritten: continue it with ``--resume`` or choose another ``--run-dir``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._errors import entry_point

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pygfm-train", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML config (default: the demo)")
    parser.add_argument("--run-dir", help="output directory (default runs/<config name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a setting (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--print-defaults", action="store_true",
                        help="print every setting with its default and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit")
    return parser


def _finished(config: dict, run_dir: Path) -> str | None:
    """For a finished run: why there is nothing to do under ``config``, or None when
    ``config`` extends it (a larger training.max_steps); a config that changes more
    than the run's length is refused, naming the key."""
    from pygfm.models.checkpoint import load_checkpoint
    from pygfm.train.resume import check_resume_config, nothing_to_do

    content = load_checkpoint(run_dir / "last.pt")
    saved = content["config"]
    if config["finetune"]["init_from"] is not None:  # the model is the checkpoint's
        config = {**config, "model": saved["model"]}
    check_resume_config(saved, config, run_dir)
    return nothing_to_do(config, content["extra"]["state"])


def _stage(config_path, overrides, run_dir: Path, args, parallel):
    import json

    from pygfm.train import load_config, train

    config = load_config(config_path, overrides)
    if args.print_config:
        from pygfm.train.config import dump_config
        print(dump_config(config), end="")
        return None
    done = run_dir / "summary.json"
    if args.resume and done.exists() and json.loads(done.read_text()).get("complete") \
            and (run_dir / "last.pt").exists():
        reason = _finished(config, run_dir)
        if reason is not None:
            if parallel.is_main:
                print(f"{run_dir}: already finished: {reason}", flush=True)
            return json.loads(done.read_text())
        if parallel.is_main:
            print(f"{run_dir}: extending the finished run to step "
                  f"{config['training']['max_steps']}", flush=True)
    resume = args.resume and (run_dir / "last.pt").exists()
    if not args.resume and (run_dir / "last.pt").exists():
        raise FileExistsError(f"{run_dir} already holds a run (last.pt); continue it with "
                              "--resume or choose another --run-dir")
    summary = train(config, run_dir, resume=resume, progress=not args.quiet,
                    parallel=parallel)
    if parallel.is_main:
        print((run_dir / "summary.md").read_text(encoding="utf-8"), flush=True)
    return summary


def _demo(args, parallel) -> None:
    """The two stages of the demo: joint training, then fine-tuning."""
    from pygfm.train.config import DEMO_CONFIG, DEMO_FINETUNE_CONFIG

    run_dir = Path(args.run_dir or "runs/demo")
    if parallel.is_main and not args.print_config:
        print(f"pygfm-train demo: stage 1 of 2, joint training on three demo "
              f"datasets -> {run_dir}", flush=True)
    _stage(DEMO_CONFIG, args.overrides, run_dir, args, parallel)
    if args.print_config:
        return
    finetune_dir = run_dir / "finetune"
    if parallel.is_main:
        print(f"pygfm-train demo: stage 2 of 2, fine-tuning on molecules-b3lyp "
              f"-> {finetune_dir}", flush=True)
    overrides = list(args.overrides) + [
        f"finetune.init_from={(run_dir / 'best.pt').resolve()}"]
    # the first stage's model and datasets are not the fine-tune's
    overrides = [o for o in overrides if not o.startswith(("model.", "datasets"))]
    _stage(DEMO_FINETUNE_CONFIG, overrides, finetune_dir, args, parallel)


def _end_job(holder: dict):
    """After an error: end every rank of the job, so none waits for this one in a
    collective; a rank that failed before the ranks met ends the MPI job itself."""
    def abort(code: int) -> None:
        parallel = holder.get("parallel")
        if parallel is not None and parallel.size > 1:
            parallel.abort(code)
        from pygfm.distributed import launched_by_mpi
        if parallel is None and launched_by_mpi():
            try:
                from mpi4py import MPI
                MPI.COMM_WORLD.Abort(code)
            except ImportError:
                pass
    return abort


def _close(holder: dict):
    def close() -> None:
        if holder.get("parallel") is not None:
            holder["parallel"].close()
    return close


@entry_point("pygfm-train")
def main(argv, context) -> int:
    args = _parser().parse_args(argv)
    if args.print_defaults:
        from pygfm.train.config import defaults, dump_config
        print(dump_config(defaults()), end="")
        return 0
    holder: dict = {}
    context.abort, context.close = _end_job(holder), _close(holder)
    from pygfm.train.config import DEMO_CONFIG, load_config
    from pygfm.train.parallel import Parallel, RankConfigError
    from pygfm.train.trainer import TrainingError

    context.failures, context.agreed_errors = (TrainingError,), (RankConfigError,)
    # the backend follows the (first) config's device
    first = load_config(args.config or DEMO_CONFIG, args.overrides)
    import torch
    gpu = first["device"].startswith("cuda") or (first["device"] == "auto"
                                                 and torch.cuda.is_available())
    parallel = holder["parallel"] = Parallel(first["distributed"]["backend"],
                                             torch.device("cuda") if gpu else None,
                                             first["distributed"]["timeout"])
    context.rank = parallel.rank
    if parallel.size > 1:
        context.prog = f"pygfm-train (rank {parallel.rank})"
    if args.config is not None:
        run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
        _stage(args.config, args.overrides, run_dir, args, parallel)
    else:
        _demo(args, parallel)
    parallel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
