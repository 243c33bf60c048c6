"""Reading structure files with ASE, with compressed files handled efficiently.

ASE reads ``.gz``/``.bz2``/``.xz`` files, but its frame iterator seeks in the
decompressed stream, and seeking backwards in a compressed stream restarts the
decompression: iterating a 3,000-frame ``.extxyz.xz`` was measured to take over
100 s for its first 30 frames. Decompressing once to a temporary file and
reading that takes seconds.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["iread_structures", "COMPRESSIONS"]

COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def iread_structures(path, index: str = ":", format: str | None = None) -> Iterator:
    """Yield ``ase.Atoms`` from ``path`` (any format ``ase.io`` reads, optionally
    compressed with gzip, bzip2 or xz).

    Reads in this process only: under MPI, ASE's readers otherwise read on rank 0
    and broadcast to every rank, so a reader called by some ranks alone (rank 0
    converting the demo data while the others wait) hung forever."""
    import ase.io
    from ase.io.formats import filetype

    path = Path(path)
    opener = COMPRESSIONS.get(path.suffix)
    if opener is None:
        yield from ase.io.iread(str(path), index=index, format=format, parallel=False)
        return
    inner = path.with_suffix("")  # e.g. data.extxyz
    with tempfile.TemporaryDirectory(prefix="pygfm-decompress-") as scratch:
        plain = Path(scratch) / inner.name
        with opener(path, "rb") as source, open(plain, "wb") as target:
            shutil.copyfileobj(source, target, length=1 << 22)
        if format is None:
            format = filetype(str(plain), guess=False) if plain.suffix else None
        yield from ase.io.iread(str(plain), index=index, format=format, parallel=False)
