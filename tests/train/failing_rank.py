"""``pygfm-train ARGS`` with a failure injected: ``Trainer._step`` raises
RuntimeError("injected failure ...") at step 2. tests/train/test_cli_train.py runs it as
rank 1 of an MPMD ``mpiexec`` job (rank 0 runs the plain command) to check that one
failing rank ends the whole job instead of leaving the others in a collective."""

from __future__ import annotations

import runpy
import sys

from pygfm.train import trainer

_original = trainer.Trainer._step


def _failing_step(self, batch):
    if self.state["step"] == 2:
        raise RuntimeError("injected failure on this rank")
    return _original(self, batch)


trainer.Trainer._step = _failing_step
sys.argv = ["pygfm-train", *sys.argv[1:]]
runpy.run_module("pygfm.cli.train", run_name="__main__", alter_sys=True)
