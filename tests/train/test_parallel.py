"""pygfm.train.parallel: a lone process is a no-op job; under ``mpiexec -n 2`` the
data-parallel gradients of a multi-head model equal the single-process gradients of the
whole batch (tests/train/mpi_grad_check.py, float64, to 1e-10)."""

from __future__ import annotations

import torch

from _train_helpers import HERE, PYTHON, describe, env, mpiexec, run_command
from pygfm.train.parallel import Parallel


def test_alone_is_a_no_op():
    parallel = Parallel("auto", None, 30.0)
    assert (parallel.rank, parallel.size, parallel.launcher) == (0, 1, "single")
    assert parallel.is_main and not parallel.started
    t = torch.arange(4, dtype=torch.float64)
    s = parallel.sum(t)
    assert torch.equal(s, t) and s.data_ptr() != t.data_ptr()  # a new tensor
    assert parallel.allreduce_max(7) == 7
    assert parallel.any(True) and not parallel.any(False)
    layer = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in layer.parameters()]
    parallel.broadcast_parameters(layer)
    layer(torch.ones(1, 3)).sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    parallel.sum_gradients(layer.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, layer.parameters()))
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, layer.parameters()))
    parallel.barrier()
    parallel.close()


def test_abort_alone_exits_with_the_code(tmp_path):
    code = ("from pygfm.train.parallel import Parallel\n"
            "print('before', flush=True)\nParallel().abort(3)\nprint('after')")
    result = run_command([PYTHON, "-c", code], tmp_path, timeout=120)
    assert result.returncode == 3, describe(result)
    assert "before" in result.stdout and "after" not in result.stdout


def test_data_parallel_gradients_equal_single_process(tmp_path):
    command = mpiexec(2) + [PYTHON, str(HERE / "mpi_grad_check.py")]
    result = run_command(command, tmp_path, timeout=300, environment=env())
    assert result.returncode == 0, describe(result)
    output = result.stdout + result.stderr
    assert "FAIL" not in output, describe(result)
    assert output.count("ALL OK") == 2, describe(result)
    for kind in ("mse", "huber", "mae"):
        assert output.count(f": {kind}: loss") == 2, describe(result)
