#!/usr/bin/env python3
"""Check that the written description of HydraGNN's PAINN (the spec for issue #17) reproduces
the fixtures in this folder, using only torch + numpy: no HydraGNN, no pygfm.

This is an executable form of the spec, written from the equations (not from HydraGNN's
code); it reads each fixture's config.json, checkpoint(s) and <fixture>.npz, recomputes the
per-branch energies and autograd forces on the stored edge lists, and prints the largest
relative deviations. It is not part of pygfm and not collected by pytest.

    python tests/data/hydragnn/spec_check.py          # any python with torch and numpy
"""

import glob
import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))

ACT = {
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
    "selu": torch.selu,
    "elu": torch.nn.functional.elu,
    "sigmoid": torch.sigmoid,
    "lrelu_01": lambda x: torch.nn.functional.leaky_relu(x, 0.1),
    "lrelu_025": lambda x: torch.nn.functional.leaky_relu(x, 0.25),
    "lrelu_05": lambda x: torch.nn.functional.leaky_relu(x, 0.5),
}


def strip_prefix(sd):
    """Drop leading 'module.' and 'model.' (DDP, EnhancedModelWrapper)."""
    out = {}
    for k, v in sd.items():
        while k.startswith("module.") or k.startswith("model."):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def load_state(logdir, name):
    files = sorted(glob.glob(os.path.join(logdir, f"{name}_branch*.pk")))
    if not files:
        files = [os.path.join(logdir, f"{name}.pk")]
    sd = {}
    for f in files:  # task-parallel files: the encoder repeats, the branches add up
        part = strip_prefix(torch.load(f, map_location="cpu", weights_only=False)["model_state_dict"])
        for k, v in part.items():
            if k in sd:
                assert torch.equal(sd[k], v), k
            sd[k] = v
    return sd


def lin(sd, p, x):
    w = sd[p + ".weight"]
    y = x @ w.t()
    b = sd.get(p + ".bias")
    return y if b is None else y + b  # a bias on [N,3,F] adds to every xyz component


def seq(sd, p, x, acts):
    """Linear layers p.0, p.2, ... with the given activations between them."""
    i = 0
    for k, a in enumerate(acts + [None]):
        x = lin(sd, f"{p}.{i}", x)
        if a is not None:
            x = a(x)
        i += 2
    return x


def n_linear(sd, p):
    n = 0
    while f"{p}.{2 * n}.weight" in sd:
        n += 1
    return n


def painn_forward(sd, cfg, numbers, pos, edge_index, shifts, batch, ngraphs, graph_attr, branch):
    arch = cfg["NeuralNetwork"]["Architecture"]
    act = ACT[arch.get("activation_function", "relu")]
    H, L, R, rc = arch["hidden_dim"], arch["num_conv_layers"], arch["num_radial"], arch["radius"]
    silu = torch.nn.functional.silu
    x = numbers.to(pos.dtype).unsqueeze(1)  # Z as a float, [N,1]
    s = x
    v = torch.zeros(x.shape[0], 3, x.shape[1], dtype=pos.dtype)
    a, b = edge_index[0], edge_index[1]
    r = pos[b] - pos[a] + shifts
    d = torch.linalg.norm(r, dim=-1, keepdim=True)
    u = r / (d + 1e-9)
    n = torch.arange(1, R + 1, dtype=pos.dtype)
    rbf = torch.sin(d * n * math.pi / rc) / d
    fcut = torch.where(d < rc, 0.5 * (torch.cos(math.pi * d / rc) + 1), torch.zeros_like(d))
    cond = arch.get("use_graph_attr_conditioning", False)
    mode = arch.get("graph_attr_conditioning_mode", "concat_node")
    ga = graph_attr.to(pos.dtype)
    for layer in range(L):
        p = f"graph_convs.{layer}"
        last = layer == L - 1
        F = s.shape[1]
        phi = seq(sd, p + ".module_0.scalar_message_mlp", s, [silu])
        W = lin(sd, p + ".module_0.filter_layer", rbf) * fcut
        f = W * phi[b]
        g_vv, g_ve, m_s = f[:, :F], f[:, F:2 * F], f[:, 2 * F:]
        m_v = v[b] * g_vv[:, None, :] + g_ve[:, None, :] * (u / d)[:, :, None]
        s = s.index_add(0, a, m_s)
        v = v.index_add(0, a, m_v)
        U = lin(sd, p + ".module_1.update_U", v)
        V = lin(sd, p + ".module_1.update_V", v)
        mlp = seq(sd, p + ".module_1.update_mlp", torch.cat([torch.linalg.norm(V, dim=1), s], 1), [silu])
        inner = (U * V).sum(1)
        if not last:
            a_vv, a_sv, a_ss = mlp[:, :F], mlp[:, F:2 * F], mlp[:, 2 * F:]
            v = v + a_vv[:, None, :] * U
        else:
            a_sv, a_ss = mlp[:, :F], mlp[:, F:]
        s = s + a_sv * inner + a_ss
        s = seq(sd, p + ".module_2", s, [torch.tanh])
        if not last:
            v = lin(sd, p + ".module_3", v)
        if cond and mode == "concat_node":
            s = lin(sd, "graph_concat_projector", torch.cat([s, ga[batch]], -1))
        elif cond and mode == "film":
            ss = seq(sd, "graph_conditioner", ga, [act])
            scale, shift = torch.tanh(ss[:, :H]), ss[:, H:]
            s = s * (1 + scale[batch]) + shift[batch]
        s = act(s)
    heads = arch["output_heads"]
    if "graph" in heads:
        pool = arch.get("graph_pooling", "mean")
        xg = torch.zeros(ngraphs, H, dtype=pos.dtype).index_add(0, batch, s)
        if pool == "mean":
            xg = xg / torch.bincount(batch, minlength=ngraphs).to(pos.dtype)[:, None]
        assert pool in ("add", "sum", "mean")
        if cond and mode == "fuse_pool":
            xg = seq(sd, "graph_pool_projector", torch.cat([xg, ga], -1), [act])
        k = branch if len(heads["graph"]) > 1 else 0
        ns = n_linear(sd, f"graph_shared.branch-{k}")
        h = act(seq(sd, f"graph_shared.branch-{k}", xg, [act] * (ns - 1)))
        nh = n_linear(sd, f"heads_NN.0.branch-{k}")
        e = seq(sd, f"heads_NN.0.branch-{k}", h, [act] * (nh - 1))[:, 0]
        return e, None
    k = branch if len(heads["node"]) > 1 else 0
    p = f"heads_NN.0.branch-{k}.mlp.0"
    nh = n_linear(sd, p)
    y = seq(sd, p, s, [act] * (nh - 1))[:, 0]
    return torch.zeros(ngraphs, dtype=pos.dtype).index_add(0, batch, y), y


def check(name):
    logdir = os.path.join(HERE, name)
    cfg = json.load(open(os.path.join(logdir, "config.json")))
    sd = load_state(logdir, name)
    z = np.load(os.path.join(HERE, name + ".npz"))
    meta = json.loads(str(z["meta_json"]))
    dtype = torch.float32 if meta["dtype"] == "float32" else torch.float64
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    natoms, nedges = z["natoms"], z["nedges"]
    batch = torch.from_numpy(np.repeat(np.arange(len(natoms)), natoms))
    offs = np.repeat(np.concatenate([[0], np.cumsum(natoms)[:-1]]), nedges)
    ei = torch.from_numpy(z["edge_index"] + offs[None, :])
    shifts = torch.from_numpy(z["edge_shifts"]).to(dtype)
    numbers = torch.from_numpy(z["numbers"])
    ga = torch.from_numpy(z["graph_attr"])
    K = meta["num_branches"]
    worst_e = worst_f = 0.0
    es, fs = [], []
    for k in range(K):
        pos = torch.from_numpy(z["positions"]).to(dtype).requires_grad_(True)
        e, _ = painn_forward(sd, cfg, numbers, pos, ei, shifts, batch, len(natoms), ga, k)
        f = -torch.autograd.grad(e.sum(), pos)[0]
        es.append(e.detach())
        fs.append(f)
        e_ref, f_ref = z["energy"][:, k], z["forces"][k]
        worst_e = max(worst_e, float(np.max(np.abs(e.detach().numpy() - e_ref) / np.abs(e_ref))))
        worst_f = max(worst_f, float(np.max(np.abs(f.numpy() - f_ref)) / np.max(np.abs(f_ref))))
    line = f"{name:26s} K={K} {meta['dtype']:8s} energy max rel {worst_e:.2e}  forces max rel {worst_f:.2e}"
    if "fused_energy" in z.files:
        mlp = torch.load(os.path.join(logdir, "mlp_weights", "branch_weight_mlp.pt"), weights_only=False)["mlp_state_dict"]
        comp = torch.from_numpy(z["chemical_composition"]).to(dtype)
        w = torch.softmax(seq(mlp, "net", comp, [torch.relu] * (n_linear(mlp, "net") - 1)), -1)
        E = (w * torch.stack(es, 1)).sum(1)
        Fw = torch.einsum("ab,bac->ac", w[batch], torch.stack(fs, 0))
        de = float(np.max(np.abs(E.numpy() - z["fused_energy"]) / np.abs(z["fused_energy"])))
        df = float(np.max(np.abs(Fw.numpy() - z["fused_forces"])) / np.max(np.abs(z["fused_forces"])))
        dw = float(np.max(np.abs(w.numpy() - z["branch_weights"])))
        line += f" | fused E {de:.2e} F {df:.2e} weights abs {dw:.2e}"
        worst_e, worst_f = max(worst_e, de), max(worst_f, df)
    print(line)
    return worst_e, worst_f, dtype


def main():
    torch.set_num_threads(1)
    names = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(HERE, "painn_*.npz")))
    bad = 0
    for name in names:
        e, f, dtype = check(name)
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        if not (e < tol and f < tol):
            bad += 1
            print("   ^ above tolerance", tol)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
