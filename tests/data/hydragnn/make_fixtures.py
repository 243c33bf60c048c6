#!/usr/bin/env python3
"""Make the HydraGNN PAINN reference fixtures under tests/data/hydragnn/ (pygfm issue #17).

This script imports HydraGNN (never pygfm). It builds PAINN models with HydraGNN's own
``create_model_config`` from config dicts completed by HydraGNN's own ``update_config``,
sets their weights from a fixed seed, writes log directories with HydraGNN's own
``save_config`` / ``save_model`` (plain, DDP-wrapped, task-parallel ``_branch<k>.pk``,
pre-PR-#511 code for the "old" checkpoint), reloads every log directory with HydraGNN's
own strict loader ``load_existing_model``, builds graphs (HydraGNN's ``RadiusGraphPBC`` for
periodic cells, a plain-torch stand-in for PyG's ``RadiusGraph`` on molecules), runs
HydraGNN's forward and writes inputs and per-branch energies / autograd forces to
``<fixture>.npz`` next to each ``<fixture>/`` log directory. See README.md here for the
exact environment and command.

Usage (see README.md for the environment):
    /tmp/hydra-venv/bin/python tests/data/hydragnn/make_fixtures.py \
        --hydragnn-src /tmp/hydragnn-src --hydragnn-old-src /tmp/hydragnn-src-old
"""

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# Fixtures made by this script (name -> builder function name).
ALL = [
    "painn_plain",
    "painn_plain_fp32",
    "painn_plain_ddp",
    "painn_old_bias",
    "painn_multibranch_concat",
    "painn_film",
    "painn_fusepool",
    "painn_nodehead",
    "painn_taskparallel",
    "painn_sc26",
]


# --------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------


def _setup_path(src):
    sys.path.insert(0, src)
    sys.path.insert(0, os.path.join(src, "examples", "multidataset_hpo_sc26"))
    _torch_scatter_standin()


def _torch_scatter_standin():
    """HydraGNN imports torch_scatter at module level (models/Base.py:23, models/create.py:17,
    preprocess/graph_samples_checks_and_updates.py:13). It has no wheel for torch 2.13 on
    PyPI; the PAINN path only needs scatter/scatter_add, mapped here onto
    torch_geometric.utils.scatter. Used only when torch_scatter is not importable."""
    try:
        import torch_scatter  # noqa: F401

        return
    except ImportError:
        pass
    import types
    from torch_geometric.utils import scatter as pyg_scatter

    def scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
        res = pyg_scatter(src, index, dim=dim, dim_size=dim_size,
                          reduce="sum" if reduce == "add" else reduce)
        if out is not None:
            out.copy_(res)
            return out
        return res

    mod = types.ModuleType("torch_scatter")
    mod.__version__ = "0.0-standin"
    mod.scatter = scatter
    mod.scatter_add = lambda src, index, dim=-1, out=None, dim_size=None: scatter(src, index, dim, out, dim_size, "sum")
    mod.scatter_sum = mod.scatter_add
    mod.scatter_mean = lambda src, index, dim=-1, out=None, dim_size=None: scatter(src, index, dim, out, dim_size, "mean")
    sys.modules["torch_scatter"] = mod


def _init_dist():
    """HydraGNN's save_model ends with dist.barrier(): one gloo rank, file rendezvous."""
    import torch.distributed as dist

    if not dist.is_initialized():
        fd, path = tempfile.mkstemp(prefix="hydra_fixture_pg_")
        os.close(fd)
        os.remove(path)
        dist.init_process_group(
            "gloo", init_method="file://" + path, rank=0, world_size=1
        )
        import atexit

        atexit.register(lambda: os.path.exists(path) and os.remove(path))


# --------------------------------------------------------------------------------------
# structures
# --------------------------------------------------------------------------------------


def make_structures(kind):
    """ASE Atoms used as inputs. Deterministic (numpy default_rng seeds)."""
    import ase
    from ase.build import bulk, fcc111, molecule

    out = []
    rng = np.random.default_rng(1234)

    def rattle(atoms, std):
        atoms = atoms.copy()
        atoms.positions = atoms.positions + rng.normal(0.0, std, atoms.positions.shape)
        return atoms

    # molecules
    for name in ["H2O", "CH4", "CH3CH2OH"]:
        a = rattle(molecule(name), 0.05)
        a.pbc = False
        out.append((name, a))
    # an isolated atom (no edge within the radius): its vector features stay 0, so the
    # |V| in the update has a zero argument (torch's norm gives a 0 gradient there)
    a = rattle(molecule("NH3"), 0.05) + ase.Atoms("Ar", positions=[[8.0, 0.5, -0.3]])
    a.pbc = False
    out.append(("NH3_plus_isolated_Ar", a))
    # periodic cells
    si = rattle(bulk("Si", "diamond", a=5.43), 0.05)  # 2 atoms, fcc (non-orthogonal) cell
    out.append(("Si_primitive", si))
    nacl = rattle(bulk("NaCl", "rocksalt", a=5.64, cubic=True), 0.05)  # 8 atoms
    # one atom moved by a lattice vector: positions are not wrapped into the cell
    nacl.positions[0] += nacl.cell[0]
    out.append(("NaCl_cubic_unwrapped", nacl))
    if kind == "with_slab":
        slab = fcc111("Cu", size=(2, 2, 2), vacuum=6.0, a=3.61)
        slab = rattle(slab, 0.05)
        slab.pbc = [True, True, False]
        out.append(("Cu111_slab_pbc_TTF", slab))
    return out


def graph_attr_for(name):
    """(charge, spin) per structure for the conditioned models; small integers."""
    table = {
        "H2O": (0.0, 1.0),
        "CH4": (1.0, 2.0),
        "CH3CH2OH": (-1.0, 2.0),
        "NH3_plus_isolated_Ar": (1.0, 1.0),
        "Si_primitive": (0.0, 1.0),
        "NaCl_cubic_unwrapped": (2.0, 3.0),
        "Cu111_slab_pbc_TTF": (0.0, 1.0),
    }
    return table.get(name, (0.0, 0.0))


def radius_graph_standin(pos, r, max_num_neighbors):
    """Plain-torch stand-in for torch_geometric.transforms.RadiusGraph(loop=False).

    PyG 2.8's radius_graph needs torch_cluster or pyg-lib (not on PyPI). Same convention:
    edge_index = [neighbour j, centre i] (flow source_to_target), no self loops, pairs with
    d < r (strict; edges at d >= r contribute exactly 0 in PAINN anyway), at most
    max_num_neighbors per centre. When the cap binds this keeps the lowest-index neighbours
    (PyG keeps whatever its backend finds first): the fixtures store the edge list used.
    Edges are ordered by centre, then by neighbour index.
    """
    import torch

    n = pos.shape[0]
    with torch.no_grad():
        d = torch.cdist(pos, pos)
    rows, cols = [], []
    for i in range(n):
        nb = [j for j in range(n) if j != i and float(d[i, j]) < r]
        nb = nb[:max_num_neighbors]
        rows += nb
        cols += [i] * len(nb)
    return torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1)


def atoms_to_data(name, atoms, radius, max_neighbours, dtype, graph_attr=None):
    """torch_geometric Data as HydraGNN's SC26 scripts build it (x = Z as float [N,1])."""
    import torch
    from torch_geometric.data import Data
    from hydragnn.preprocess.graph_samples_checks_and_updates import RadiusGraphPBC

    z = np.asarray(atoms.get_atomic_numbers(), dtype=np.int64)
    hist, _ = np.histogram(z, bins=range(1, 118 + 2))
    if graph_attr is None:
        graph_attr = graph_attr_for(name)
    data = Data(
        x=torch.tensor(z, dtype=dtype).unsqueeze(1),
        atomic_numbers=torch.tensor(z, dtype=torch.long),
        pos=torch.tensor(atoms.positions, dtype=dtype),
        chemical_composition=torch.tensor(hist, dtype=torch.float32).unsqueeze(1),
        graph_attr=torch.tensor(list(graph_attr), dtype=torch.float32),
        natoms=torch.tensor([len(z)], dtype=torch.long),
    )
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any():
        data.cell = torch.tensor(np.asarray(atoms.cell.array), dtype=dtype)
        data.pbc = torch.tensor(pbc, dtype=torch.bool)
        data = RadiusGraphPBC(r=radius, loop=False, max_num_neighbors=max_neighbours)(
            data
        )
    else:
        data.edge_index = radius_graph_standin(data.pos, radius, max_neighbours)
        data.edge_shifts = torch.zeros((data.edge_index.shape[1], 3), dtype=dtype)
        data.cell = torch.zeros((3, 3), dtype=dtype)
        data.pbc = torch.zeros(3, dtype=torch.bool)
    return data


# --------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------


def make_config(
    hidden_dim=16,
    num_conv_layers=2,
    num_radial=6,
    radius=5.0,
    max_neighbours=100,
    num_branches=1,
    shared=(2, 8),
    head=(2, [8, 8]),
    activation="relu",
    pooling="add",
    conditioning=None,
    precision="fp64",
    node_head=False,
    interatomic=True,
):
    """A training-style HydraGNN config (the input to update_config)."""
    if node_head:
        output_heads = {
            "node": [
                {
                    "type": f"branch-{k}",
                    "architecture": {
                        "type": "mlp",
                        "num_headlayers": 2,
                        "dim_headlayers": [8, 8],
                    },
                }
                for k in range(num_branches)
            ]
        }
        out_type = ["node"]
    else:
        output_heads = {
            "graph": [
                {
                    "type": f"branch-{k}",
                    "architecture": {
                        "num_sharedlayers": shared[0],
                        "dim_sharedlayers": shared[1],
                        "num_headlayers": head[0],
                        "dim_headlayers": list(head[1]),
                    },
                }
                for k in range(num_branches)
            ]
        }
        out_type = ["graph"]
    arch = {
        "mpnn_type": "PAINN",
        "enable_interatomic_potential": interatomic,
        "radius": radius,
        "max_neighbours": max_neighbours,
        "num_radial": num_radial,
        "hidden_dim": hidden_dim,
        "num_conv_layers": num_conv_layers,
        "pe_dim": 1,
        "global_attn_heads": 0,
        "global_attn_engine": "",
        "global_attn_type": "",
        "graph_pooling": pooling,
        "activation_function": activation,
        "output_heads": output_heads,
        "task_weights": [1.0],
        "energy_weight": 1.0,
        "energy_peratom_weight": 1.0,
        "force_weight": 10.0,
    }
    if conditioning is not None:
        arch["use_graph_attr_conditioning"] = True
        arch["graph_attr_conditioning_mode"] = conditioning
    config = {
        "Verbosity": {"level": 0},
        "NeuralNetwork": {
            "Architecture": arch,
            "Variables_of_interest": {
                "input_node_features": [0],
                "output_index": [0],
                "type": out_type,
                "output_dim": [1],
                "output_names": ["graph_energy" if not node_head else "node_energy"],
                "graph_feature_names": ["energy"],
                "graph_feature_dims": [1],
                "node_feature_names": [
                    "atomic_number",
                    "cartesian_coordinates",
                    "forces",
                ],
                "node_feature_dims": [1, 3, 3],
                "denormalize_output": False,
            },
            "Training": {
                "num_epoch": 1,
                "perc_train": 0.9,
                "loss_function_type": "mae",
                "batch_size": 4,
                "continue": 0,
                "startfrom": "",
                "Optimizer": {"type": "AdamW", "learning_rate": 0.001},
                "conv_checkpointing": False,
                "precision": precision,
            },
        },
    }
    return config


def complete_config(config, sample):
    """Run HydraGNN's own update_config on a one-sample 'dataset' (fills input_dim, ...)."""
    from torch_geometric.loader import DataLoader
    from hydragnn.utils.input_config_parsing.config_utils import update_config

    os.environ["HYDRAGNN_USE_VARIABLE_GRAPH_SIZE"] = "1"
    loader = DataLoader([sample], batch_size=1)
    return update_config(copy.deepcopy(config), loader, loader, loader)


# --------------------------------------------------------------------------------------
# model construction / weights / saving / loading
# --------------------------------------------------------------------------------------


def _param_dtype(config):
    from hydragnn.train.train_validate_test import resolve_precision

    return resolve_precision(config["NeuralNetwork"]["Training"]["precision"])[1]


def build_model(config, seed, graph_attr_dim=2):
    """HydraGNN's create_model_config, lazily created conditioning modules created now
    (as HydraGNN's first forward / load_existing_model would), then seeded weights."""
    import torch
    from hydragnn.models.create import create_model_config

    dtype = _param_dtype(config)
    torch.set_default_dtype(dtype)
    model = create_model_config(config=config["NeuralNetwork"], verbosity=0)
    base = model.model if hasattr(model, "energy_force_loss") else model
    arch = config["NeuralNetwork"]["Architecture"]
    if arch.get("use_graph_attr_conditioning", False):
        mode = arch.get("graph_attr_conditioning_mode", "concat_node")
        h = arch["hidden_dim"]
        if mode == "concat_node":
            base._ensure_graph_concat_projector(graph_attr_dim, h, base.device, dtype)
        elif mode == "film":
            base._ensure_graph_conditioner(graph_attr_dim, base.device)
        elif mode == "fuse_pool":
            base._ensure_graph_pool_projector(graph_attr_dim, h, base.device, dtype)
    model = model.to(dtype)
    set_weights(model, seed)
    return model


def set_weights(model, seed):
    """Deterministic, non-trivial weights from a seeded generator, in named_parameters()
    order: every matrix W [out, in] ~ U(-2, 2) / sqrt(in) (twice torch's default bound, so
    that energies and forces depend visibly on the geometry), every 1-D parameter (biases)
    ~ U(-1, 1) / sqrt(len) + U(-0.2, 0.2) (no bias near 0)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                bound = 2.0 / np.sqrt(p.shape[1])
                p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1) * bound)
            else:
                fan_in = p.numel()
                bound = 1.0 / np.sqrt(max(fan_in, 1))
                v = (torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1) * bound
                v = v + (torch.rand(p.shape, generator=g, dtype=torch.float64) * 0.4 - 0.2)
                p.copy_(v)


def save_logdir(model, config, name, ddp=False):
    """HydraGNN's own save_config + save_model into tests/data/hydragnn/<name>/."""
    import torch
    from hydragnn.utils.input_config_parsing.config_utils import save_config
    from hydragnn.utils.model.model import save_model
    from hydragnn.utils.distributed import get_distributed_model

    logdir = os.path.join(HERE, name)
    if os.path.isdir(logdir):
        shutil.rmtree(logdir)
    os.makedirs(logdir)
    save_config(config, name, path=HERE + os.sep)
    m = get_distributed_model(model, 0) if ddp else model
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    save_model(m, opt, name, path=HERE + os.sep)
    return logdir


def load_logdir(name, ddp=False):
    """Rebuild from <name>/config.json and load <name>/<name>.pk with HydraGNN's own strict
    load_existing_model (which also pre-creates graph-conditioning modules from the file)."""
    import torch
    from hydragnn.models.create import create_model_config
    from hydragnn.utils.model.model import load_existing_model
    from hydragnn.utils.distributed import get_distributed_model

    with open(os.path.join(HERE, name, "config.json")) as f:
        config = json.load(f)
    dtype = _param_dtype(config)
    torch.set_default_dtype(dtype)
    model = create_model_config(config=config["NeuralNetwork"], verbosity=0)
    torch.set_default_dtype(dtype)
    m = get_distributed_model(model, 0) if ddp else model
    load_existing_model(m, name, path=HERE + os.sep)
    # after a strict load, every float tensor must have the model dtype
    model = m.module if ddp else m
    model = model.to(dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, config


# --------------------------------------------------------------------------------------
# forward / outputs
# --------------------------------------------------------------------------------------


def run_branches(model, datas, num_branches, dtype, node_head=False):
    """HydraGNN's forward on one Batch of all structures, once per branch
    (data.dataset_name := k for every graph); forces = -d(sum E)/d pos."""
    import torch
    from torch_geometric.data import Batch
    from hydragnn.train.train_validate_test import move_batch_to_device

    energies, forces, node_out = [], [], []
    for k in range(num_branches):
        batch = Batch.from_data_list([d.clone() for d in datas])
        batch = move_batch_to_device(batch, dtype)
        batch.dataset_name = torch.full((batch.num_graphs, 1), k, dtype=torch.long)
        batch.pos.requires_grad_(True)
        with torch.enable_grad():
            out = model(batch)
            y = out[0]
            if node_head:
                # enable_interatomic_potential with a node head: graph energy is the
                # per-graph sum of node outputs (hydragnn/models/create.py:732-738)
                from torch_geometric.utils import scatter

                e = scatter(y, batch.batch, dim=0, reduce="sum").squeeze(-1)
                node_out.append(y.detach().squeeze(-1).numpy())
            else:
                e = y.squeeze(-1)
            f = -torch.autograd.grad(e.sum(), batch.pos)[0]
        energies.append(e.detach().numpy())
        forces.append(f.detach().numpy())
    res = {"energy": np.stack(energies, axis=1), "forces": np.stack(forces, axis=0)}
    if node_head:
        res["node_energy"] = np.stack(node_out, axis=0)
    return res


def check_single_vs_batch(model, datas, num_branches, dtype, ref, node_head=False):
    """Self-check: each structure alone gives the batched numbers."""
    off = 0
    worst = 0.0
    for i, d in enumerate(datas):
        r = run_branches(model, [d], num_branches, dtype, node_head)
        n = d.num_nodes
        e_ref = ref["energy"][i]
        f_ref = ref["forces"][:, off : off + n]
        worst = max(
            worst,
            float(np.max(np.abs(r["energy"][0] - e_ref) / (np.abs(e_ref) + 1e-30))),
            float(np.max(np.abs(r["forces"] - f_ref)) / (np.max(np.abs(f_ref)) + 1e-30)),
        )
        off += n
    return worst


def _fmax(ref, datas):
    out, off = [], 0
    for d in datas:
        n = d.num_nodes
        out.append(float(np.abs(ref["forces"][:, off : off + n]).max()))
        off += n
    return out


def pack_inputs(names, datas, atoms_list):
    numbers, positions, natoms, cells, pbcs, gattr = [], [], [], [], [], []
    eidx, nedges, shifts = [], [], []
    comp = []
    for a, d in zip(atoms_list, datas):
        numbers.append(np.asarray(a.get_atomic_numbers(), dtype=np.int64))
        positions.append(d.pos.detach().numpy().astype(np.float64))
        natoms.append(d.num_nodes)
        cells.append(np.asarray(a.cell.array, dtype=np.float64))
        pbcs.append(np.asarray(a.pbc, dtype=bool))
        gattr.append(d.graph_attr.numpy().astype(np.float64))
        eidx.append(d.edge_index.numpy().astype(np.int64))
        nedges.append(d.edge_index.shape[1])
        shifts.append(d.edge_shifts.detach().numpy().astype(np.float64))
        comp.append(d.chemical_composition.numpy().reshape(-1).astype(np.float64))
    return {
        "names": np.array(names),
        "natoms": np.array(natoms, dtype=np.int64),
        "numbers": np.concatenate(numbers),
        "positions": np.concatenate(positions),
        "cells": np.stack(cells),
        "pbc": np.stack(pbcs),
        "graph_attr": np.stack(gattr),
        "nedges": np.array(nedges, dtype=np.int64),
        "edge_index": np.concatenate(eidx, axis=1),
        "edge_shifts": np.concatenate(shifts),
        "chemical_composition": np.stack(comp),
    }


def write_npz(name, inputs, outputs, meta):
    path = os.path.join(HERE, name + ".npz")
    arrays = dict(inputs)
    arrays.update(outputs)
    arrays["meta_json"] = np.array(json.dumps(meta, sort_keys=True))
    np.savez_compressed(path, **arrays)
    return path


def hydragnn_commit(src):
    try:
        return subprocess.check_output(
            ["git", "-C", src, "rev-parse", "HEAD"], stderr=subprocess.DEVNULL
        ).decode().strip()
    except Exception:
        p = os.path.join(src, "HYDRAGNN_COMMIT")
        return open(p).read().strip() if os.path.exists(p) else "unknown"


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


def pick_seed(config, datas, num_branches, dtype, seed0, node_head=False, tries=50):
    """First seed in seed0, seed0+1000, ... for which every (structure, branch) has a
    force component above 1e-2 in magnitude (no dead-ReLU structure in the fixture)."""
    for t in range(tries):
        seed = seed0 + 1000 * t
        model = build_model(config, seed)
        r = run_branches(model, datas, num_branches, dtype, node_head)
        ok = np.all(np.isfinite(r["forces"]))
        off = 0
        for d in datas:
            n = d.num_nodes
            fk = np.abs(r["forces"][:, off : off + n]).reshape(num_branches, -1).max(axis=1)
            ok = ok and bool(np.all(fk > 1e-2))
            off += n
        if ok:
            return seed
    raise RuntimeError("no seed found")


def _common(name, config, seed, structures, ddp=False, num_branches=1, node_head=False,
            extra_meta=None, src=None):
    import torch

    dtype = _param_dtype(config)
    torch.set_default_dtype(dtype)
    names = [s[0] for s in structures]
    atoms_list = [s[1] for s in structures]
    arch = config["NeuralNetwork"]["Architecture"]
    datas = [
        atoms_to_data(n, a, arch["radius"], arch["max_neighbours"], dtype)
        for n, a in structures
    ]
    config = complete_config(config, datas[0])
    seed = pick_seed(config, datas, num_branches, dtype, seed, node_head)
    model = build_model(config, seed)
    save_logdir(model, config, name, ddp=ddp)
    loaded, config2 = load_logdir(name, ddp=ddp)
    ref = run_branches(loaded, datas, num_branches, dtype, node_head)
    worst = check_single_vs_batch(loaded, datas, num_branches, dtype, ref, node_head)
    inputs = pack_inputs(names, datas, atoms_list)
    meta = {
        "fixture": name,
        "hydragnn_commit": hydragnn_commit(src),
        "dtype": str(dtype).replace("torch.", ""),
        "seed": seed,
        "num_branches": num_branches,
        "ddp_saved": ddp,
        "edges": "molecules: plain-torch RadiusGraph stand-in; periodic: HydraGNN RadiusGraphPBC (vesin)",
        "self_check_single_vs_batch_max_rel": worst,
        "max_abs_force_per_structure": _fmax(ref, datas),
    }
    if extra_meta:
        meta.update(extra_meta)
    write_npz(name, inputs, ref, meta)
    return loaded, datas, ref, meta


def fx_painn_plain(src, name="painn_plain", precision="fp64", ddp=False):
    config = make_config(precision=precision)
    return _common(name, config, 11, make_structures("with_slab"), ddp=ddp, src=src)


def fx_painn_plain_fp32(src):
    return fx_painn_plain(src, name="painn_plain_fp32", precision="fp32")


def fx_painn_plain_ddp(src):
    return fx_painn_plain(src, name="painn_plain_ddp", ddp=True)


def fx_painn_old_bias(src):
    # run by the pre-#511 HydraGNN source tree (see main())
    config = make_config()
    return _common("painn_old_bias", config, 11, make_structures("with_slab"), src=src,
                   extra_meta={"note": "made by HydraGNN before e9ff3391 (PR #511): update_U, update_V, vec_embed_out have biases"})


def fx_painn_multibranch_concat(src):
    config = make_config(num_conv_layers=3, num_branches=3, conditioning="concat_node",
                         activation="silu", head=(2, [8, 6]))
    return _common("painn_multibranch_concat", config, 22, make_structures("plain"),
                   num_branches=3, src=src)


def fx_painn_film(src):
    config = make_config(hidden_dim=8, num_branches=2, conditioning="film", head=(1, [8]))
    return _common("painn_film", config, 33, make_structures("plain"), num_branches=2, src=src)


def fx_painn_fusepool(src):
    config = make_config(hidden_dim=8, num_branches=2, conditioning="fuse_pool", pooling="mean",
                         head=(1, [8]))
    return _common("painn_fusepool", config, 44, make_structures("plain"), num_branches=2, src=src)


def fx_painn_nodehead(src):
    config = make_config(hidden_dim=8, node_head=True)
    return _common("painn_nodehead", config, 55, make_structures("plain"), node_head=True, src=src)


def fx_painn_taskparallel(src):
    """3-branch model saved as HydraGNN's task-parallel MultiTaskModelMP does:
    <name>_branch<k>.pk each with the encoder and branch k's decoder (keys module.*).
    Reference = MultiTaskModelMP's own forward for branch k."""
    import torch
    import torch.distributed as dist
    from hydragnn.models import MultiTaskModelMP
    from hydragnn.utils.input_config_parsing.config_utils import save_config
    from hydragnn.utils.model.model import save_model, load_existing_model
    from hydragnn.models.create import create_model_config

    name = "painn_taskparallel"
    K = 3
    config = make_config(num_branches=K)
    dtype = _param_dtype(config)
    torch.set_default_dtype(dtype)
    structures = make_structures("plain")
    arch = config["NeuralNetwork"]["Architecture"]
    datas = [atoms_to_data(n, a, arch["radius"], arch["max_neighbours"], dtype) for n, a in structures]
    config = complete_config(config, datas[0])
    seed = pick_seed(config, datas, K, dtype, 66)
    base = build_model(config, seed)
    logdir = os.path.join(HERE, name)
    if os.path.isdir(logdir):
        shutil.rmtree(logdir)
    os.makedirs(logdir)
    save_config(config, name, path=HERE + os.sep)
    head_pg = dist.new_group([0])
    for k in range(K):
        mt = MultiTaskModelMP(copy.deepcopy(base), k, head_pg)
        opt = torch.optim.AdamW(mt.parameters(), lr=1e-3)
        save_model(mt, opt, name, path=HERE + os.sep)
    # reload each branch file with HydraGNN's loader into a fresh MultiTaskModelMP
    energies, forces = [], []
    for k in range(K):
        torch.set_default_dtype(dtype)
        fresh = create_model_config(config=config["NeuralNetwork"], verbosity=0).to(dtype)
        mt = MultiTaskModelMP(fresh, k, head_pg)
        load_existing_model(mt, name, path=HERE + os.sep)
        mt.eval()
        for p in mt.parameters():
            p.requires_grad_(False)
        r = run_branches_single(mt, datas, k, dtype)
        energies.append(r[0])
        forces.append(r[1])
    ref = {"energy": np.stack(energies, axis=1), "forces": np.stack(forces, axis=0)}
    # cross-check against the full (non-task-parallel) model with the same weights
    base.eval()
    full = run_branches(base, datas, K, dtype)
    dev = float(np.max(np.abs(full["energy"] - ref["energy"])))
    meta = {
        "fixture": name, "hydragnn_commit": hydragnn_commit(src), "dtype": "float64", "seed": seed,
        "num_branches": K, "task_parallel_files": [f"{name}_branch{k}.pk" for k in range(K)],
        "full_model_vs_task_parallel_max_abs_energy_diff": dev,
        "max_abs_force_per_structure": _fmax(ref, datas),
    }
    write_npz(name, pack_inputs([s[0] for s in structures], datas, [s[1] for s in structures]), ref, meta)
    return meta


def run_branches_single(model, datas, k, dtype):
    import torch
    from torch_geometric.data import Batch
    from hydragnn.train.train_validate_test import move_batch_to_device

    batch = Batch.from_data_list([d.clone() for d in datas])
    batch = move_batch_to_device(batch, dtype)
    batch.dataset_name = torch.full((batch.num_graphs, 1), k, dtype=torch.long)
    batch.pos.requires_grad_(True)
    with torch.enable_grad():
        e = model(batch)[0].squeeze(-1)
        f = -torch.autograd.grad(e.sum(), batch.pos)[0]
    return e.detach().numpy(), f.detach().numpy()


def fx_painn_sc26(src):
    """SC26-style: multi-branch MLIP model with concat_node charge/spin conditioning and
    sum pooling, saved from a DDP-wrapped model (keys module.model.*), plus the
    branch-weighting MLP in mlp_weights/, built with HydraGNN's own BranchWeightMLP
    (branch_weighting_mlp.py) and evaluated with HydraGNN's own fused inference
    (inference_fused.run_fused_inference). Structures: SC26 random structures made by
    inference_random_structures.build_random_structure (cap binding) plus the molecules and
    periodic cells."""
    import torch
    from contextlib import nullcontext
    from branch_weighting_mlp import BranchWeightMLP
    from inference_random_structures import build_random_structure
    from inference_fused import load_mlp, run_fused_inference

    name = "painn_sc26"
    K = 4
    config = make_config(num_conv_layers=3, num_branches=K, conditioning="concat_node",
                         max_neighbours=12, shared=(2, 8), head=(3, [8, 8, 8]))
    dtype = _param_dtype(config)
    torch.set_default_dtype(dtype)
    arch = config["NeuralNetwork"]["Architecture"]
    structures = make_structures("plain")
    datas = [atoms_to_data(n, a, arch["radius"], arch["max_neighbours"], dtype) for n, a in structures]
    names = [s[0] for s in structures]
    atoms_list = [s[1] for s in structures]
    # SC26 random structures (HydraGNN's generator), edges with the stand-in (cap binds)
    import ase

    rng = np.random.default_rng(42)
    for i in range(3):
        d = build_random_structure(14, 20, 5.0, 94, rng)
        z = d.x[:, 0].numpy().astype(np.int64)
        a = ase.Atoms(numbers=z, positions=d.pos.numpy(), pbc=False)
        names.append(f"sc26_random_{i}")
        atoms_list.append(a)
        dd = atoms_to_data(f"sc26_random_{i}", a, arch["radius"], arch["max_neighbours"], dtype,
                           graph_attr=(0.0, 0.0))
        datas.append(dd)
    config = complete_config(config, datas[0])
    seed = pick_seed(config, datas, K, dtype, 77)
    model = build_model(config, seed)
    save_logdir(model, config, name, ddp=True)
    loaded, _ = load_logdir(name, ddp=True)
    ref = run_branches(loaded, datas, K, dtype)
    # branch-weighting MLP: HydraGNN's class, LazyLinear materialised on a composition batch
    torch.manual_seed(88)
    mlp = BranchWeightMLP(None, (16, 8), K)
    comp = torch.tensor(np.stack([d.chemical_composition.numpy().reshape(-1) for d in datas]),
                        dtype=dtype)
    mlp(comp)
    mlp = mlp.to(dtype)
    set_weights(mlp, 99)
    os.makedirs(os.path.join(HERE, name, "mlp_weights"), exist_ok=True)
    torch.save({"mlp_state_dict": mlp.state_dict()},
               os.path.join(HERE, name, "mlp_weights", "branch_weight_mlp.pt"))
    mlp2, _, _ = load_mlp(os.path.join(HERE, name), None, dtype, torch.device("cpu"))
    out = run_fused_inference(loaded, mlp2, [d.clone() for d in datas], len(datas), dtype,
                              nullcontext(), torch.device("cpu"), K, 0, torch.device("cpu"),
                              nullcontext(), unified_mlp_gnn_stack=True)
    all_e, all_f, all_n, all_w = out[0], out[1], out[2], out[3]
    ref["fused_energy"] = np.array([float(e) for e in all_e])
    ref["fused_forces"] = np.concatenate([f.numpy() for f in all_f])
    ref["branch_weights"] = np.stack([w.numpy() for w in all_w])
    # what HydraGNN's own SC26 loader (strict=False) makes of this log directory
    from inference_random_structures import load_config_and_model
    m3, _, _, _, _ = load_config_and_model(os.path.join(HERE, name), None, None)
    sd = torch.load(os.path.join(HERE, name, name + ".pk"), map_location="cpu")["model_state_dict"]
    r = m3.load_state_dict(sd, strict=False)
    meta = {
        "fixture": name, "hydragnn_commit": hydragnn_commit(src), "dtype": "float64",
        "seed": seed, "mlp_seed": 99, "num_branches": K, "ddp_saved": True,
        "edges": "molecules and sc26_random_*: plain-torch RadiusGraph stand-in (cap max_neighbours=12 binds on sc26_random_*: lowest-index neighbours kept); periodic: HydraGNN RadiusGraphPBC (vesin, nearest kept)",
        "sc26_loader_strict_false_missing_keys": len(r.missing_keys),
        "sc26_loader_strict_false_unexpected_keys": len(r.unexpected_keys),
        "sc26_loader_model_keys": len(m3.state_dict()),
        "max_abs_force_per_structure": _fmax(ref, datas),
    }
    write_npz(name, pack_inputs(names, datas, atoms_list), ref, meta)
    return meta


# --------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hydragnn-src", default="/tmp/hydragnn-src")
    ap.add_argument("--hydragnn-old-src", default="/tmp/hydragnn-src-old",
                    help="HydraGNN source before e9ff3391 (PR #511), for painn_old_bias")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    todo = args.only if args.only else ALL

    if "painn_old_bias" in todo and args.only != ["painn_old_bias"]:
        # the old checkpoint is made by the old code, in its own process
        subprocess.check_call([sys.executable, os.path.abspath(__file__),
                               "--hydragnn-src", args.hydragnn_old_src,
                               "--only", "painn_old_bias"])
        todo = [t for t in todo if t != "painn_old_bias"]

    _setup_path(args.hydragnn_src)
    import torch

    torch.set_num_threads(1)
    _init_dist()
    for t in todo:
        r = globals()["fx_" + t](args.hydragnn_src)
        meta = r[3] if isinstance(r, tuple) else r
        print(t, json.dumps(meta, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
