"""The training driver behind ``pygfm-train``: one PaiNN trunk, one head per
dataset, data-parallel over any number of ranks, resumable.

A run directory holds:

* ``config.yaml``: the resolved configuration;
* ``last.pt`` (every validation) and ``best.pt`` (best validation objective):
  checkpoints written atomically; ``pygfm.load`` reads either (the weights are
  the EMA weights when EMA is on), and ``--resume`` restores the optimizer,
  schedule, EMA, data position and random state from ``last.pt``;
* ``metrics.csv``: per validation, the learning rate, the training loss and,
  per dataset, energy MAE per atom and force MAE on training batches (since the
  last validation) and on the validation set;
* ``summary.json`` / ``summary.md``: each head against the trivial baseline
  (per-element reference energies only, zero forces);
* ``learning_curves.png`` and ``parity_<head>.png`` (see :mod:`.report`).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from .._files import (atomic_write_text, check_folder_is_ours, remove_stale_temporaries,
                      starts_with_line)
from ..data import BatchLoader, open_dataset
from ..data.adios import write_json_atomic
from ..distributed import gpu_index
from ..data.overlap import OverlapError
from ..models import MultiHeadModel
from ..models.checkpoint import load_checkpoint, representation_config, save_checkpoint
from ..nn import PaiNN
from .config import ConfigError, dump_config
from .loss import label_counts, multitask_loss
from .objective import objective_value, objective_weights
from .resume import check_resume_config, config_differences, nothing_to_do
from .datastore import DataStores
from .parallel import Parallel

__all__ = ["train", "TrainingError"]

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}
_LOAD_IN_MEMORY_ATOMS = 5_000_000
# the first line of a run's config.yaml: how a run directory is recognised as ours
RUN_CONFIG_HEADER = "# written by pygfm-train: the resolved configuration of this run\n"
# the files a run writes (temporaries of them that a SIGKILL left are removed)
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.csv", "summary.json", "summary.md",
             "learning_curves.png", "parity_*.png")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible resume, ...)."""


# ------------------------------------------------------------------ helpers
def _is_run_dir(folder: Path) -> bool:
    """Whether ``folder`` is a pygfm-train run directory (its config.yaml is ours)."""
    return starts_with_line(folder / "config.yaml", RUN_CONFIG_HEADER)


def _claim_run_dir(run_dir: Path, resume: bool, is_main: bool) -> None:
    """Refuse a run directory that is a file, or (for a new run) one that holds files
    of someone else or a run already; then clear the temporaries a kill left."""
    check_folder_is_ours(run_dir, (lambda folder: True) if resume else _is_run_dir,
                         option="--run-dir", tool="pygfm-train")
    if not resume and (run_dir / "last.pt").exists():
        raise FileExistsError(f"{run_dir} already holds a run (last.pt); continue it with "
                              "--resume or choose another --run-dir")
    if is_main:
        for name in RUN_FILES:
            remove_stale_temporaries(run_dir, name)


def _device(name: str, parallel: Parallel) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name} asked for, but torch sees no GPU")
        if device.index is None:
            device = torch.device("cuda", gpu_index(torch.cuda.device_count()))
        torch.cuda.set_device(device)
    return device


def _open(path: str, parallel: Parallel):
    if path.startswith("demo:"):
        from ..data.demo import demo_dataset
        name = path[5:]
        if parallel.is_main:  # converts on first use; the others wait and open it
            demo_dataset(name)
        parallel.barrier()
        return demo_dataset(name)
    return open_dataset(path)


def _open_entry(entry: dict, key: str, index: int, parallel: Parallel):
    """The dataset of ``datasets[index].<key>``; a dataset that cannot be opened (a
    missing or corrupt file) is a ConfigError naming the key and the file."""
    from ..data import DatasetError
    try:
        return _open(entry[key], parallel)
    except (DatasetError, FileNotFoundError) as error:
        raise ConfigError(f"datasets[{index}].{key}: {error}") from None


def _split(entry: dict, index: int, seed: int, parallel: Parallel, load: bool = True):
    dataset = _open_entry(entry, "path", index, parallel)
    if load and int(dataset.num_atoms.sum()) < _LOAD_IN_MEMORY_ATOMS:
        dataset = dataset.load()
    if len(dataset) == 0:
        raise ConfigError(f"datasets[{index}].path: {entry['path']} holds no structures")
    order = np.random.default_rng([seed, index]).permutation(len(dataset))
    if entry["validation"] is not None:
        validation_view = _open_entry(entry, "validation", index, parallel)
        train_positions = order
    else:
        held = int(round(entry["validation_fraction"] * len(dataset)))
        if entry["validation_fraction"] > 0 and held == 0 and len(dataset) > 1:
            held = 1
        train_positions = order[held:]
        validation_view = dataset[np.sort(order[:held])]
    if entry["max_samples"] is not None:  # a random subset, not the file's first ones
        train_positions = train_positions[:entry["max_samples"]]
    train_positions = np.sort(train_positions)
    if len(train_positions) == 0:
        raise ConfigError(f"datasets[{index}]: no training structures left after the split")
    return dataset.name, dataset[train_positions], validation_view


def _composition(source, limit: int = 20_000) -> np.ndarray:
    """Element counts [Z+1] over (at most ``limit`` evenly spread) structures."""
    from ..data.sample import MAX_ATOMIC_NUMBER

    n = len(source)
    positions = np.unique(np.linspace(0, n - 1, min(n, limit)).astype(np.int64))
    block = source.take(positions)
    return np.bincount(block.arrays["numbers"].astype(np.int64),
                       minlength=MAX_ATOMIC_NUMBER + 1).astype(np.float64)


def _cosine(config: dict, step: int, anchor: dict | None) -> float:
    """The cosine factor at ``step``: from 1 after warm-up down to min_lr_ratio at
    max_steps or, after a change of max_steps on --resume (``anchor``: the step
    and factor then), from the anchor's factor down to min_lr_ratio at the new
    max_steps, so that the learning rate never jumps."""
    schedule = config["schedule"]
    low, end = schedule["min_lr_ratio"], config["training"]["max_steps"]
    start, high = (schedule["warmup_steps"], 1.0) if anchor is None else \
        (anchor["step"], anchor["factor"])
    progress = min(max(step - start, 0) / max(end - start, 1), 1.0)
    return low + (high - low) * 0.5 * (1 + math.cos(math.pi * progress))


def _schedule_factor(config: dict, step: int, plateau: float,
                     anchor: dict | None = None) -> float:
    schedule = config["schedule"]
    warmup = schedule["warmup_steps"]
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule["kind"] == "cosine":
        factor *= _cosine(config, step, anchor)
    elif schedule["kind"] == "plateau":
        factor *= plateau
    return factor


class _Accumulator:
    """Per-dataset sums of |energy error| per atom and |force error| components."""

    def __init__(self, datasets: int):
        self.values = torch.zeros(datasets, 4, dtype=torch.float64)

    def add(self, out: dict, batch) -> None:
        with torch.no_grad():
            counts = (batch.ptr[1:] - batch.ptr[:-1]).double()
            d = batch.dataset.cpu()
            if batch.energy is not None:
                mask = batch.energy_mask
                error = ((out["energy"].double() - batch.energy.double()) / counts).abs()
                self.values[:, 0].index_add_(0, d, (error * mask).cpu())
                self.values[:, 1].index_add_(0, d, mask.double().cpu())
            if batch.forces is not None and "forces" in out:
                per_atom = (out["forces"].double() - batch.forces.double()).abs().sum(dim=1)
                mask = batch.forces_mask
                per_structure = torch.zeros(batch.num_structures, dtype=torch.float64,
                                            device=per_atom.device)
                per_structure.index_add_(0, batch.structure_index(), per_atom)
                self.values[:, 2].index_add_(0, d, (per_structure * mask).cpu())
                self.values[:, 3].index_add_(0, d, (3 * counts * mask).cpu())

    def result(self, parallel: Parallel, names) -> dict:
        total = parallel.sum(self.values)
        out = {}
        for k, name in enumerate(names):
            e_sum, e_n, f_sum, f_n = total[k].tolist()
            out[name] = {"energy_mae": e_sum / e_n if e_n else float("nan"),
                         "forces_mae": f_sum / f_n if f_n else float("nan")}
        self.values.zero_()
        return out


def _improves(objective: float, state: dict) -> bool:
    """Whether a validation's objective makes a new best.pt: the first validation
    always does (so best.pt exists once a validation ran), later ones when they are
    finite and lower (a NaN objective, nothing measured, is never better)."""
    if state["best_step"] < 0:
        return True
    return math.isfinite(objective) and not objective >= state["best"]


# ------------------------------------------------------------------ the model
def _build_model(config: dict, names: list, statistics: dict):
    """(model, names of heads that are new) for a fresh or fine-tuned run."""
    m = config["model"]
    init = config["finetune"]["init_from"]
    if init is None:
        trunk = PaiNN(n_features=m["n_features"], n_interactions=m["n_interactions"],
                      cutoff=m["cutoff"], n_rbf=m["n_rbf"], radial_basis=m["radial_basis"],
                      activation=m["activation"], shared_interactions=m["shared_interactions"],
                      shared_filters=m["shared_filters"])
        model = MultiHeadModel(trunk, names, normalization=statistics,
                               head_hidden=m["head_hidden"], head_layers=m["head_layers"],
                               activation=m["activation"], direct_forces=m["direct_forces"])
        return model, list(names)
    try:
        content = load_checkpoint(init)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"finetune.init_from: {error}") from None
    old_heads = list(content["heads"])
    new_heads = [name for name in names if name not in old_heads]
    head_config = dict(content["head_config"])
    head_config.setdefault("direct_forces", False)
    model = MultiHeadModel(PaiNN(**representation_config(content)), old_heads + new_heads,
                           **head_config)
    state = MultiHeadModel.upgrade_state(content["state_dict"])
    own = model.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            if key in MultiHeadModel._PER_HEAD_BUFFERS:  # per-head rows
                own[key][:len(old_heads)] = value.to(own[key].dtype)
            elif key in own:
                own[key].copy_(value.to(own[key].dtype))
    model.load_state_dict(own)
    for name in new_heads:
        model.set_normalization(name, statistics[name])
    return model, new_heads


def _parameter_groups(model: MultiHeadModel, config: dict, new_heads: list):
    lr = config["optimizer"]["lr"]
    finetune = config["finetune"]
    trunk = list(model.representation.parameters())
    heads = [p for name, p in model.named_parameters() if not name.startswith("representation.")]
    if finetune["init_from"] is not None and finetune["trunk"] == "frozen":
        for p in trunk:
            p.requires_grad_(False)
        return [{"params": heads, "lr": lr, "base_lr": lr, "name": "heads"}]
    trunk_lr = lr * (finetune["trunk_lr_ratio"] if finetune["init_from"] is not None else 1.0)
    return [{"params": trunk, "lr": trunk_lr, "base_lr": trunk_lr, "name": "trunk"},
            {"params": heads, "lr": lr, "base_lr": lr, "name": "heads"}]


# ------------------------------------------------------------------ the run
class Trainer:
    def __init__(self, config: dict, run_dir: Path, *, resume: bool = False,
                 progress: bool = True, parallel: Parallel | None = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.parallel = parallel or Parallel(
            config["distributed"]["backend"],
            torch.device("cuda") if config["device"].startswith("cuda") or (
                config["device"] == "auto" and torch.cuda.is_available()) else None,
            config["distributed"]["timeout"])
        self.parallel.check_same_config(config)
        _claim_run_dir(self.run_dir, resume, self.parallel.is_main)
        self.device = _device(config["device"], self.parallel)
        self.progress = progress and self.parallel.is_main
        if config["threads"] is not None:
            torch.set_num_threads(config["threads"])
        self.dtype = DTYPES[config["precision"]]
        self.master_dtype = torch.float64 if config["precision"] == "fp64" else torch.float32
        self._seed(config["seed"])

        # data
        self.stores = DataStores(config["data"]["store"], self.parallel)
        self.names, train_sets, validation_sets, statistics = [], {}, {}, {}
        for index, entry in enumerate(config["datasets"]):
            own_name, train_view, validation_view = _split(entry, index, config["seed"],
                                                          self.parallel, self.stores.load_whole)
            name = entry["name"] or own_name
            if name in train_sets:
                raise ConfigError(f"datasets[{index}]: head name {name!r} is used twice; give "
                                  "the dataset its own `name`")
            self.names.append(name)
            train_sets[name], validation_sets[name] = train_view, validation_view
            statistics[name] = self.stores.statistics(train_view)
        self.statistics = statistics
        self.train_sets, self.validation_sets = train_sets, validation_sets
        self.objective = objective_weights(config)
        unknown = sorted(set(self.objective["datasets"]) - set(self.names))
        if unknown:
            raise ConfigError(f"training.objective_datasets.{unknown[0]}: no such head; the "
                              f"heads are {', '.join(self.names)}")
        self.elements = sorted({e for s in statistics.values() for e in s.get("elements", [])})

        # model
        self.model, self.new_heads = _build_model(config, self.names, statistics)
        if config["finetune"]["init_from"] is not None:
            # the architecture is the checkpoint's: record it (resume and the
            # from-scratch comparison build the same model)
            given = {**self.model.representation.config, **self.model.head_config}
            config["model"] = {**config["model"],
                               **{k: v for k, v in given.items() if k in config["model"]}}
        # which training set a composition resembles (screening's --heads auto)
        self.model.fit_composition({name: _composition(train_sets[name])
                                    for name in self.new_heads})
        self.model = self.model.to(device=self.device, dtype=self.master_dtype)
        self.parallel.broadcast_parameters(self.model)
        self.dataset_heads = [self.model.head_index(n) for n in self.names]
        groups = _parameter_groups(self.model, config, self.new_heads)
        o = config["optimizer"]
        self.optimizer = torch.optim.AdamW(groups, lr=o["lr"], betas=(o["beta1"], o["beta2"]),
                                           weight_decay=o["weight_decay"])
        self.parameters = [p for g in groups for p in g["params"]]
        self.ema = copy.deepcopy(self.model).eval() \
            if config["training"]["ema_decay"] is not None else None
        if self.ema is not None:
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self.work = self.model if self.dtype == self.master_dtype else \
            copy.deepcopy(self.model).to(self.dtype)
        self.loss_weights = torch.tensor([e["loss_weight"] for e in config["datasets"]],
                                         dtype=torch.float64)

        # data.store: distributed puts 1/N of every set on each rank (same batches)
        self.train_sets = train_sets = self.stores.hold(train_sets)
        self.validation_sets = validation_sets = self.stores.hold(validation_sets)
        s = config["sampling"]
        geometry = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.geometry_dtype = geometry
        self.loader = BatchLoader(
            train_sets, atom_budget=s["batch_atoms"], edge_budget=s["batch_edges"],
            cutoff=self.model.cutoff, shuffle=True, alpha=s["alpha"],
            weights=[e["weight"] for e in config["datasets"]],
            samples_per_epoch=s["samples_per_epoch"], rank=self.parallel.rank,
            world_size=self.parallel.size, seed=config["seed"],
            comm=self.parallel if self.parallel.size > 1 else None, dtype=geometry,
            prefetch=s["prefetch"])
        self.validation_loader = BatchLoader(
            validation_sets, atom_budget=s["batch_atoms"], cutoff=self.model.cutoff,
            shuffle=False, rank=self.parallel.rank, world_size=self.parallel.size,
            dtype=geometry, prefetch=s["prefetch"])

        self.state = dict(step=0, epoch=0, position=0, best=float("inf"), best_step=-1,
                          bad_evaluations=0, plateau=1.0, plateau_best=float("inf"),
                          plateau_bad=0, elapsed=0.0, structures=0, stopped="",
                          schedule_anchor=None, schedule_max_steps=config["training"]["max_steps"])
        self.history: list[dict] = []
        self.train_metrics = _Accumulator(len(self.names))
        self.loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of losses, steps)
        if resume:
            self._resume()

    # -------------------------------------------------------------- state
    def _seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def _raw_state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "state": dict(self.state),
            "history": list(self.history),
            "train_metrics": self.train_metrics.values.clone(),
            "loss_sum": self.loss_sum.clone(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
            "numpy_rng": json.dumps(np.random.get_state()[1].tolist()),
        }

    def _resume(self) -> None:
        path = self.run_dir / "last.pt"
        if not path.exists():
            raise TrainingError(f"--resume: {path} does not exist (nothing to resume)")
        content = load_checkpoint(path)
        check_resume_config(content["config"], self.config, self.run_dir)
        extra = content["extra"]
        self.model.load_state_dict(extra["model"])
        if self.ema is not None and extra["ema"] is not None:
            self.ema.load_state_dict(extra["ema"])
        self.optimizer.load_state_dict(extra["optimizer"])
        # checkpoints of older pygfm lack the schedule's keys: it was planned for
        # the saved max_steps
        self.state.update({"schedule_anchor": None,
                           "schedule_max_steps": content["config"]["training"]["max_steps"]})
        self.state.update(extra["state"])
        self._extend()
        self.history = list(extra["history"])
        self.train_metrics.values.copy_(extra["train_metrics"])
        self.loss_sum.copy_(extra["loss_sum"])
        torch.set_rng_state(extra["rng"])
        if extra.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(extra["cuda_rng"])
        numpy_state = list(np.random.get_state())
        numpy_state[1] = np.array(json.loads(extra["numpy_rng"]), dtype=np.uint32)
        np.random.set_state(tuple(numpy_state))
        self._sync_work()
        if self.parallel.is_main:
            print(f"resumed from {path} at step {self.state['step']} (epoch "
                  f"{self.state['epoch']}, batch {self.state['position']})", flush=True)

    def _extend(self) -> None:
        """A resume with another max_steps: the cosine goes on from the learning rate
        reached (no jump) down to min_lr_ratio at the new max_steps; a run that stopped
        (finished, out of time, early-stopped) and now has steps left goes on."""
        state = self.state
        if self.config["training"]["max_steps"] != state["schedule_max_steps"]:
            planned = {**self.config, "training": {**self.config["training"],
                                                   "max_steps": state["schedule_max_steps"]}}
            state["schedule_anchor"] = {"step": state["step"], "factor": _cosine(
                planned, state["step"], state["schedule_anchor"])}
            state["schedule_max_steps"] = self.config["training"]["max_steps"]
        if state["stopped"] and nothing_to_do(self.config, state) is None:
            state["stopped"] = ""  # set again when this part of the run ends

    def _sync_work(self) -> None:
        if self.work is not self.model:
            with torch.no_grad():
                for w, m in zip(self.work.parameters(), self.model.parameters()):
                    w.copy_(m)

    def _eval_model(self):
        """The weights validation uses (EMA if on), in the run's precision."""
        source = self.ema if self.ema is not None else self.model
        if self.dtype == self.master_dtype:
            return source
        if not hasattr(self, "_eval_copy"):
            self._eval_copy = copy.deepcopy(source).to(self.dtype)
        with torch.no_grad():
            for w, m in zip(self._eval_copy.parameters(), source.parameters()):
                w.copy_(m)
        return self._eval_copy

    # -------------------------------------------------------------- steps
    def _forward(self, model, batch, training: bool):
        loss_config = self.config["loss"]
        forces = batch.forces is not None and (loss_config["forces"] > 0 or not training)
        stress = (batch.stress is not None and loss_config["stress"] > 0
                  and bool((batch.stress_mask & batch.pbc.all(dim=1)).any()))
        direct = model.force_heads is not None
        try:
            return model(batch, dataset_heads=self.dataset_heads, forces=forces,
                         stress=stress, direct_forces=direct)
        except OverlapError as error:  # a dataset written before convert checked this
            b = error.structure
            where = (f"dataset {self.names[int(batch.dataset[b])]!r}, sample "
                     f"{int(batch.sample_id[b])} ({error.formula})")
            raise TrainingError(f"{error.renamed(where=where)}; remove it from the dataset "
                                "(pygfm-data convert refuses such structures)") from None

    def _step(self, batch) -> float:
        self.work.train()
        totals = self.parallel.sum(label_counts(batch)).to(self.device)
        try:
            out = self._forward(self.work, batch, True)
            loss, _ = multitask_loss(out, batch, self.config["loss"], self.loss_weights, totals)
            bad_structure = None
        except TrainingError as error:  # every rank stops together, not in a collective
            bad_structure = error
        finite = bad_structure is None and bool(torch.isfinite(loss.detach()))
        if self.parallel.any(not finite):
            if bad_structure is not None:
                raise bad_structure
            raise TrainingError(f"the loss became {float(loss):.3g} at step "
                                f"{self.state['step']} (on some rank); lower optimizer.lr or "
                                "check the data")
        self.optimizer.zero_grad(set_to_none=True)
        if self.work is not self.model:
            self.work.zero_grad(set_to_none=True)
        loss.backward()
        if self.work is not self.model:
            for w, m in zip(self.work.parameters(), self.model.parameters()):
                m.grad = None if w.grad is None else w.grad.to(m.dtype)
        self.parallel.sum_gradients(self.parameters)
        clip = self.config["optimizer"]["grad_clip"]
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, clip)
        factor = _schedule_factor(self.config, self.state["step"], self.state["plateau"],
                                  self.state["schedule_anchor"])
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        self.optimizer.step()
        self._sync_work()
        if self.ema is not None:
            decay = min(self.config["training"]["ema_decay"],
                        (1 + self.state["step"]) / (10 + self.state["step"]))
            with torch.no_grad():
                for e, m in zip(self.ema.parameters(), self.model.parameters()):
                    e.lerp_(m, 1 - decay)
        self.train_metrics.add({k: v.detach() for k, v in out.items()}, batch)
        self.loss_sum += torch.tensor([float(loss.detach()), 1.0], dtype=torch.float64)
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self, model=None, baseline: bool = False, collect: bool = False):
        """Validation metrics per dataset ({name: {energy_mae, forces_mae}});
        ``baseline``: the per-element reference energies alone (zero forces);
        ``collect``: also return (dataset, per-atom energy ref/pred, force ref/pred)."""
        model = model or self._eval_model()
        model.eval()
        accumulator = _Accumulator(len(self.names))
        pairs = {name: {"energy": [], "forces": []} for name in self.names}
        for batch in self.validation_loader:
            batch = batch.to(self.device)
            if baseline:
                head = torch.as_tensor(self.dataset_heads, device=self.device)[batch.dataset]
                atom_head = head[batch.structure_index()]
                reference = model.reference[atom_head, batch.numbers]
                energy = torch.zeros(batch.num_structures, dtype=torch.float64,
                                     device=self.device).index_add_(
                    0, batch.structure_index(), reference)
                out = {"energy": energy, "forces": torch.zeros_like(batch.positions)}
            else:
                out = self._forward(model, batch, False)
            accumulator.add(out, batch)
            if collect:
                self._collect(pairs, out, batch)
        metrics = accumulator.result(self.parallel, self.names)
        return (metrics, pairs) if collect else metrics

    def _collect(self, pairs: dict, out: dict, batch) -> None:
        counts = (batch.ptr[1:] - batch.ptr[:-1]).double().cpu()
        dataset = batch.dataset.cpu()
        structure = batch.structure_index().cpu()
        for d, name in enumerate(self.names):
            mine = dataset == d
            if batch.energy is not None:
                keep = mine & batch.energy_mask.cpu()
                pairs[name]["energy"].append(torch.stack([
                    batch.energy.double().cpu()[keep] / counts[keep],
                    out["energy"].double().cpu()[keep] / counts[keep]], 1))
            if batch.forces is not None and "forces" in out:
                atoms = (mine & batch.forces_mask.cpu())[structure]
                pairs[name]["forces"].append(torch.stack([
                    batch.forces.double().cpu()[atoms].reshape(-1),
                    out["forces"].double().cpu()[atoms].reshape(-1)], 1))

    # -------------------------------------------------------------- checkpoints
    def _checkpoint(self, name: str, weights) -> None:
        if not self.parallel.is_main:
            return
        model = copy.deepcopy(weights).to(self.master_dtype)
        extra = self._raw_state() if name == "last.pt" else {"state": dict(self.state)}
        extra["dataset_heads"] = dict(zip(self.names, self.dataset_heads))
        save_checkpoint(model, self.run_dir / name, elements=self.elements,
                        config=self.config, extra=extra)

    def _write_metrics(self) -> None:
        if not self.parallel.is_main or not self.history:
            return
        columns = list(self.history[0])
        for row in self.history[1:]:
            columns.extend(k for k in row if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in row.items()})
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())

    # -------------------------------------------------------------- the loop
    def _validate_and_save(self, started: float) -> bool:
        """Validate, log, checkpoint; True when early stopping says stop."""
        validation = self.evaluate()
        train = self.train_metrics.result(self.parallel, self.names)
        summed = self.parallel.sum(self.loss_sum)
        self.loss_sum.zero_()
        objective = objective_value(self.objective, validation)
        state = self.state
        row = {"step": state["step"], "epoch": state["epoch"],
               "elapsed_s": state["elapsed"] + time.perf_counter() - started,
               "lr": self.optimizer.param_groups[-1]["lr"],
               # each rank's loss is its share of the global batch's loss: the
               # loss of a step is their sum, so divide by the steps of one rank
               "train_loss": float(summed[0] / (summed[1] / self.parallel.size))
               if summed[1] else float("nan"),
               "val_objective": objective}
        for name in self.names:
            for split, metrics in (("train", train), ("val", validation)):
                row[f"{split}_energy_mae/{name}"] = metrics[name]["energy_mae"]
                row[f"{split}_forces_mae/{name}"] = metrics[name]["forces_mae"]
        self.history.append(row)
        improved = _improves(objective, state)
        if improved:
            state["best"], state["best_step"], state["bad_evaluations"] = \
                objective, state["step"], 0
        else:
            state["bad_evaluations"] += 1
        schedule = self.config["schedule"]
        if schedule["kind"] == "plateau":
            if objective < state["plateau_best"]:
                state["plateau_best"], state["plateau_bad"] = objective, 0
            else:
                state["plateau_bad"] += 1
                if state["plateau_bad"] > schedule["plateau_patience"]:
                    state["plateau"] *= schedule["plateau_factor"]
                    state["plateau_bad"] = 0
        patience = self.config["training"]["early_stopping"]
        stop = patience is not None and state["bad_evaluations"] >= patience
        if stop:
            state["stopped"] = f"early stopping after {patience} validations without improvement"
        state_elapsed = state["elapsed"]
        state["elapsed"] = row["elapsed_s"]
        if improved:
            self._checkpoint("best.pt", self.ema if self.ema is not None else self.model)
        self._checkpoint("last.pt", self.ema if self.ema is not None else self.model)
        state["elapsed"] = state_elapsed
        self._write_metrics()
        return stop

    def fit(self) -> dict:
        config, state = self.config, self.state
        training = config["training"]
        if self.parallel.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml",
                              RUN_CONFIG_HEADER + dump_config(config))
        self.parallel.barrier()
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=training["max_steps"], initial=state["step"], unit="step",
                       desc="pygfm-train", dynamic_ncols=True)
        started = time.perf_counter()
        elapsed_before = state["elapsed"]
        window = (time.perf_counter(), state["structures"])
        stop = state["step"] >= training["max_steps"]
        while not stop:
            self.loader.set_epoch(state["epoch"])
            for batch in self.loader.iterate(state["position"]):
                batch = batch.to(self.device)
                loss = self._step(batch)
                state["step"] += 1
                state["position"] += 1
                state["structures"] += batch.num_structures * self.parallel.size
                out_of_time = training["max_time"] is not None and \
                    elapsed_before + time.perf_counter() - started >= training["max_time"]
                out_of_time = self.parallel.any(out_of_time) \
                    if training["max_time"] is not None else False
                last = state["step"] >= training["max_steps"] or out_of_time
                if bar is not None and (state["step"] % training["log_every"] == 0 or last):
                    now = time.perf_counter()
                    rate = (state["structures"] - window[1]) / max(now - window[0], 1e-9)
                    window = (now, state["structures"])
                    bar.set_postfix(loss=f"{loss:.4g}", lr=f"{self.optimizer.param_groups[-1]['lr']:.2g}",
                                    structures_per_s=f"{rate:.0f}", refresh=False)
                    bar.update(state["step"] - bar.n)
                if out_of_time:
                    state["stopped"] = f"max_time {training['max_time']} s reached"
                if state["step"] % training["eval_every"] == 0 or last:
                    state["elapsed"] = elapsed_before
                    stop = self._validate_and_save(started) or last
                    if bar is not None:
                        row = self.history[-1]
                        bar.write(f"step {row['step']:>6}  val objective {row['val_objective']:.4g}"
                                  f"  (best {state['best']:.4g} at step {state['best_step']})")
                if stop:
                    break
            else:
                state["epoch"] += 1
                state["position"] = 0
        if bar is not None:
            bar.close()
        if not state["stopped"]:
            state["stopped"] = f"max_steps {training['max_steps']} reached"
        summary = self.finish()
        self.stores.close()  # collective: frees this run's stores before a next stage
        return summary

    # -------------------------------------------------------------- the end
    def finish(self) -> dict:
        """Evaluate best.pt against the reference-only baseline; write the summary
        and plots (rank 0)."""
        best_path = self.run_dir / "best.pt"
        self.parallel.barrier()
        if best_path.exists():
            content = load_checkpoint(best_path, map_location=self.device)
            model = copy.deepcopy(self.model)
            model.load_state_dict(content["state_dict"])
            model = model.to(self.dtype)
        else:
            model = self._eval_model()
        metrics, pairs = self.evaluate(model, collect=True)
        baseline = self.evaluate(model, baseline=True)
        pairs = self._gather_pairs(pairs)
        summary = {
            "run_dir": str(self.run_dir), "stopped": self.state["stopped"],
            "steps": self.state["step"], "best_step": self.state["best_step"],
            "best_objective": self.state["best"], "precision": self.config["precision"],
            # what the errors below are of: best.pt exists once a validation ran
            "evaluated": "best.pt" if best_path.exists() else "the final weights",
            "ranks": self.parallel.size, "device": str(self.device),
            "structures_seen": self.state["structures"],
            "train_seconds": self.history[-1]["elapsed_s"] if self.history else 0.0,
            "heads": {name: {"dataset": self.config["datasets"][k]["path"],
                             "new_head": name in self.new_heads,
                             "train_structures": len(self.train_sets[name]),
                             "validation_structures": len(self.validation_sets[name]),
                             "energy_mae": metrics[name]["energy_mae"],
                             "forces_mae": metrics[name]["forces_mae"],
                             "baseline_energy_mae": baseline[name]["energy_mae"],
                             "baseline_forces_mae": baseline[name]["forces_mae"]}
                      for k, name in enumerate(self.names)},
        }
        if self.parallel.is_main:
            write_json_atomic(self.run_dir / "summary.json", summary)
            atomic_write_text(self.run_dir / "summary.md", summary_markdown(summary))
            if self.config["training"]["plots"]:
                from .report import learning_curves, parity_plots
                try:
                    learning_curves(self.run_dir / "metrics.csv",
                                    self.run_dir / "learning_curves.png")
                    parity_plots(pairs, self.run_dir)
                except Exception as error:  # noqa: BLE001 - plots never fail a finished run
                    print(f"warning: plots not written ({type(error).__name__}: {error})")
        return summary

    def _gather_pairs(self, pairs: dict) -> dict:
        merged = {}
        for name, parts in pairs.items():
            merged[name] = {key: (torch.cat(v).numpy() if v else np.zeros((0, 2)))
                            for key, v in parts.items()}
        if self.parallel.size == 1:
            return merged
        import torch.distributed as dist
        gathered = [None] * self.parallel.size
        dist.all_gather_object(gathered, merged)
        return {name: {key: np.concatenate([g[name][key] for g in gathered])
                       for key in merged[name]} for name in merged}


def summary_markdown(summary: dict) -> str:
    lines = [f"# pygfm-train summary: {summary['run_dir']}", "",
             f"{summary['steps']} steps ({summary['stopped']}), best validation objective "
             f"{summary['best_objective']:.4g} at step {summary['best_step']}; precision "
             f"{summary['precision']}, {summary['ranks']} rank(s) on {summary['device']}, "
             f"{summary['train_seconds']:.0f} s.", "",
             f"Validation errors of {summary.get('evaluated', 'best.pt')} against the trivial "
             "baseline (per-element reference energies fitted on the training set, zero "
             "forces):", "",
             "| head | val structures | energy MAE (meV/atom) | baseline | force MAE (meV/Å) "
             "| baseline |", "| --- | ---: | ---: | ---: | ---: | ---: |"]

    def milli(value):
        return "n/a" if value is None or math.isnan(value) else f"{1000 * value:.1f}"

    for name, head in summary["heads"].items():
        marker = " (new)" if head.get("new_head") and summary.get("finetuned") else ""
        lines.append(f"| {name}{marker} | {head['validation_structures']} | "
                     f"{milli(head['energy_mae'])} | {milli(head['baseline_energy_mae'])} | "
                     f"{milli(head['forces_mae'])} | {milli(head['baseline_forces_mae'])} |")
    if "scratch" in summary:
        lines += ["", "Fine-tuned against the same model trained from scratch with the same "
                  "budget:", "", "| head | fine-tuned E MAE (meV/atom) | scratch | fine-tuned "
                  "F MAE (meV/Å) | scratch |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, head in summary["heads"].items():
            other = summary["scratch"]["heads"].get(name)
            if other is None:
                continue
            lines.append(f"| {name} | {milli(head['energy_mae'])} | "
                         f"{milli(other['energy_mae'])} | {milli(head['forces_mae'])} | "
                         f"{milli(other['forces_mae'])} |")
    return "\n".join(lines) + "\n"


def train(config: dict, run_dir, *, resume: bool = False, progress: bool = True,
          parallel: Parallel | None = None) -> dict:
    """Train as ``config`` says into ``run_dir``; returns the summary (on every
    rank). Fine-tuning with ``finetune.compare_scratch`` also trains the same
    model from scratch into ``run_dir/scratch`` and adds it to the summary."""
    run_dir = Path(run_dir)
    trainer = Trainer(config, run_dir, resume=resume, progress=progress, parallel=parallel)
    summary = trainer.fit()
    finetune = config["finetune"]
    if finetune["init_from"] is not None:
        summary["finetuned"] = True
        if finetune["compare_scratch"]:
            scratch_config = copy.deepcopy(trainer.config)
            scratch_config["finetune"] = {**finetune, "init_from": None,
                                          "compare_scratch": False}
            scratch_dir = run_dir / "scratch"
            if trainer.parallel.is_main:
                print(f"training the same model from scratch into {scratch_dir}", flush=True)
            scratch = Trainer(scratch_config, scratch_dir,
                              resume=resume and (scratch_dir / "last.pt").exists(),
                              progress=progress, parallel=trainer.parallel).fit()
            summary["scratch"] = scratch
    summary["complete"] = True  # pygfm-train --resume skips a stage only when set
    if trainer.parallel.is_main:
        write_json_atomic(run_dir / "summary.json", summary)
        atomic_write_text(run_dir / "summary.md", summary_markdown(summary))
    return summary
