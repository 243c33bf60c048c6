"""The screening driver behind ``pygfm-screen``: stream structures through a
trained model, sharded over ranks, resumable, with bounded memory.

Work is cut into chunks of the input (see :mod:`.inputs`). Rank r of W takes
chunks r, r + W, r + 2W, ... with no coordination. For each chunk a producer
thread builds budget-filled batches and their neighbor lists while the model
runs on the previous ones; the chunk's results go to
``OUTPUT.parts/chunk-NNNNNNNNN.npz``, written to a temporary name and renamed,
and a line is appended to ``OUTPUT.parts/journal.jsonl``. A rerun (after a
crash or SIGKILL) skips the chunks whose part exists, so at most the chunks in
flight are lost. When every chunk is done, rank 0 merges the parts in input
order into OUTPUT (CSV, ADIOS2 ``.bp`` or ``.npz``, written atomically), with a
histogram PNG of the energies, the global top-k and a summary with throughput.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._files import (atomic_output, check_folder_is_ours, check_not_an_input,
                      remove_stale_temporaries)
from ..data import AtomicBatch
from ..data.loader import _background
from ..distributed import gpu_index
from ..ops import neighbor_list
from ..data.overlap import OverlapError
from . import rows as rows_
from .inputs import InputError, ScreenInput, Structures, open_input

__all__ = ["ScreenError", "ScreenSettings", "screen"]

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


class ScreenError(ValueError):
    """Bad arguments (checkpoint, heads, output path); the message names it."""


@dataclass
class ScreenSettings:
    model: str
    input: str
    output: str
    heads: str = "all"
    forces: bool = False
    top_k: int = 0
    rank_by: str | None = None
    precision: str = "fp32"
    batch_atoms: int = 8192
    chunk: int = 4096
    device: str = "auto"
    cutoff: float | None = None
    max_neighbors: int | None = None
    neighbors: str = "auto"        # where neighbor lists are built: auto, host or device
    progress: bool = True
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------ helpers
def _hill_formulas(numbers: np.ndarray, counts: np.ndarray) -> list[str]:
    """Hill formulas (C, H, then the rest alphabetically; without C all
    alphabetically, as ase's ``get_chemical_formula("hill")``) of the structures
    of a chunk. Vectorized: one element-count table, the pieces of all
    structures decoded as one string, then cut per structure (SC26 structures
    hold ~90 elements each; a Python loop over them cost a sixth of a GPU run)."""
    from ase.data import chemical_symbols

    counts = np.asarray(counts, dtype=np.int64)
    B = len(counts)
    if B == 0:
        return []
    numbers = np.asarray(numbers, dtype=np.int64)
    Z = len(chemical_symbols)
    owner = np.repeat(np.arange(B), counts)
    table = np.bincount(owner * Z + numbers, minlength=B * Z).reshape(B, Z)
    alphabetical = np.array(sorted(range(1, Z), key=lambda z: chemical_symbols[z]))
    carbon_first = np.concatenate(([6, 1], alphabetical[(alphabetical != 6) & (alphabetical != 1)]))
    order = np.where((table[:, 6] > 0)[:, None], carbon_first[None, :], alphabetical[None, :])
    ordered = np.take_along_axis(table, order, axis=1)
    rows, columns = np.nonzero(ordered)  # row-major: structure by structure, in Hill order
    z = order[rows, columns]
    c = ordered[rows, columns]
    # each piece ("Cu", "H2") as a row of UTF-32 code points, zero-padded; the rows of
    # all structures, zeros dropped, decode to one string cut per structure
    top = int(c.max(initial=1))
    symbols = np.zeros((Z, 2), dtype=np.uint32)
    for k, symbol in enumerate(chemical_symbols):
        symbols[k, :len(symbol)] = [ord(ch) for ch in symbol]
    digits = np.zeros((top + 1, len(str(top))), dtype=np.uint32)
    for n in range(2, len(digits)):
        text = str(n)
        digits[n, :len(text)] = [ord(ch) for ch in text]
    codes = np.concatenate((symbols[z], digits[c]), axis=1)
    keep = codes != 0
    text = codes[keep].astype("<u4").tobytes().decode("utf-32-le")
    ends = np.cumsum(np.bincount(rows, weights=keep.sum(axis=1), minlength=B)).astype(np.int64)
    starts = np.concatenate(([0], ends[:-1]))
    return [text[a:b] for a, b in zip(starts.tolist(), ends.tolist())]


def _atomic_write(path: Path, write) -> None:
    """write(tmp) then rename onto ``path`` (a file, or a directory such as an
    ADIOS2 .bp, whose old copy is removed only after the new one is in place)."""
    with atomic_output(path) as tmp:
        write(tmp)


def _json_with(path: Path, keys: set) -> bool:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and keys <= set(content)


def _is_screening_parts(parts: Path) -> bool:
    """Whether ``parts`` is an OUTPUT.parts folder pygfm-screen made (its run.json)."""
    return _json_with(parts / "run.json", {"model", "input", "chunk"})


def _check_outputs(output: Path, parts: Path) -> None:
    """Refuse a run whose outputs would replace files that are not a screening's:
    OUTPUT (and the files beside it) only when OUTPUT.parts/run.json shows an
    earlier screening into it (``run`` then checks it had the same settings);
    NAME_summary.json and NAME_energies.png also when that summary is one
    pygfm-screen wrote (a screening into NAME.csv, then into NAME.npz)."""
    check_folder_is_ours(parts, _is_screening_parts, option="--output",
                         tool="pygfm-screen")
    if _is_screening_parts(parts):
        return
    summary = output.with_name(output.stem + "_summary.json")
    beside = [output]
    if not _json_with(summary, {"output", "structures_this_run"}):
        beside += [summary, output.with_name(output.stem + "_energies.png")]
    existing = [path for path in beside if path.exists() or path.is_symlink()]
    if existing:
        raise ScreenError(f"--output: {existing[0]} exists and is not the output of an earlier "
                          f"screening into {output} (no {parts / 'run.json'}); pygfm-screen "
                          "does not replace it: remove it or choose another --output")


def _resolve_heads(model, text: str):
    names = list(model.head_names)
    if text in ("all", "auto"):
        return names, text == "auto"
    wanted = [h.strip() for h in text.split(",") if h.strip()]
    unknown = [h for h in wanted if h not in names]
    if unknown or not wanted:
        raise ScreenError(f"--heads: no head {unknown[0] if unknown else text!r}; this model "
                          f"has {', '.join(names)} (or use all / auto)")
    twice = [h for k, h in enumerate(wanted) if h in wanted[:k]]
    if twice:
        raise ScreenError(f"--heads: {twice[0]!r} is listed twice")
    return wanted, False


def _load_model(path: str, device: torch.device, precision: str):
    from ..models import load

    hydragnn = path.startswith("hydragnn:")
    if not (Path(path[len("hydragnn:"):]).is_dir() if hydragnn else Path(path).is_file()):
        raise ScreenError(f"--model: {path} does not exist"
                          + (" (hydragnn:DIR names a HydraGNN log directory)" if hydragnn else ""))
    try:
        model = load(path, map_location="cpu")
    except (ValueError, KeyError, RuntimeError, TypeError) as error:
        raise ScreenError(f"--model: {path} cannot be used: {error}") from None
    return model.to(device=device, dtype=DTYPES[precision]).eval()


# ------------------------------------------------------------------ batches
def _batches(structures: Structures, budget: int, dtype, cutoff, max_neighbors,
             neighbors: bool = True):
    """(batch, slice of the chunk's structures) pairs, each <= budget atoms; with
    their neighbor lists unless ``neighbors`` is False (then the consumer builds
    them on the model's device: :func:`_with_neighbors`)."""
    counts = structures.counts
    offsets = np.concatenate(([0], np.cumsum(counts)))
    start = 0
    while start < len(counts):
        stop = start + 1
        while stop < len(counts) and offsets[stop + 1] - offsets[start] <= budget:
            stop += 1
        a0, a1 = offsets[start], offsets[stop]
        ptr = torch.as_tensor(offsets[start:stop + 1] - a0, dtype=torch.int64)
        batch = AtomicBatch(
            positions=torch.as_tensor(structures.positions[a0:a1], dtype=dtype),
            numbers=torch.as_tensor(structures.numbers[a0:a1], dtype=torch.int64),
            cell=torch.as_tensor(structures.cell[start:stop], dtype=dtype),
            pbc=torch.as_tensor(structures.pbc[start:stop], dtype=torch.bool), ptr=ptr)
        yield (_with_neighbors(batch, cutoff, max_neighbors) if neighbors else batch,
               slice(start, stop))
        start = stop


def _with_neighbors(batch: AtomicBatch, cutoff, max_neighbors) -> AtomicBatch:
    from dataclasses import replace

    pairs = neighbor_list(batch.positions, cutoff, batch.cell, batch.pbc, batch.ptr,
                          max_neighbors=max_neighbors)
    return replace(batch, neighbors=pairs, neighbor_cutoff=float(cutoff))


def _produce(items, depth: int):
    """Iterate ``items`` in a thread, ``depth`` ahead (the loader's prefetch
    thread); errors are raised in the consumer. ``depth`` 0: no thread (on a CPU
    the model's OpenMP threads already use every core; a producer beside them
    was measured to slow both down)."""
    if depth == 0:
        return iter(items)
    return _background(lambda item: item, items, depth)


# ------------------------------------------------------------------ the run
class Screen:
    def __init__(self, settings: ScreenSettings, comm=None):
        self.s = settings
        self.comm = comm
        self.rank, self.size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
        if settings.precision not in DTYPES:
            raise ScreenError(f"--precision: must be fp64, fp32 or bf16, got {settings.precision!r}")
        if settings.batch_atoms < 1 or settings.chunk < 1:
            raise ScreenError("--batch-atoms and --chunk must be >= 1")
        if settings.top_k < 0:
            raise ScreenError(f"--top-k: must be >= 0, got {settings.top_k}")
        device = settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ScreenError(f"--device: {device!r} is not a device (auto, cpu, cuda, "
                              "cuda:N)") from None
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise ScreenError(f"--device {device}: torch sees no GPU")
            if self.device.index is None:
                self.device = torch.device("cuda", gpu_index(torch.cuda.device_count()))
        # a producer thread overlaps data preparation with a GPU's work
        self.depth = 2 if self.device.type != "cpu" else 0
        if settings.neighbors not in ("auto", "host", "device"):
            raise ScreenError(f"--neighbors: must be auto, host or device, got "
                              f"{settings.neighbors!r}")
        # neighbor lists on the model's device (auto: on a GPU): SC26 structures are
        # dense (~130 candidates per atom, the nearest 20 kept), which one CPU core
        # lists at ~860 structures/s, far below what the model does on a GPU
        self.neighbors_on_device = settings.neighbors == "device" or (
            settings.neighbors == "auto" and self.device.type != "cpu")
        self.output = Path(settings.output)
        if self.output.suffix not in (".csv", ".bp", ".npz"):
            raise ScreenError(f"--output: {self.output} must end in .csv, .bp (ADIOS2) or .npz")
        parent = self.output.resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ScreenError(f"--output: cannot write into {parent}")
        self.parts = self.output.with_name(self.output.name + ".parts")
        try:
            if Path(settings.input).exists():  # a file or dataset, not a generator spec
                check_not_an_input(self.output, [settings.input], option="--output")
            _check_outputs(self.output, self.parts)
        except FileExistsError as error:
            raise ScreenError(str(error)) from None
        self.model = _load_model(settings.model, self.device, settings.precision)
        self.heads, self.auto = _resolve_heads(self.model, settings.heads)
        self.head_index = [self.model.head_index(h) for h in self.heads]
        if self.auto and getattr(self.model, "branch_weights", None) is None and \
                not bool(self.model.composition_logp.abs().sum() > 0):
            raise ScreenError("--heads auto: this checkpoint has no composition model (train "
                              "it with this pygfm's pygfm-train)")
        try:
            self.input: ScreenInput = open_input(settings.input, settings.chunk)
        except InputError as error:
            raise ScreenError(f"--input: {error}") from None
        self.cutoff = settings.cutoff or self.model.cutoff
        self.max_neighbors = settings.max_neighbors if settings.max_neighbors is not None \
            else self.input.max_neighbors
        self.geometry = torch.float64 if settings.precision == "fp64" else torch.float32
        self.columns = self._columns()
        if settings.rank_by not in (None, *self.columns):
            raise ScreenError(f"--rank-by: no column {settings.rank_by!r}; columns are "
                              f"{', '.join(c for c in self.columns if c not in ('formula',))}")

    def _columns(self) -> list[str]:
        cols = ["id", "formula", "n_atoms"]
        for h in self.heads:
            cols += [f"energy:{h}", f"energy_per_atom:{h}"]
        if len(self.heads) > 1:
            cols.append("spread_per_atom")
        if self.auto:
            cols += ["energy:auto", "energy_per_atom:auto"]
        if self.s.forces:
            cols.append("max_force")
        return cols

    # -------------------------------------------------------------- chunks
    def _part(self, k: int) -> Path:
        return self.parts / f"chunk-{k:09d}.npz"

    def _chunks(self, mine):
        """(k, structures, formulas) of each chunk: on a GPU made in a thread one
        chunk ahead, so generation and formulas overlap the model."""
        for k in mine:
            structures = self.input.chunk(k)
            yield k, structures, _hill_formulas(structures.numbers, structures.counts)

    def _run_chunk(self, k: int, structures: Structures, formulas: list, bar) -> dict:
        B = len(structures)
        H = len(self.heads)
        energy = np.full((B, H), np.nan)
        max_force = np.full(B, np.nan) if self.s.forces else None
        blend = np.full(B, np.nan) if self.auto else None
        problems = [[] for _ in range(B)]  # the row status (pygfm.screen.rows)
        known = self.model.head_elements[self.head_index].cpu().numpy()
        unseen = rows_.unseen_elements(structures, known, self.heads, problems)
        rows = rows_.thin_cell_rows(structures, problems)
        todo = structures if len(rows) == B else rows_.subset(structures, rows)
        items = _batches(todo, self.s.batch_atoms, self.geometry, self.cutoff,
                         self.max_neighbors, neighbors=not self.neighbors_on_device)
        for batch, where in _produce(items, depth=self.depth):
            batch = batch.to(self.device)
            if self.neighbors_on_device:
                batch = _with_neighbors(batch, self.cutoff, self.max_neighbors)
            batch_rows = rows[where]
            try:
                out, weights = self._evaluate(batch, unseen[batch_rows])
            except OverlapError:  # rare: leave those structures out, run the others
                bad = rows_.overlapping_structures(batch, batch_rows, problems)
                keep = [b for b in range(batch.num_structures) if b not in bad]
                out = None
                if keep:
                    batch = _with_neighbors(rows_.select(batch, keep), self.cutoff,
                                            self.max_neighbors)
                    batch_rows = batch_rows[keep]
                    out, weights = self._evaluate(batch, unseen[batch_rows])
            if out is not None:
                e = out["energy"].detach().double()
                e = e[:, None] if e.dim() == 1 else e
                energy[batch_rows] = e.cpu().numpy()
                if self.auto:
                    blend[batch_rows] = (e * weights).sum(dim=1).cpu().numpy()
                if self.s.forces:
                    norms = out["forces"].detach().double().norm(dim=-1)
                    peak = torch.zeros(batch.num_structures, dtype=torch.float64,
                                       device=self.device).scatter_reduce(
                        0, batch.structure_index(), norms, "amax", include_self=True)
                    max_force[batch_rows] = peak.cpu().numpy()
            if bar is not None:
                bar.update((where.stop - where.start) * self.size)
        if bar is not None and len(rows) < B:
            bar.update((B - len(rows)) * self.size)
        # a head's energy of elements it never saw is meaningless; with no head
        # that saw them all, the blend and the forces are too
        energy[unseen] = np.nan
        for column in (blend, max_force):
            if column is not None:
                column[unseen.all(axis=1)] = np.nan
        result = {"id": structures.ids, "n_atoms": structures.counts.astype(np.int64),
                  "formula": np.array(formulas),
                  "energy": energy}
        if blend is not None:
            result["blend"] = blend
        if max_force is not None:
            result["max_force"] = max_force
        result["status"] = rows_.status_column(problems)
        return result

    def _evaluate(self, batch: AtomicBatch, unseen: np.ndarray):
        """(model output, blend weights [B, H] or None) of one batch; the weights
        of heads that never saw an element of the structure are 0 (the others
        renormalized). Raises OverlapError on overlapping atoms."""
        H = len(self.heads)
        weights = None
        if self.auto or (self.s.forces and H > 1):
            weights = self.model.head_weights(batch.numbers, batch.ptr, self.head_index) \
                if self.auto else torch.full((batch.num_structures, H), 1.0 / H,
                                             dtype=torch.float64, device=self.device)
            if unseen.any():
                weights = weights * torch.as_tensor(~unseen, device=self.device)
                total = weights.sum(dim=1, keepdim=True)
                weights = torch.where(total > 0, weights / total.clamp(min=1e-300), weights)
        heads = self.heads if H > 1 else self.heads[0]
        with torch.inference_mode(not self.s.forces):
            out = self.model(batch, heads, forces=self.s.forces,
                             force_weights=weights if H > 1 else None)
        return out, weights

    def run(self) -> dict:
        total_chunks = self.input.num_chunks
        if self.rank == 0:
            self.parts.mkdir(parents=True, exist_ok=True)
            # a HydraGNN log directory: its checkpoint file identifies the model
            loaded = getattr(self.model, "loaded_from", None) or {}
            model_file = Path(loaded["checkpoints"][0] if loaded.get("checkpoints")
                              else self.s.model).resolve()
            stat = model_file.stat()
            meta = {"model": str(model_file), "model_bytes": stat.st_size,
                    "model_mtime_ns": stat.st_mtime_ns, "input": self.s.input,
                    "heads": self.heads, "auto": self.auto, "forces": self.s.forces,
                    "chunk": self.s.chunk, "precision": self.s.precision,
                    "cutoff": self.cutoff, "max_neighbors": self.max_neighbors}
            meta_path = self.parts / "run.json"
            if meta_path.exists():
                previous = json.loads(meta_path.read_text())
                if previous != meta:
                    raise ScreenError(f"{self.parts} holds parts of a different screening run "
                                      f"({previous}); remove it or choose another --output")
            else:
                _atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=1)))
            remove_stale_temporaries(self.parts, "chunk-*.npz")  # parts a kill cut short
            for name in (self.output.name, "run.json", self.output.stem + "_summary.json",
                         self.output.stem + "_energies.png"):
                remove_stale_temporaries(self.parts if name == "run.json"
                                         else self.output.parent, name)
        self._barrier()
        mine = [k for k in range(self.rank, total_chunks, self.size)
                if not self._part(k).exists()]
        done_before = total_chunks - len([k for k in range(total_chunks)
                                          if not self._part(k).exists()])
        bar = None
        if self.s.progress and self.rank == 0:
            from tqdm import tqdm
            bar = tqdm(total=len(self.input), unit="structure", desc="pygfm-screen",
                       dynamic_ncols=True, unit_scale=True,
                       initial=min(done_before * self.s.chunk, len(self.input)))
        started = time.perf_counter()
        structures_done = atoms_done = 0
        # the next chunk's structures are generated in a thread while this one runs
        for k, structures, formulas in _produce(self._chunks(mine), depth=min(self.depth, 1)):
            chunk_started = time.perf_counter()
            result = self._run_chunk(k, structures, formulas, bar)
            _atomic_write(self._part(k), lambda p: _save_npz(p, result))
            structures_done += len(structures)
            atoms_done += int(structures.counts.sum())
            with open(self.parts / "journal.jsonl", "a", encoding="utf-8") as journal:
                journal.write(json.dumps({"chunk": k, "rank": self.rank,
                                          "structures": len(structures),
                                          "seconds": time.perf_counter() - chunk_started})
                              + "\n")
        seconds = time.perf_counter() - started
        if bar is not None:
            bar.close()
        rates = self._gather((structures_done, atoms_done, seconds))
        summary = None
        if self.rank == 0:
            missing = [k for k in range(total_chunks) if not self._part(k).exists()]
            if missing:
                raise ScreenError(f"{len(missing)} chunks have no results (first {missing[0]})")
            summary = self._merge(total_chunks, rates)
        self._barrier()
        return summary

    def _barrier(self):
        if self.comm is not None:
            self.comm.Barrier()

    def _gather(self, value):
        return self.comm.gather(value, root=0) if self.comm is not None else [value]

    # -------------------------------------------------------------- the end
    def _merge(self, total_chunks: int, rates) -> dict:
        parts = [dict(np.load(self._part(k), allow_pickle=False)) for k in range(total_chunks)]
        for part in parts:  # parts written before rows had a status
            part.setdefault("status", np.full(len(part["id"]), "ok"))
        merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} \
            if parts else {}
        table = {"id": merged.get("id", np.zeros(0, np.int64)),
                 "formula": merged.get("formula", np.zeros(0, str)),
                 "n_atoms": merged.get("n_atoms", np.zeros(0, np.int64))}
        n = np.maximum(table["n_atoms"], 1)
        energy = merged.get("energy", np.zeros((0, len(self.heads))))
        for h, name in enumerate(self.heads):
            table[f"energy:{name}"] = energy[:, h]
            table[f"energy_per_atom:{name}"] = energy[:, h] / n
        if len(self.heads) > 1:
            table["spread_per_atom"] = (energy / n[:, None]).std(axis=1)
        if self.auto:
            table["energy:auto"] = merged["blend"]
            table["energy_per_atom:auto"] = merged["blend"] / n
        if self.s.forces:
            table["max_force"] = merged["max_force"]
        table["status"] = merged.get("status", np.zeros(0, str))
        _atomic_write(self.output, lambda p: _write_table(p, table, self.output.suffix))
        structures = int(sum(r[0] for r in rates))
        atoms = int(sum(r[1] for r in rates))
        wall = max((r[2] for r in rates), default=0.0)
        summary = {
            "output": str(self.output), "structures": int(len(table["id"])),
            "structures_this_run": structures, "atoms_this_run": atoms, "seconds": wall,
            "structures_per_s": structures / wall if wall > 0 else None,
            "atoms_per_s": atoms / wall if wall > 0 else None, "ranks": self.size,
            "device": str(self.device), "precision": self.s.precision, "heads": self.heads,
            "auto": self.auto, "forces": self.s.forces,
        }
        summary.update(_status_counts(table["status"], self.output))
        rank_by = self.s.rank_by or (f"energy_per_atom:{'auto' if self.auto else self.heads[0]}")
        if self.s.top_k:  # rows whose value is NaN (not ok) are never ranked
            valid = np.flatnonzero(np.isfinite(table[rank_by]))
            order = valid[np.argsort(table[rank_by][valid], kind="stable")][:self.s.top_k]
            summary["rank_by"] = rank_by
            summary["top_k"] = [{c: _plain(table[c][i]) for c in table} for i in order]
        if len(table["id"]):
            from .report import energy_histogram
            histogram = self.output.with_name(self.output.stem + "_energies.png")
            try:
                energy_histogram(table, [f"energy_per_atom:{h}" for h in self.heads]
                                 + (["energy_per_atom:auto"] if self.auto else []), histogram)
                summary["histogram"] = str(histogram)
            except Exception as error:  # noqa: BLE001 - a plot never fails a finished run
                print(f"warning: histogram not written ({type(error).__name__}: {error})")
        summary_path = self.output.with_name(self.output.stem + "_summary.json")
        _atomic_write(summary_path, lambda p: p.write_text(json.dumps(summary, indent=1)))
        return summary


def _status_counts(status: np.ndarray, output: Path) -> dict:
    """The summary's counts of rows that are not ok; one warning line if any."""
    import sys

    bad = status != "ok"
    kinds = {"overlapping_atoms": int((np.char.find(status, "overlapping") >= 0).sum()),
             "unseen_elements": int((np.char.find(status, "unseen") >= 0).sum())}
    if bad.any():
        print(f"warning: {int(bad.sum())} of {len(status)} structures are not ok "
              f"({kinds['overlapping_atoms']} with overlapping atoms, "
              f"{kinds['unseen_elements']} with elements a head never saw): their energies "
              f"are NaN; see the status column of {output}", file=sys.stderr, flush=True)
    return {"not_ok": int(bad.sum()), "not_ok_kinds": kinds}


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def _save_npz(path: Path, result: dict) -> None:
    with open(path, "wb") as handle:  # fsynced by _atomic_write
        np.savez(handle, **result)


def _write_table(path: Path, table: dict, suffix: str) -> None:
    if suffix == ".npz":
        with open(path, "wb") as handle:
            np.savez(handle, **table)
        return
    if suffix == ".bp":
        import uuid

        import adios2
        io = adios2.Adios().declare_io(f"pygfm-screen-{uuid.uuid4().hex}")
        io.set_engine("BP5")
        with adios2.Stream(io, str(path), "w") as stream:
            for key, values in table.items():
                values = np.asarray(values)
                if values.dtype.kind == "U":
                    stream.write_attribute(key, values.tolist() or [""])
                else:
                    stream.write(key, np.ascontiguousarray(values))
        return
    import csv
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        columns = list(table)
        writer.writerow(columns)
        for i in range(len(table["id"])):
            writer.writerow([_format(table[c][i]) for c in columns])


def _format(value):
    # repr: the shortest text that reads back as the same float64 (8 significant
    # digits lost ~1e-5 eV on energies of hundreds of eV, even with --precision fp64)
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return _plain(value)


def screen(settings: ScreenSettings, comm=None) -> dict | None:
    """Run a screening; returns the summary on rank 0 (None on the others)."""
    return Screen(settings, comm).run()
