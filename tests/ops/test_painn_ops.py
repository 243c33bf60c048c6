"""The fused PaiNN ops: message, its edge/node backward halves, and the update.

* forward and backward kernels against the plain-torch specification in
  pygfm.ops.reference, evaluated in float64 from the same (cast) inputs, on
  random graphs (hypothesis) and on hand-made edge-case layouts;
* gradcheck / gradgradcheck of the public ops and of the raw backward ops, a
  third-order check, and "force training" (gradients of a force loss with
  respect to weights) against the same model written with the reference ops;
* torch.library.opcheck, torch.compile (fullgraph), determinism across thread
  counts, bad arguments, and (marked ``gpu``) CUDA against the CPU.

Every PaiNN output is a polynomial whose monomials all have coefficient +1
(a sum of products of one entry of each input), so the same op evaluated on
the absolute values of its inputs gives the sum of |terms| of each output: the
scale of the accumulation error, also where the terms cancel.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck
from torch.library import opcheck

from conftest import DTYPES, HAS_CUDA, generator, random_src
from pygfm import ops
from pygfm.ops import reference

_ops = torch.ops.pygfm


def gpu(test):
    """Mark a test ``gpu`` (skipped by conftest without a GPU) and skip it without CUDA."""
    skip = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA or ROCm GPU")
    return pytest.mark.gpu(skip(test))


F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
#: Feature counts: below, at and above the CPU's 16-wide tile, and two tiles + 1.
FEATURES = [1, 3, 16, 17, 33]
#: Geometry (direction) dtype of each feature dtype.
GEOMETRY = {F64: F64, F32: F32, BF16: F32}
MESSAGE_OPS = ["painn_message", "painn_message_backward_edge", "painn_message_backward_node"]
ALL_OPS = [*MESSAGE_OPS, "painn_update"]
DTYPE_IDS = {F64: "float64", F32: "float32", BF16: "bfloat16"}


# ----------------------------------------------------------------- cases
@dataclasses.dataclass
class Case:
    graph: ops.MessageGraph
    x: torch.Tensor          # [N, 3F]
    v: torch.Tensor          # [N, 3, F]
    filters: torch.Tensor    # [E, 3F]
    direction: torch.Tensor  # [E, 3], in GEOMETRY[dtype]
    grad_s: torch.Tensor     # [N, F]
    grad_v: torch.Tensor     # [N, 3, F]
    a: torch.Tensor          # [N, 3F]   (update)
    mix: torch.Tensor        # [N, 3, 2F] (update)

    @property
    def s(self) -> torch.Tensor:  # [N, F] (update)
        return self.grad_s

    def args(self, name: str) -> tuple:
        """Positional arguments of torch.ops.pygfm.<name>."""
        if name == "painn_update":
            return (self.s, self.v, self.a, self.mix)
        features = (self.x, self.v, self.filters, self.direction)
        if name != "painn_message":
            features = (self.grad_s, self.grad_v, *features)
        return (*features, *self.graph)

    def to(self, device) -> Case:
        return Case(ops.MessageGraph(*(t.to(device) for t in self.graph)),
                    *(getattr(self, f.name).to(device) for f in dataclasses.fields(self)[1:]))


def edge_index(receiver, sender) -> torch.Tensor:
    return torch.tensor([list(receiver), list(sender)], dtype=torch.long).reshape(2, -1)


def make_case(num_atoms: int, receiver, sender, F: int, dtype: torch.dtype, seed: int,
              device="cpu") -> Case:
    graph = ops.message_graph(edge_index(receiver, sender).to(device), num_atoms)
    gen = generator(seed)
    N, E = num_atoms, len(sender)

    def rnd(*shape):
        return random_src(shape, dtype, gen, device)

    raw = torch.randn(E, 3, generator=gen, dtype=F64)
    direction = raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return Case(graph, rnd(N, 3 * F), rnd(N, 3, F), rnd(E, 3 * F),
                direction.to(device, GEOMETRY[dtype]), rnd(N, F), rnd(N, 3, F), rnd(N, 3 * F),
                rnd(N, 3, 2 * F))


def exact(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", F64)


def reference_outputs(name: str, case: Case, absolute: bool = False):
    """The reference op in float64 on the case's (cast) inputs, or on their |values|."""
    args = []
    for arg in case.args(name):
        arg = arg.detach().cpu()
        if arg.dtype.is_floating_point:
            arg = arg.to(F64)
            arg = arg.abs() if absolute else arg
        args.append(arg)
    return getattr(reference, name)(*args)


def error_bound(dtype: torch.dtype, exact_value: torch.Tensor, terms: torch.Tensor):
    """Allowed |error| of an output of ``dtype`` given its exact value and sum of |terms|.

    float64: accumulation in float64; float32 (also the float32 direction
    gradient of bfloat16 features): accumulation in float32; bfloat16:
    accumulation in float32 plus one final rounding to bfloat16 (at most half an
    ulp = 2**-8 of the value's magnitude with 8 significant bits).
    """
    if dtype == F64:
        return 1e-12 * terms + 1e-300
    if dtype == F32:
        return 1e-5 * terms + 1e-300
    assert dtype == BF16
    return 2.0 ** -8 * exact_value.abs() + 2e-5 * terms + 1e-300


def assert_within(got: torch.Tensor, exact_value: torch.Tensor, terms: torch.Tensor,
                  what: str = "") -> float:
    """got within error_bound of exact; returns max(error / bound) (for reporting)."""
    assert got.shape == exact_value.shape, (what, got.shape, exact_value.shape)
    error = (exact(got) - exact_value).abs()
    bound = error_bound(got.dtype, exact_value, terms)
    bad = ~(error <= bound)  # NaN counts as bad
    if bad.any():
        where = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements of {got.dtype} out of bounds; "
            f"first at {where}: got {exact(got)[where].item()!r}, exact "
            f"{exact_value[where].item()!r}, sum |terms| {terms[where].item():.4g}, allowed "
            f"{bound[where].item():.3g}")
    return float((error / bound).max()) if error.numel() else 0.0


def output_dtypes(name: str, dtype: torch.dtype):
    return (dtype, GEOMETRY[dtype]) if name == "painn_message_backward_edge" else (dtype, dtype)


def output_shapes(name: str, case: Case):
    N, F = case.grad_s.shape
    E = case.filters.shape[0]
    return {
        "painn_message": [(N, F), (N, 3, F)],
        "painn_message_backward_edge": [(E, 3 * F), (E, 3)],
        "painn_message_backward_node": [(N, 3 * F), (N, 3, F)],
        "painn_update": [(N, F), (N, 3, F)],
    }[name]


def check_op(name: str, case: Case, outputs=None) -> None:
    """Run torch.ops.pygfm.<name> (unless outputs are given) and compare with the reference."""
    if outputs is None:
        outputs = getattr(_ops, name)(*case.args(name))
    dtype = case.x.dtype
    expected = reference_outputs(name, case)
    terms = reference_outputs(name, case, absolute=True)
    for k, (got, want, abs_terms, out_dtype, shape) in enumerate(
            zip(outputs, expected, terms, output_dtypes(name, dtype), output_shapes(name, case))):
        assert got.dtype == out_dtype, (name, k, got.dtype, out_dtype)
        assert got.device == case.x.device
        assert tuple(got.shape) == shape, (name, k, got.shape, shape)
        assert_within(got, want, abs_terms, f"{name} output {k}")


# ----------------------------------------------------------------- random graphs (hypothesis)
@st.composite
def graphs(draw, max_atoms=12, max_edges=60):
    """(N, receiver (sorted), sender): self-edges, repeated pairs, isolated atoms allowed."""
    N = draw(st.integers(0, max_atoms))
    if N == 0:
        return 0, [], []
    E = draw(st.integers(0, max_edges))
    atoms = st.integers(0, N - 1)
    receiver = sorted(draw(st.lists(atoms, min_size=E, max_size=E)))
    sender = draw(st.lists(atoms, min_size=E, max_size=E))
    return N, receiver, sender


CASE_ARGS = {"graph": graphs(), "F": st.sampled_from(FEATURES),
             "dtype": st.sampled_from(DTYPES), "seed": st.integers(0, 2**31 - 1)}


@pytest.mark.parametrize("name", ALL_OPS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**CASE_ARGS)
def test_random_graphs_match_reference(name, graph, F, dtype, seed):
    N, receiver, sender = graph
    case = make_case(N, receiver, sender, F, dtype, seed)
    check_op(name, case)


@settings(max_examples=30, deadline=None)
@given(**CASE_ARGS)
def test_public_message_matches_raw_op_and_casts_direction(graph, F, dtype, seed):
    N, receiver, sender = graph
    case = make_case(N, receiver, sender, F, dtype, seed)
    raw = _ops.painn_message(*case.args("painn_message"))
    # The front end casts a float64 (or bfloat16) direction to the geometry dtype itself.
    for given_direction in (case.direction.double(), case.direction):
        public = ops.painn_message(case.x, case.v, case.filters, given_direction, case.graph)
        for a, b in zip(public, raw):
            assert a.dtype == b.dtype and torch.equal(a, b)
    public_update = ops.painn_update(case.s, case.v, case.a, case.mix)
    for a, b in zip(public_update, _ops.painn_update(*case.args("painn_update"))):
        assert torch.equal(a, b)


@settings(max_examples=40, deadline=None)
@given(graph=graphs(max_atoms=20, max_edges=80))
def test_message_graph_structure(graph):
    N, receiver, sender = graph
    g = ops.message_graph(edge_index(receiver, sender), N)
    E = len(sender)
    assert g.num_atoms == N and g.num_edges == E
    for t in g:
        assert t.dtype == torch.long and t.dim() == 1
    assert g.receiver.tolist() == receiver and g.sender.tolist() == sender
    counts_in = torch.bincount(torch.tensor(receiver, dtype=torch.long), minlength=N)
    counts_out = torch.bincount(torch.tensor(sender, dtype=torch.long), minlength=N)
    assert g.row_ptr.tolist() == [0] + counts_in.cumsum(0).tolist()
    assert g.sender_ptr.tolist() == [0] + counts_out.cumsum(0).tolist()
    order = g.edge_of.tolist()
    assert sorted(order) == list(range(E))  # a permutation of the edges
    for j in range(N):  # sender j's edges, in edge order (a stable sort)
        mine = order[g.sender_ptr[j]:g.sender_ptr[j + 1]]
        assert mine == [e for e in range(E) if sender[e] == j]


# ----------------------------------------------------------------- edge-case layouts
def _hub(N, E, seed, side):
    gen = generator(seed)
    others = torch.randint(0, N, (E,), generator=gen).tolist()
    if side == "receiver":
        return N, [N // 2] * E, others
    return N, sorted(others), [N - 1] * E


LAYOUTS = {
    "no_atoms": (0, [], []),
    "one_atom_no_edges": (1, [], []),
    "one_atom_self_edges": (1, [0, 0, 0], [0, 0, 0]),
    "atoms_without_edges": (5, [], []),
    "isolated_atoms": (6, [1, 1, 4], [4, 1, 1]),
    "repeated_pair": (3, [2] * 5, [0] * 5),
    "hub_receiver": _hub(8, 60, 1, "receiver"),
    "hub_sender": _hub(8, 60, 2, "sender"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_layouts_match_reference(layout, dtype, device):
    N, receiver, sender = LAYOUTS[layout]
    for F in (1, 17):
        case = make_case(N, receiver, sender, F, dtype, seed=len(layout) + F, device=device)
        for name in ALL_OPS:
            check_op(name, case)


def test_zero_features_give_empty_results():
    case = make_case(4, [0, 1, 1, 3], [2, 2, 0, 3], 0, F64, seed=0)
    ds, dv = _ops.painn_message(*case.args("painn_message"))
    assert ds.shape == (4, 0) and dv.shape == (4, 3, 0)
    grad_w, grad_d = _ops.painn_message_backward_edge(*case.args("painn_message_backward_edge"))
    assert grad_w.shape == (4, 0) and torch.equal(grad_d, torch.zeros(4, 3, dtype=F64))
    grad_x, grad_v = _ops.painn_message_backward_node(*case.args("painn_message_backward_node"))
    assert grad_x.shape == (4, 0) and grad_v.shape == (4, 3, 0)


def test_non_contiguous_inputs_give_the_same_bits():
    case = make_case(6, [0, 0, 2, 3, 3, 5], [1, 5, 2, 0, 0, 4], 17, F64, seed=4)
    strided = Case(
        case.graph,
        torch.stack([case.x, -case.x], dim=2)[..., 0],                 # stride 2
        case.v.transpose(1, 2).contiguous().transpose(1, 2),
        case.filters.t().contiguous().t(),
        case.direction.t().contiguous().t(),
        case.grad_s.t().contiguous().t(),
        case.grad_v.transpose(0, 2).contiguous().transpose(0, 2),
        case.a.t().contiguous().t(),
        case.mix.transpose(1, 2).contiguous().transpose(1, 2),
    )
    assert not strided.x.is_contiguous() and not strided.direction.is_contiguous()
    for name in ALL_OPS:
        for a, b in zip(getattr(_ops, name)(*strided.args(name)),
                        getattr(_ops, name)(*case.args(name))):
            assert torch.equal(a, b), name


def test_large_edge_gradients_stay_correct_while_alive():
    """grad_filters [E, 3F] is big enough for the reused huge-page blocks; two live
    results must not share memory."""
    N, E, F = 200, 6000, 33  # 6000 * 99 * 8 bytes ~ 4.8 MB
    gen = generator(11)
    receiver = torch.randint(0, N, (E,), generator=gen).sort().values.tolist()
    sender = torch.randint(0, N, (E,), generator=gen).tolist()
    case = make_case(N, receiver, sender, F, F64, seed=12)
    first = _ops.painn_message_backward_edge(*case.args("painn_message_backward_edge"))
    keep = first[0].clone()
    case2 = dataclasses.replace(case, grad_s=case.grad_s * 2 + 1)
    second = _ops.painn_message_backward_edge(*case2.args("painn_message_backward_edge"))
    assert first[0].data_ptr() != second[0].data_ptr()
    assert torch.equal(first[0], keep)
    check_op("painn_message_backward_edge", case2, second)
    del first, second
    third = _ops.painn_message_backward_edge(*case.args("painn_message_backward_edge"))
    assert torch.equal(third[0], keep)


# ----------------------------------------------------------------- gradients (float64)
# 5 atoms: a self-edge (0 <- 0), a repeated pair (0 <- 2 twice), atom 2 receives
# nothing, atom 4 neither sends nor receives.
SMALL = (5, [0, 0, 0, 1, 1, 3], [0, 2, 2, 3, 0, 1])


def small_case(F=2, seed=0, dtype=F64, device="cpu") -> Case:
    return make_case(*SMALL, F, dtype, seed, device)


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("F", [2, 17])
def test_gradcheck_public_message(F):
    case = small_case(F)
    inputs = leaves(case.x, case.v, case.filters, case.direction)

    def fn(x, v, w, d):
        return ops.painn_message(x, v, w, d, case.graph)

    assert gradcheck(fn, inputs)
    if F == 2:
        assert gradgradcheck(fn, inputs)


@pytest.mark.parametrize("output", [0, 1], ids=["ds_only", "dv_only"])
def test_gradgradcheck_message_single_output(output):
    """Only one output used: the other's gradient reaches the backward as None."""
    case = small_case(seed=1)

    def fn(x, v, w, d):
        return ops.painn_message(x, v, w, d, case.graph)[output]

    inputs = leaves(case.x, case.v, case.filters, case.direction)
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


@pytest.mark.parametrize("name", MESSAGE_OPS[1:])
def test_gradcheck_raw_backward_ops(name):
    case = small_case(seed=2)
    op = getattr(_ops, name)

    def fn(*features):
        return op(*features, *case.graph)

    inputs = leaves(case.grad_s, case.grad_v, case.x, case.v, case.filters, case.direction)
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


@pytest.mark.parametrize("output", [0, 1])
@pytest.mark.parametrize("name", MESSAGE_OPS[1:])
def test_gradcheck_raw_backward_ops_single_output(name, output):
    case = small_case(seed=3)
    op = getattr(_ops, name)

    def fn(*features):
        return op(*features, *case.graph)[output]

    inputs = leaves(case.grad_s, case.grad_v, case.x, case.v, case.filters, case.direction)
    assert gradcheck(fn, inputs, fast_mode=True)
    assert gradgradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("fn", [ops.painn_update, _ops.painn_update], ids=["public", "raw"])
def test_gradcheck_update(fn):
    case = small_case(F=3, seed=4)
    inputs = leaves(case.s, case.v, case.a, case.mix)
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)
    for output in (0, 1):
        # (not fast_mode: its analytical and numerical passes disagree on which outputs
        # count when the backward returns a constant zero gradient, here for s or v)
        assert gradgradcheck(lambda *a, k=output: fn(*a)[k], inputs)


def nonlinear_energy(ds, dv):
    return torch.tanh(ds).sum() + torch.log1p((dv ** 2).sum(1)).sum() + (ds * dv[:, 2]).sum()


def test_third_order_gradgradcheck():
    """gradgradcheck of a function that returns first derivatives: third derivatives."""
    case = small_case(seed=5)

    def energy_gradient(x, v, w, d):
        ds, dv = ops.painn_message(x, v, w, d, case.graph)
        return torch.autograd.grad(nonlinear_energy(ds, dv), (x, v, w, d), create_graph=True)

    assert gradgradcheck(energy_gradient, leaves(case.x, case.v, case.filters, case.direction),
                         fast_mode=True)


@pytest.mark.parametrize("chain", ["d-x-w", "w-v-d", "x-x-v", "v-d-x", "d-d-w"])
def test_third_derivatives_match_reference(chain):
    """d^3 E / (da db dc) contracted with random vectors, pygfm vs the reference ops."""
    case = small_case(F=17, seed=6)
    names = "xvwd"
    gen = generator(len(chain))
    base = (case.x, case.v, case.filters, case.direction)
    probes = [torch.randn(t.shape, generator=gen, dtype=F64) for t in base]
    order = [names.index(c) for c in chain.split("-")]

    def third(message):
        inputs = leaves(*base)
        ds, dv = message(*inputs)
        value = nonlinear_energy(ds, dv)
        for step, k in enumerate(order):
            (grad,) = torch.autograd.grad(value, inputs[k], create_graph=step < 2)
            if step < 2:
                value = (grad * probes[k]).sum() + (grad ** 2).sum()
        return grad

    got = third(lambda x, v, w, d: ops.painn_message(x, v, w, d, case.graph))
    want = third(lambda x, v, w, d: reference.painn_message(x, v, w, d, *case.graph))
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * float(want.abs().max()))


# ----------------------------------------------------------------- force training
def painn_layer(message, update, positions, s0, v0, weights, graph):
    """A PaiNN interaction + update on geometry, as a model would use the ops."""
    W_x, W_f, W_a, W_mix = weights
    r = positions[graph.sender] - positions[graph.receiver]
    dist = r.norm(dim=1, keepdim=True)
    directions = r / dist
    centers = torch.linspace(0.5, 3.0, W_f.shape[0], dtype=positions.dtype,
                             device=positions.device)
    rbf = torch.exp(-((dist - centers) ** 2))
    cutoff = 0.5 * (torch.cos(torch.pi * dist / 5.0) + 1.0)
    filters = (rbf @ W_f) * cutoff
    x = torch.tanh(s0 @ W_x)
    ds, dv = message(x, v0, filters, directions, graph)
    s1, v1 = s0 + ds, v0 + dv
    a = torch.tanh(s1) @ W_a
    mix = torch.einsum("ncf,fg->ncg", v1, W_mix)
    s2, v2 = update(s1, v1, a, mix)
    return torch.tanh(s2).sum() + torch.log1p((v2 ** 2).sum(1)).sum()


def _pygfm_message(x, v, w, d, graph):
    return ops.painn_message(x, v, w, d, graph)


def _reference_message(x, v, w, d, graph):
    return reference.painn_message(x, v, w, d, *graph)


def force_case(device="cpu", F=5, seed=7):
    gen = generator(seed)
    N = 7
    grid = torch.tensor([[i % 2, (i // 2) % 2, i // 4] for i in range(N)], dtype=F64) * 1.3
    positions = grid + 0.2 * torch.randn(N, 3, generator=gen, dtype=F64)
    pairs = [(i, j) for i in range(N) for j in range(N) if i != j and (i + j) % 3 != 0]
    pairs += [(2, 5), (2, 5)]  # a repeated pair
    pairs.sort(key=lambda p: p[0])
    graph = ops.message_graph(edge_index(*zip(*pairs)), N)  # atom 0... some receive less
    s0 = torch.randn(N, F, generator=gen, dtype=F64)
    v0 = torch.randn(N, 3, F, generator=gen, dtype=F64)
    weights = [torch.randn(*shape, generator=gen, dtype=F64) / shape[0] ** 0.5
               for shape in [(F, 3 * F), (6, 3 * F), (F, 3 * F), (F, 2 * F)]]
    return (positions.to(device), s0.to(device), v0.to(device), [w.to(device) for w in weights],
            ops.MessageGraph(*(t.to(device) for t in graph)))


def force_training_gradients(message, update, case):
    positions, s0, v0, weights, graph = case
    positions = positions.clone().requires_grad_()
    weights = leaves(*weights)
    v0 = v0.clone().requires_grad_()
    energy = painn_layer(message, update, positions, s0, v0, weights, graph)
    (forces,) = torch.autograd.grad(-energy, positions, create_graph=True)
    loss = (forces ** 2).sum() + 0.1 * energy ** 2
    grads = torch.autograd.grad(loss, [*weights, v0])
    return tuple(t.detach() for t in (energy, forces, *grads))


def test_force_training_matches_reference(device):
    case = force_case(device)
    got = force_training_gradients(_pygfm_message, ops.painn_update, case)
    want = force_training_gradients(_reference_message, reference.painn_update, case)
    for k, (a, b) in enumerate(zip(got, want)):
        assert b.abs().max() > 0, k
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * float(b.abs().max()))


def test_force_training_on_direction_and_features():
    """Forces with respect to direction and x directly; loss gradient w.r.t. filters and v."""
    case = small_case(F=17, seed=8)

    def run(message):
        x, v, w, d = leaves(case.x, case.v, case.filters, case.direction)
        ds, dv = message(x, v, w, d)
        energy = nonlinear_energy(ds, dv)
        f_d, f_x = torch.autograd.grad(energy, (d, x), create_graph=True)
        loss = (f_d ** 2).sum() + (f_x ** 2).sum()
        return torch.autograd.grad(loss, (w, v, x, d))

    got = run(lambda x, v, w, d: ops.painn_message(x, v, w, d, case.graph))
    want = run(lambda x, v, w, d: reference.painn_message(x, v, w, d, *case.graph))
    for a, b in zip(got, want):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * float(b.abs().max()))


@pytest.mark.parametrize("dtype", [F32, BF16], ids=DTYPE_IDS.get)
def test_low_precision_autograd_close_to_float64(dtype):
    """First and second derivatives through the public op in float32 / bfloat16
    against float64 autograd of the reference on the same (rounded) inputs."""
    case = small_case(F=17, seed=9, dtype=dtype)

    def run(message, cast):
        x, v, w = leaves(*(cast(t) for t in (case.x, case.v, case.filters)))
        (d,) = leaves(case.direction.double())
        ds, dv = message(x, v, w, d)
        energy = (torch.tanh(ds.float()) * 0.5).sum() + (dv.float() ** 2).sum() * 0.1
        grads = torch.autograd.grad(energy, (x, v, w, d), create_graph=True)
        loss = (grads[3].float() ** 2).sum() + (grads[0].float() ** 2).sum()
        return tuple(t.detach() for t in (*grads, *torch.autograd.grad(loss, (w, v))))

    got = run(lambda x, v, w, d: ops.painn_message(x, v, w, d, case.graph), lambda t: t)
    want = run(lambda x, v, w, d: reference.painn_message(x, v, w, d, *case.graph),
               lambda t: t.double())
    rtol = 1e-5 if dtype == F32 else 3e-2
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == (F64 if k == 3 else dtype), (k, a.dtype)
        scale = float(b.abs().max())
        assert scale > 0
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=rtol * scale)


# ----------------------------------------------------------------- opcheck
def opcheck_args(name, dtype, requires_grad, device="cpu"):
    case = small_case(F=3, seed=10, dtype=dtype, device=device)
    return tuple(a.detach().clone().requires_grad_(requires_grad) if a.is_floating_point() else a
                 for a in case.args(name))


#: aot_dispatch_dynamic with gradients is the slow part of opcheck (~1 s an op): it runs
#: for float64; float32 with gradients runs the other checks, float32 / bfloat16
#: without gradients run all of them.
OPCHECK_VARIANTS = {
    "float64-grad": (F64, True, None),
    "float32-grad": (F32, True, ("test_schema", "test_autograd_registration", "test_faketensor")),
    "float32-no_grad": (F32, False, None),
    "bfloat16-no_grad": (BF16, False, None),
}


def run_opcheck(name, args, test_utils=None):
    kwargs = {} if test_utils is None else {"test_utils": test_utils}
    result = opcheck(getattr(_ops, name).default, args, **kwargs)
    assert result and set(result.values()) == {"SUCCESS"}, (name, result)


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("variant", OPCHECK_VARIANTS)
def test_opcheck(name, variant, device):
    dtype, requires_grad, test_utils = OPCHECK_VARIANTS[variant]
    run_opcheck(name, opcheck_args(name, dtype, requires_grad, device), test_utils)


def test_opcheck_bf16_with_gradients():
    run_opcheck("painn_message", opcheck_args("painn_message", BF16, True))


def test_opcheck_empty_graph():
    case = make_case(3, [], [], 2, F64, seed=0)
    for name in ALL_OPS:
        run_opcheck(name, case.args(name))
    run_opcheck("painn_message", tuple(a.requires_grad_() if a.is_floating_point() else a
                                       for a in case.args("painn_message")))


# ----------------------------------------------------------------- determinism / threads
@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def big_case(layout, dtype, F=17, N=150, E=1200):
    """Big enough ((E + N) * F > 2**14) that the CPU launchers split rows over threads."""
    gen = generator(len(layout))
    sender = torch.randint(0, N, (E,), generator=gen)
    if layout == "uniform":
        receiver = torch.randint(0, N, (E,), generator=gen)
    else:  # "skewed": one receiver takes half the edges, most atoms receive nothing
        receiver = torch.where(torch.rand(E, generator=gen) < 0.5, N // 3,
                               torch.randint(0, N // 10, (E,), generator=gen))
        sender[: E // 4] = N - 1  # and one sender sends a quarter of them
    receiver = receiver.sort().values
    return make_case(N, receiver.tolist(), sender.tolist(), F, dtype, seed=len(layout) + 1)


@pytest.mark.parametrize("layout", ["uniform", "skewed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_same_bits_for_one_and_two_threads(layout, dtype, restore_threads):
    case = big_case(layout, dtype)
    update_case = make_case(1500, [], [], 17, dtype, seed=3)  # update splits at ~963 atoms
    results = {}
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        outputs = [getattr(_ops, name)(*case.args(name)) for name in MESSAGE_OPS]
        outputs.append(_ops.painn_update(*update_case.args("painn_update")))
        if threads in results:  # same bits on a rerun too
            for a, b in zip(results[threads], outputs):
                assert all(torch.equal(p, q) for p, q in zip(a, b))
        results[threads] = outputs
    for name, a, b in zip(ALL_OPS, results[1], results[2]):
        for p, q in zip(a, b):
            assert torch.equal(p, q), name
    torch.set_num_threads(2)
    for name, outputs in zip(MESSAGE_OPS, results[2]):
        check_op(name, case, outputs)
    check_op("painn_update", update_case, results[2][3])


# ----------------------------------------------------------------- torch.compile
def compiled_model(x, v, w, d, graph):
    ds, dv = ops.painn_message(x, v, w, d, graph)
    F = ds.shape[1]
    s, vec = ops.painn_update(ds, dv, torch.cat([ds, ds.tanh(), ds * ds], 1)[:, :3 * F],
                              torch.cat([dv, 2 * dv], 2))
    return torch.tanh(s).sum() + (vec ** 2).sum(), s, vec


def _compile_and_compare(backend, device="cpu", gradients=True):
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, backend=backend, fullgraph=True)
    for seed in (0, 1):  # the second call reuses (or recompiles) the graph
        case = small_case(F=4, seed=seed, device=device)
        results = []
        for fn in (compiled_model, compiled):
            inputs = leaves(case.x, case.v, case.filters, case.direction)
            if not gradients:
                inputs = [t.detach() for t in inputs]
            outputs = fn(*inputs, case.graph)
            grads = torch.autograd.grad(outputs[0], inputs) if gradients else ()
            results.append((*outputs, *grads))
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
        assert results[0][-1].abs().sum() > 0


def test_compile_aot_eager_fullgraph_matches_eager(device):
    _compile_and_compare("aot_eager", device)


@pytest.mark.slow
def test_compile_inductor_fullgraph_matches_eager():
    """Inductor on the op alone, inference only: any generated C++ kernel costs ~10 s
    of compiling with a cold cache here (the aot_eager test covers the traced backward)."""
    torch._dynamo.reset()

    def message(x, v, w, d, graph):
        return ops.painn_message(x, v, w, d, graph)

    compiled = torch.compile(message, fullgraph=True)
    for F in (4, 17):  # a second size
        case = small_case(F=F, seed=F)
        args = (case.x, case.v, case.filters, case.direction.double(), case.graph)
        for a, b in zip(message(*args), compiled(*args)):
            assert torch.equal(a, b)


# ----------------------------------------------------------------- bad input
def bad_case():
    return small_case(F=2, seed=0)


def _public(**changes):
    def call():
        case = dataclasses.replace(bad_case(), **{k: v for k, v in changes.items()
                                                  if k != "graph_changes"})
        graph = case.graph._replace(**changes.get("graph_changes", {}))
        return ops.painn_message(case.x, case.v, case.filters, case.direction, graph)
    return call


def _raw(name, **changes):
    def call():
        case = dataclasses.replace(bad_case(), **{k: v for k, v in changes.items()
                                                  if k != "graph_changes"})
        case.graph = case.graph._replace(**changes.get("graph_changes", {}))
        return getattr(_ops, name)(*case.args(name))
    return call


N_, E_, F_ = 5, 6, 2  # sizes of bad_case()
_d = torch.randn
BAD_MESSAGE = {
    "x_not_multiple_of_3": (_public(x=_d(N_, 3 * F_ + 1, dtype=F64)), ValueError,
                            r"x must have shape \[N, 3F\]"),
    "x_one_dimensional": (_public(x=_d(N_ * 3 * F_, dtype=F64)), ValueError, r"x must have shape"),
    "v_components_last": (_public(v=_d(N_, F_, 3, dtype=F64)), ValueError,
                          r"v must have shape \[5, 3, 2\], got \[5, 2, 3\]"),
    "v_wrong_atoms": (_public(v=_d(N_ + 1, 3, F_, dtype=F64)), ValueError, r"v must have shape"),
    "filters_wrong_width": (_public(filters=_d(E_, 3 * F_ + 3, dtype=F64)), ValueError,
                            r"filters must have shape \[6, 6\], got \[6, 9\]"),
    "filters_one_dimensional": (_public(filters=_d(E_ * 3 * F_, dtype=F64)), ValueError,
                                r"filters must have shape"),
    "direction_four_components": (_public(direction=_d(E_, 4, dtype=F64)), ValueError,
                                  r"direction must have shape \[E, 3\]"),
    "direction_wrong_edges": (_public(direction=_d(E_ + 1, 3, dtype=F64)), ValueError,
                              r"direction must have shape \[E, 3\] = \[6, 3\], got \[7, 3\]"),
    "x_int": (_public(x=torch.ones(N_, 3 * F_, dtype=torch.long)), TypeError,
              r"x has dtype torch.int64"),
    "v_int": (_public(v=torch.ones(N_, 3, F_, dtype=torch.int32)), TypeError,
              r"v has dtype torch.int32"),
    "filters_float16": (_public(filters=torch.ones(E_, 3 * F_, dtype=torch.float16)),
                        TypeError, r"filters has dtype torch.float16"),
    "direction_int": (_public(direction=torch.ones(E_, 3, dtype=torch.long)), TypeError,
                      r"direction has dtype torch.int64"),
    "v_float32_x_float64": (_public(v=_d(N_, 3, F_, dtype=F32)), TypeError,
                            r"v has dtype Float but x has Double"),
    "filters_bf16_x_float64": (_public(filters=_d(E_, 3 * F_).bfloat16()), TypeError,
                               r"filters has dtype BFloat16 but x has Double"),
    "x_list": (_public(x=[[0.0] * 6] * 5), TypeError, r"x must be a torch.Tensor, got list"),
    "x_scalar": (_public(x=torch.tensor(1.0, dtype=F64)), ValueError,
                 r"x must have at least one dimension"),
    "graph_tuple": (lambda: ops.painn_message(*bad_case().args("painn_message")[:4],
                                              tuple(bad_case().graph)),
                    TypeError, r"graph must be a MessageGraph"),
    "sender_out_of_range": (_public(graph_changes={"sender": torch.tensor([0, 2, 2, 3, 0, 5])}),
                            IndexError, r"sender\[5\] = 5 is outside \[0, atoms = 5\)"),
    "sender_negative": (_public(graph_changes={"sender": torch.tensor([0, 2, -1, 3, 0, 1])}),
                        IndexError, r"sender\[2\] = -1"),
    "sender_too_short": (_public(graph_changes={"sender": torch.tensor([0, 2, 2, 3, 0])}),
                         ValueError, r"sender has 5 entries but there are 6 edges"),
    "sender_int32": (_public(graph_changes={"sender": torch.tensor([0, 2, 2, 3, 0, 1],
                                                                    dtype=torch.int32)}),
                     TypeError, r"sender must be int64"),
    "sender_two_dimensional": (_public(graph_changes={
        "sender": torch.tensor([[0, 2, 2, 3, 0, 1]])}), ValueError, r"sender must be 1-D"),
    "receiver_float": (_public(graph_changes={"receiver": torch.zeros(6)}), TypeError,
                       r"receiver must be int64, got Float"),
    "row_ptr_one_short": (_public(graph_changes={"row_ptr": torch.tensor([0, 3, 5, 5, 6])}),
                          ValueError, r"row_ptr must have N \+ 1 = 6 entries, got 5"),
    "row_ptr_one_long": (_public(graph_changes={"row_ptr": torch.tensor([0, 3, 5, 5, 6, 6, 6])}),
                         ValueError, r"row_ptr must have N \+ 1 = 6 entries, got 7"),
    "row_ptr_wrong_total": (_public(graph_changes={"row_ptr": torch.tensor([0, 3, 5, 5, 5, 5])}),
                            ValueError, r"ptr\[-1\] = 5 must equal"),
    "row_ptr_decreasing": (_public(graph_changes={"row_ptr": torch.tensor([0, 3, 2, 5, 6, 6])}),
                           ValueError, r"non-decreasing"),
    "row_ptr_first_not_zero": (_public(graph_changes={
        "row_ptr": torch.tensor([1, 3, 5, 5, 6, 6])}), ValueError, r"ptr\[0\] must be 0"),
    "receiver_not_row_ptr": (_public(graph_changes={
        "receiver": torch.tensor([0, 0, 1, 1, 1, 3])}), ValueError,
        r"receiver\[2\] = 1 but row_ptr puts edge 2 in row 0"),
    "edge_of_repeats_an_edge": (_public(graph_changes={
        "edge_of": torch.tensor([0, 4, 4, 1, 2, 3])}), ValueError,
        r"edge_of\[\d\] = \d is not a new edge of sender"),
    "sender_ptr_one_short": (_public(graph_changes={
        "sender_ptr": torch.tensor([0, 2, 3, 5, 6])}), ValueError,
        r"sender_ptr must have N \+ 1 = 6 entries, got 5"),
}


@pytest.mark.parametrize("case", BAD_MESSAGE)
def test_bad_message_arguments(case):
    call, error, message = BAD_MESSAGE[case]
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("name", MESSAGE_OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_raw_ops_reject_wrong_direction_dtype(name, dtype):
    case = small_case(dtype=dtype)
    wrong = F32 if dtype == F64 else (F64 if dtype == F32 else BF16)
    expected = {F64: "Double", F32: "Float", BF16: "Float"}[dtype]
    with pytest.raises(TypeError, match=rf"direction must be {expected} for "):
        getattr(_ops, name)(*dataclasses.replace(case, direction=case.direction.to(wrong))
                            .args(name))


@pytest.mark.parametrize("name", MESSAGE_OPS[1:])
def test_raw_backward_ops_check_gradient_arguments(name):
    with pytest.raises(ValueError, match=r"grad_s must have shape \[5, 2\], got \[5, 1\]"):
        _raw(name, grad_s=_d(N_, 1, dtype=F64))()
    with pytest.raises(ValueError, match=r"grad_v must have shape \[5, 3, 2\]"):
        _raw(name, grad_v=_d(N_, 2, F_, dtype=F64))()
    with pytest.raises(TypeError, match=r"grad_v has dtype Float but x has Double"):
        _raw(name, grad_v=_d(N_, 3, F_, dtype=F32))()


def test_raw_node_backward_checks_receiver_and_edge_of():
    name = "painn_message_backward_node"
    with pytest.raises(IndexError, match=r"receiver\[5\] = 9 is outside \[0, atoms = 5\)"):
        _raw(name, graph_changes={"receiver": torch.tensor([0, 0, 0, 1, 1, 9])})()
    with pytest.raises(IndexError, match=r"edge_of\[0\] = 6 is outside \[0, edges = 6\)"):
        _raw(name, graph_changes={"edge_of": torch.tensor([6, 1, 2, 3, 4, 5])})()
    with pytest.raises(ValueError, match=r"edge_of has 5 entries but there are 6 edges"):
        _raw(name, graph_changes={"edge_of": torch.tensor([0, 1, 2, 3, 4])})()


# Messages must name the graph argument at fault.
BAD_NAMING = {
    "sender_out_of_range": (_public(graph_changes={"sender": torch.tensor([0, 2, 2, 3, 0, 5])}),
                            IndexError, "sender"),
    "receiver_out_of_range": (_raw("painn_message_backward_node", graph_changes={
        "receiver": torch.tensor([0, 0, 0, 1, 1, 9])}), IndexError, "receiver"),
    "edge_of_out_of_range": (_raw("painn_message_backward_node", graph_changes={
        "edge_of": torch.tensor([6, 1, 2, 3, 4, 5])}), IndexError, "edge_of"),
    "row_ptr_wrong_total": (_public(graph_changes={"row_ptr": torch.tensor([0, 3, 5, 5, 5, 5])}),
                            ValueError, "row_ptr"),
    "sender_ptr_wrong_total": (_public(graph_changes={
        "sender_ptr": torch.tensor([0, 2, 3, 5, 6, 7])}), ValueError, "sender_ptr"),
}


@pytest.mark.parametrize("case", list(BAD_NAMING))
def test_graph_errors_name_the_argument(case):
    call, error, name = BAD_NAMING[case]
    with pytest.raises(error) as info:
        call()
    assert name in str(info.value)


def test_raw_message_with_integer_features_blames_x():
    case = bad_case()
    args = (case.x.long(), case.v.long(), case.filters.long(), case.direction, *case.graph)
    with pytest.raises(TypeError, match=r"(x|src) has dtype Long"):
        _ops.painn_message(*args)


# The meta device stands in for a second device (as in test_bad_input.py). A meta
# argument would send the raw op to its fake kernel (uninitialized outputs), so the
# front ends must catch it.


@pytest.mark.parametrize("argument", ["v", "direction"])
def test_message_argument_on_another_device(argument):
    case = bad_case()
    changed = dataclasses.replace(case, **{argument: getattr(case, argument).to("meta")})
    with pytest.raises(ValueError, match=rf"{argument} is on meta but x is on cpu"):
        ops.painn_message(changed.x, changed.v, changed.filters, changed.direction,
                          changed.graph)


def test_update_argument_on_another_device():
    case = bad_case()
    with pytest.raises(ValueError, match=r"mix is on meta"):
        ops.painn_update(case.s, case.v, case.a, case.mix.to("meta"))


@gpu
def test_mixed_cpu_and_gpu_arguments():
    case = bad_case()
    on_gpu = case.to("cuda")
    with pytest.raises(ValueError, match=r"direction is on cpu but x is on cuda"):
        ops.painn_message(on_gpu.x, on_gpu.v, on_gpu.filters, case.direction, on_gpu.graph)
    with pytest.raises(ValueError, match=r"v is on cuda:0 but x is on cpu"):
        ops.painn_message(case.x, on_gpu.v, case.filters, case.direction, case.graph)
    with pytest.raises(ValueError, match=r"is on cpu but"):
        ops.painn_message(on_gpu.x, on_gpu.v, on_gpu.filters, on_gpu.direction, case.graph)
    with pytest.raises(ValueError, match=r"mix is on cpu but"):
        ops.painn_update(on_gpu.s, on_gpu.v, on_gpu.a, case.mix)


BAD_UPDATE = {
    "s_one_dimensional": ({"s": _d(N_, dtype=F64)}, ValueError, r"s must have shape \[N, F\]"),
    "s_scalar": ({"s": torch.tensor(1.0, dtype=F64)}, ValueError,
                 r"s must have at least one dimension"),
    "v_wrong": ({"v": _d(N_, 2, F_, dtype=F64)}, ValueError,
                r"v must have shape \[5, 3, 2\], got \[5, 2, 2\]"),
    "a_wrong": ({"a": _d(N_, 3 * F_ - 1, dtype=F64)}, ValueError,
                r"a must have shape \[5, 6\], got \[5, 5\]"),
    "mix_wrong": ({"mix": _d(N_, 3, F_, dtype=F64)}, ValueError,
                  r"mix must have shape \[5, 3, 4\], got \[5, 3, 2\]"),
    "a_int": ({"a": torch.ones(N_, 3 * F_, dtype=torch.long)}, TypeError,
              r"a has dtype torch.int64"),
    "mix_float32": ({"mix": _d(N_, 3, 2 * F_, dtype=F32)}, TypeError, r"mix has dtype Float"),
    "v_list": ({"v": [[0.0]]}, TypeError, r"v must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", BAD_UPDATE)
def test_bad_update_arguments(case):
    changes, error, message = BAD_UPDATE[case]
    good = bad_case()
    args = {"s": good.s, "v": good.v, "a": good.a, "mix": good.mix}
    args.update(changes)
    with pytest.raises(error, match=message):
        ops.painn_update(**args)


def test_update_dtype_mismatch_names_s():
    good = bad_case()
    with pytest.raises(TypeError, match=r"mix has dtype Float but s has Double"):
        ops.painn_update(good.s, good.v, good.a, good.mix.float())


BAD_GRAPHS = {
    "unsorted": (torch.tensor([[1, 0, 2], [0, 1, 1]]), 3, ValueError,
                 r"sorted by receiver \(edge_index\[0\]\)"),
    "receiver_too_large": (torch.tensor([[0, 3], [0, 1]]), 3, ValueError,
                           r"edge_index holds atom 3, outside \[0, 3\)"),
    "sender_too_large": (torch.tensor([[0, 1], [0, 7]]), 3, ValueError,
                         r"edge_index holds atom 7"),
    "negative": (torch.tensor([[0, 1], [-1, 1]]), 3, ValueError, r"edge_index holds atom -1"),
    "edges_but_no_atoms": (torch.tensor([[0], [0]]), 0, ValueError, r"edge_index holds atom 0"),
    "three_rows": (torch.zeros(3, 2, dtype=torch.long), 3, ValueError,
                   r"edge_index must have shape \[2, E\], got \[3, 2\]"),
    "one_dimensional": (torch.zeros(2, dtype=torch.long), 3, ValueError,
                        r"edge_index must have shape \[2, E\]"),
    "float": (torch.zeros(2, 2), 3, TypeError, r"edge_index must be an integer tensor"),
    "bool": (torch.zeros(2, 2, dtype=torch.bool), 3, TypeError,
             r"edge_index must be an integer tensor"),
    "list": ([[0, 1], [1, 0]], 3, (TypeError, ValueError), r"edge_index must"),
}


@pytest.mark.parametrize("case", BAD_GRAPHS)
def test_bad_message_graph(case):
    edges, num_atoms, error, message = BAD_GRAPHS[case]
    with pytest.raises(error, match=message):
        ops.message_graph(edges, num_atoms)


def test_message_graph_accepts_int32_and_empty():
    g = ops.message_graph(torch.tensor([[0, 0, 2], [1, 2, 2]], dtype=torch.int32), 3)
    assert g.row_ptr.tolist() == [0, 2, 2, 3] and g.sender_ptr.tolist() == [0, 0, 1, 3]
    assert all(t.dtype == torch.long for t in g)
    empty = ops.message_graph(torch.zeros(2, 0, dtype=torch.long), 0)
    assert empty.row_ptr.tolist() == [0] and empty.num_edges == 0


# ----------------------------------------------------------------- GPU against the CPU
@gpu
@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("F", [1, 17, 33])
@pytest.mark.parametrize("layout", ["hub_receiver", "isolated_atoms", "random"])
def test_gpu_ops_match_cpu(name, dtype, F, layout):
    if layout == "random":
        gen = generator(F)
        N, E = 40, 400
        receiver = torch.randint(0, N, (E,), generator=gen).sort().values.tolist()
        sender = torch.randint(0, N, (E,), generator=gen).tolist()
    else:
        N, receiver, sender = LAYOUTS[layout]
    case = make_case(N, receiver, sender, F, dtype, seed=F + len(name))
    gpu_case = case.to("cuda")
    cpu = getattr(_ops, name)(*case.args(name))
    gpu = getattr(_ops, name)(*gpu_case.args(name))
    for a, b in zip(cpu, gpu):
        assert b.is_cuda and a.dtype == b.dtype and a.shape == b.shape
    check_op(name, gpu_case, gpu)
    check_op(name, case, cpu)
    if dtype == F64:
        for a, b in zip(cpu, gpu):
            torch.testing.assert_close(b.cpu(), a, rtol=1e-12, atol=1e-12 * float(
                a.abs().max()) if a.numel() else 0.0)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_gpu_gradients_match_cpu(dtype):
    """Autograd of the public ops with cotangents (grad_s, grad_v): the gradients are
    the backward ops' outputs, checked against the reference on both devices."""
    gen = generator(5)
    N, E, F = 30, 300, 17
    receiver = torch.randint(0, N, (E,), generator=gen).sort().values.tolist()
    sender = torch.randint(0, N, (E,), generator=gen).tolist()
    case = make_case(N, receiver, sender, F, dtype, seed=6)
    for c in (case, case.to("cuda")):
        x, v, w, d = leaves(c.x, c.v, c.filters, c.direction)
        ds, dv = ops.painn_message(x, v, w, d, c.graph)
        grads = torch.autograd.grad((ds, dv), (x, v, w, d), (c.grad_s, c.grad_v))
        check_op("painn_message_backward_node", c, grads[:2])
        check_op("painn_message_backward_edge", c, grads[2:])
        s, v_, a, mix = leaves(c.s, c.v, c.a, c.mix)
        out = ops.painn_update(s, v_, a, mix)
        assert out[0].device == c.x.device
        up = torch.autograd.grad(out, (s, v_, a, mix), (c.grad_s, c.grad_v))
        s64, v64, a64, m64 = leaves(*(exact(t) for t in (s, v_, a, mix)))
        want = torch.autograd.grad(reference.painn_update(s64, v64, a64, m64),
                                   (s64, v64, a64, m64), (exact(c.grad_s), exact(c.grad_v)))
        for got, exp in zip(up, want):
            scale = float(exp.abs().max())
            tol = {F64: 1e-12, F32: 1e-5, BF16: 2e-2}[dtype]
            torch.testing.assert_close(exact(got), exp, rtol=tol, atol=tol * scale)


@gpu
def test_gpu_force_training_matches_cpu():
    cpu = force_training_gradients(_pygfm_message, ops.painn_update, force_case("cpu"))
    gpu = force_training_gradients(_pygfm_message, ops.painn_update, force_case("cuda"))
    for a, b in zip(cpu, gpu):
        assert b.is_cuda
        torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-10 * float(a.abs().max()))


@gpu
def test_gpu_third_derivative_matches_cpu():
    def third(case):
        x, v, w, d = leaves(case.x, case.v, case.filters, case.direction)
        ds, dv = ops.painn_message(x, v, w, d, case.graph)
        (g1,) = torch.autograd.grad(nonlinear_energy(ds, dv), d, create_graph=True)
        (g2,) = torch.autograd.grad((g1 ** 2).sum(), x, create_graph=True)
        return torch.autograd.grad((g2 ** 2).sum(), (w, v))

    cpu_case = small_case(F=17, seed=12)
    for a, b in zip(third(cpu_case), third(cpu_case.to("cuda"))):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-10 * float(a.abs().max()))


@gpu
def test_gpu_message_graph_matches_cpu():
    N, receiver, sender = _hub(30, 500, 3, "sender")
    cpu = ops.message_graph(edge_index(receiver, sender), N)
    gpu = ops.message_graph(edge_index(receiver, sender).cuda(), N)
    for a, b in zip(cpu, gpu):
        assert b.is_cuda and torch.equal(a, b.cpu())
