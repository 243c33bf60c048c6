"""pygfm.settings: the one table of run-time settings, and import without side effects."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import pygfm
from pygfm.ops import reference


def test_every_setting_round_trips_and_override_restores():
    for name, setting in pygfm.settings.SETTINGS.items():
        before = pygfm.settings.get(name)
        assert before == setting.default
        changed = (not before) if setting.kind is bool else before // 2 + 1
        with pygfm.settings.override(**{name: changed}):
            assert pygfm.settings.get(name) == changed
        assert pygfm.settings.get(name) == before


def test_unknown_names_and_bad_values_are_named():
    with pytest.raises(KeyError, match="no setting 'huge_page'.*huge_pages"):
        pygfm.settings.set("huge_page", True)
    with pytest.raises(ValueError, match="setting cpu_cache_mb: expected a whole number"):
        pygfm.settings.set("cpu_cache_mb", -1)
    with pytest.raises(ValueError, match="setting cpu_stream: expected a boolean"):
        pygfm.settings.set("cpu_stream", "maybe")
    with pytest.raises(KeyError):
        with pygfm.settings.override(nothing=1):
            pass


def test_describe_lists_every_setting_and_variable():
    table = pygfm.settings.describe()
    for setting in pygfm.settings.SETTINGS.values():
        assert f"`{setting.name}`" in table and f"`{setting.env}`" in table


def test_streaming_stores_off_give_the_same_result():
    src = torch.randn(4000, 128)
    ptr = torch.arange(0, 40001, 10)  # 20 MB out: above the streaming threshold
    expected = reference.segment_broadcast(src, ptr, 40000)
    with pygfm.settings.override(cpu_stream=False):
        assert torch.equal(torch.ops.pygfm.segment_broadcast(src, ptr, 40000), expected)
    assert torch.equal(torch.ops.pygfm.segment_broadcast(src, ptr, 40000), expected)


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYGFM_")}
    env.update(extra)
    return env


def test_bad_environment_value_is_a_clear_error():
    out = subprocess.run([sys.executable, "-c", "import pygfm"], capture_output=True, text=True,
                         env=_clean_env(PYGFM_CPU_CACHE_MB="lots"), cwd="/", timeout=120)
    assert out.returncode != 0
    assert "environment variable PYGFM_CPU_CACHE_MB: expected a whole number" in out.stderr


def test_environment_sets_the_native_values():
    code = "import pygfm, json; print(json.dumps({n: pygfm.settings.get(n) for n in pygfm.settings.SETTINGS}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                         env=_clean_env(PYGFM_HUGE_PAGES="0", PYGFM_CPU_CACHE_MB="64",
                                        PYGFM_CPU_STREAM="off", PYGFM_NEIGHBOR_MEMORY_MB="512"),
                         timeout=120, check=True)
    assert json.loads(out.stdout) == {"cpu_allocator": False, "huge_pages": False,
                                      "cpu_cache_mb": 64, "cpu_stream": False,
                                      "neighbor_memory_mb": 512}


# What a library must leave alone: everything a user or another library may have set.
PROCESS_STATE = r"""
import json, os, signal, sys, threading, warnings, logging
import torch
def state():
    return {
        "threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
        "dtype": str(torch.get_default_dtype()), "grad": torch.is_grad_enabled(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "matmul": torch.get_float32_matmul_precision(),
        "mkldnn": torch.backends.mkldnn.enabled, "anomaly": torch.is_anomaly_enabled(),
        "signals": {s.name: repr(signal.getsignal(s)) for s in
                    (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD,
                     signal.SIGPIPE, signal.SIGSEGV)},
        "env": dict(os.environ), "excepthook": repr(sys.excepthook),
        "warnings": [repr(f) for f in warnings.filters],
        "root_handlers": len(logging.getLogger().handlers),
        "threads_alive": threading.active_count(), "cwd": os.getcwd(),
    }
before = state()
import pygfm
after = state()
after["allocator"] = pygfm.cpu_allocator_active()
print(json.dumps({"before": before, "after": after}))
"""


def test_import_leaves_the_process_as_it_was():
    out = subprocess.run([sys.executable, "-c", PROCESS_STATE], capture_output=True, text=True,
                         env=_clean_env(), cwd="/", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    before, after = result["before"], result["after"]
    assert after.pop("allocator") is False
    changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    assert changed == {}
