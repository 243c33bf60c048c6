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
import traceback
from pathlib import Path

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


def _stage(config_path, overrides, run_dir: Path, args, parallel):
    from pygfm.train import load_config, train

    config = load_config(config_path, overrides)
    if args.print_config:
        from pygfm.train.config import dump_config
        print(dump_config(config), end="")
        return None
    import json
    done = run_dir / "summary.json"
    if args.resume and done.exists() and json.loads(done.read_text()).get("complete"):
        if parallel.is_main:
            print(f"{run_dir}: already finished (summary.json); skipping", flush=True)
        return json.loads(done.read_text())
    resume = args.resume and (run_dir / "last.pt").exists()
    if not args.resume and (run_dir / "last.pt").exists():
        raise FileExistsError(f"{run_dir} already holds a run (last.pt); continue it with "
                              "--resume or choose another --run-dir")
    summary = train(config, run_dir, resume=resume, progress=not args.quiet,
                    parallel=parallel)
    if parallel.is_main:
        print((run_dir / "summary.md").read_text(encoding="utf-8"), flush=True)
    return summary


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.print_defaults:
        from pygfm.train.config import defaults, dump_config
        print(dump_config(defaults()), end="")
        return 0
    parallel = None
    try:
        from pygfm.train.config import DEMO_CONFIG, DEMO_FINETUNE_CONFIG, load_config
        from pygfm.train.parallel import Parallel

        # the backend follows the (first) config's device
        first = load_config(args.config or DEMO_CONFIG, args.overrides)
        import torch
        gpu = first["device"].startswith("cuda") or (first["device"] == "auto"
                                                     and torch.cuda.is_available())
        parallel = Parallel(first["distributed"]["backend"],
                            torch.device("cuda") if gpu else None,
                            first["distributed"]["timeout"])
        if args.config is not None:
            run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
            _stage(args.config, args.overrides, run_dir, args, parallel)
        else:
            run_dir = Path(args.run_dir or "runs/demo")
            if parallel.is_main and not args.print_config:
                print(f"pygfm-train demo: stage 1 of 2, joint training on three demo "
                      f"datasets -> {run_dir}", flush=True)
            _stage(DEMO_CONFIG, args.overrides, run_dir, args, parallel)
            if args.print_config:
                return 0
            finetune_dir = run_dir / "finetune"
            if parallel.is_main:
                print(f"pygfm-train demo: stage 2 of 2, fine-tuning on molecules-b3lyp "
                      f"-> {finetune_dir}", flush=True)
            overrides = list(args.overrides) + [
                f"finetune.init_from={(run_dir / 'best.pt').resolve()}"]
            # the first stage's model and datasets are not the fine-tune's
            overrides = [o for o in overrides if not o.startswith(("model.", "datasets"))]
            _stage(DEMO_FINETUNE_CONFIG, overrides, finetune_dir, args, parallel)
        parallel.close()
        return 0
    except KeyboardInterrupt:
        print("pygfm-train: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one clear line, then end every rank
        from pygfm.train.config import ConfigError

        rank = f" (rank {parallel.rank})" if parallel is not None and parallel.size > 1 else ""
        if not isinstance(error, (ConfigError, FileExistsError, FileNotFoundError)):
            traceback.print_exc()
        print(f"pygfm-train{rank}: error: {error}", file=sys.stderr, flush=True)
        code = 2 if isinstance(error, ConfigError) else 1
        if parallel is not None and parallel.size > 1:
            parallel.abort(code)
        from pygfm.distributed import launched_by_mpi
        if parallel is None and launched_by_mpi():  # failed before the ranks met
            try:
                from mpi4py import MPI
                MPI.COMM_WORLD.Abort(code)
            except ImportError:
                pass
        return code


if __name__ == "__main__":
    sys.exit(main())
