"""The demo collection shipped with pygfm: small multi-fidelity datasets labelled by
real codes (EMT, GFN2-xTB, PBE and B3LYP DFT), regenerable with
``scripts/make_demo_data.py`` (see README.md in this folder).

The structures ship as compressed extended XYZ (portable, readable by any tool);
:func:`demo_dataset` converts one to a pygfm dataset in a cache directory the first
time it is asked for (seconds) and opens it from there afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["DEMO_DATASETS", "demo_dataset", "demo_collection", "demo_metadata", "demo_source",
           "cache_dir"]

DEMO_DATASETS = ("metals-emt", "molecules-xtb", "molecules-dft", "molecules-b3lyp")
_HERE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """Where converted demo datasets are kept: $PYGFM_CACHE, else
    $XDG_CACHE_HOME/pygfm, else ~/.cache/pygfm."""
    if os.environ.get("PYGFM_CACHE"):
        return Path(os.environ["PYGFM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pygfm"


def _check_name(name: str) -> None:
    if name not in DEMO_DATASETS:
        raise ValueError(f"no demo dataset {name!r}; there are {', '.join(DEMO_DATASETS)}")


def demo_source(name: str) -> Path:
    """The shipped .extxyz.xz file of a demo dataset."""
    _check_name(name)
    path = _HERE / f"{name}.extxyz.xz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the demo data is missing from this installation; "
                                "regenerate it with scripts/make_demo_data.py")
    return path


def demo_metadata(name: str) -> dict:
    """The shipped metadata (fidelity, units, counts, how it was made)."""
    _check_name(name)
    return json.loads((_HERE / f"{name}.json").read_text(encoding="utf-8"))


def demo_dataset(name: str, directory: Path | None = None, progress: bool = False):
    """The demo dataset ``name`` as an opened :class:`~pygfm.data.AtomicDataset`,
    converting it into ``directory`` (default :func:`cache_dir`) on first use.
    The cached copy is keyed by the shipped file's hash, so new demo data is
    picked up."""
    from ..adios import MANIFEST, open_dataset, write_dataset
    from ..ase_input import iread_structures

    source = demo_source(name)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    target = Path(directory or cache_dir() / "demo") / f"{name}-{digest}"
    if not (target / MANIFEST).exists():
        meta = demo_metadata(name)
        try:
            write_dataset(target, iread_structures(source, format="extxyz"),
                          name=name, fidelity=meta["fidelity"],
                          description=meta.get("description", ""), progress=progress,
                          total=meta.get("num_structures"))
        except FileExistsError:  # another process converted it meanwhile
            pass
    return open_dataset(target)


def demo_collection(directory: Path | None = None, names=DEMO_DATASETS,
                    progress: bool = False) -> dict:
    """{name: AtomicDataset} for the demo datasets ``names``."""
    return {name: demo_dataset(name, directory, progress) for name in names}
