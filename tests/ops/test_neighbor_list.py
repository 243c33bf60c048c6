"""pygfm.ops.neighbor_list against ASE's neighbor_list('ijS'), plus edge cases and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ase  # the reference: installed by scripts/bootstrap.sh --test
from ase.neighborlist import neighbor_list as ase_neighbor_list

from pygfm.ops import edge_vectors, neighbor_list


def triples(edge_index, shifts):
    return list(zip(edge_index[0].tolist(), edge_index[1].tolist(), map(tuple, shifts.tolist())))


def ase_triples(atoms, cutoff, self_interaction=False, offset=0):
    i, j, S = ase_neighbor_list("ijS", atoms, cutoff, self_interaction=self_interaction)
    return sorted(zip((i + offset).tolist(), (j + offset).tolist(), map(tuple, S.tolist())))


def run(atoms, cutoff, **kwargs):
    cell = torch.tensor(atoms.cell.array) if atoms.pbc.any() or atoms.cell.rank else None
    return neighbor_list(torch.tensor(atoms.positions), cutoff, cell=cell,
                         pbc=torch.tensor(atoms.pbc), **kwargs)


def assert_matches_ase(atoms, cutoff, self_interaction=False):
    result = run(atoms, cutoff, self_interaction=self_interaction)
    ours = triples(result.edge_index, result.shifts)
    assert ours == sorted(ours), "pairs must be ordered by (i, j, S)"
    assert ours == ase_triples(atoms, cutoff, self_interaction)
    counts = torch.bincount(result.edge_index[0], minlength=len(atoms))
    assert result.row_ptr.tolist() == [0] + counts.cumsum(0).tolist()
    return result


def random_cell(rng, skew: float):
    """A random cell: lengths 2..9 Å, off-diagonal parts up to `skew` times the diagonal."""
    diagonal = np.diag(rng.uniform(2.0, 9.0, 3))
    off = rng.uniform(-skew, skew, (3, 3)) * np.diag(diagonal)[:, None]
    np.fill_diagonal(off, 0.0)
    cell = diagonal + off
    if np.linalg.det(cell) < 0:
        cell[0] *= -1
    return cell


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    atoms_count=st.integers(1, 30),
    pbc=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    skew=st.sampled_from([0.0, 0.3, 0.9]),
    cutoff_scale=st.sampled_from([0.3, 0.8, 1.5, 2.5]),
    outside=st.booleans(),
    self_interaction=st.booleans(),
)
def test_random_structures_match_ase(seed, atoms_count, pbc, skew, cutoff_scale, outside,
                                     self_interaction):
    rng = np.random.default_rng(seed)
    cell = random_cell(rng, skew)
    low, high = (-1.5, 2.5) if outside else (0.0, 1.0)
    positions = rng.uniform(low, high, (atoms_count, 3)) @ cell
    # cutoff relative to the thinnest height: > 1 means many periodic images
    heights = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
    cutoff = float(cutoff_scale * heights.min() + 0.1)
    atoms = ase.Atoms(positions=positions, cell=cell, pbc=pbc)
    assert_matches_ase(atoms, cutoff, self_interaction)


@pytest.mark.parametrize("spread", [0.5, 3.0, 40.0, 500.0])
def test_molecules_without_cell_of_any_extent(spread):
    rng = np.random.default_rng(int(spread * 10))
    atoms = ase.Atoms(positions=rng.normal(0.0, spread, (40, 3)))
    result = assert_matches_ase(atoms, 4.0)
    assert result.shifts.abs().sum() == 0


def test_fcc_copper_bulk_orthorhombic_and_primitive():
    from ase.build import bulk

    cubic = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 3))
    cubic.rattle(0.05, seed=3)
    assert len(assert_matches_ase(cubic, 5.0).shifts) > 0
    primitive = bulk("Cu", "fcc", a=3.6)  # one atom, skewed cell thinner than the cutoff
    result = assert_matches_ase(primitive, 9.0)
    assert (result.edge_index == 0).all()  # the atom only sees its own images
    assert result.shifts.abs().max() >= 3


@pytest.mark.parametrize("pbc", [(True, True, False), (False, True, False), (True, False, False)])
def test_slabs_and_wires(pbc):
    from ase.build import bulk

    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 3, 2))
    atoms.rattle(0.1, seed=5)
    atoms.pbc = pbc
    result = assert_matches_ase(atoms, 4.5)
    for axis in range(3):
        if not pbc[axis]:
            assert result.shifts[:, axis].abs().sum() == 0


def test_slab_with_zero_vacuum_vector():
    rng = np.random.default_rng(8)
    cell = np.array([[5.0, 0.0, 0.0], [1.0, 4.5, 0.0], [0.0, 0.0, 0.0]])
    positions = rng.uniform(0, 1, (12, 3)) @ np.diag([5.0, 4.5, 1.0]) + [0, 0, 0]
    positions[:, 2] = rng.uniform(-3, 3, 12)
    atoms = ase.Atoms(positions=positions, cell=cell, pbc=[True, True, False])
    assert_matches_ase(atoms, 3.7)


def test_single_atoms_and_isolated_atoms():
    lone = ase.Atoms("H", positions=[[0.3, 0.2, 0.1]])
    assert run(lone, 5.0).edge_index.shape == (2, 0)
    tiny = ase.Atoms("H", positions=[[0.0, 0.0, 0.0]], cell=np.eye(3) * 1.1, pbc=True)
    assert_matches_ase(tiny, 2.5)
    assert_matches_ase(tiny, 2.5, self_interaction=True)
    far = ase.Atoms("H3", positions=[[0, 0, 0], [0.7, 0, 0], [50, 0, 0]])
    result = assert_matches_ase(far, 1.0)
    assert result.row_ptr[-1] - result.row_ptr[-2] == 0  # the far atom has no neighbors


def test_empty_input():
    result = neighbor_list(torch.zeros(0, 3, dtype=torch.float64), 3.0)
    assert result.edge_index.shape == (2, 0)
    assert result.shifts.shape == (0, 3)
    assert result.row_ptr.tolist() == [0]


def random_batch(seed, structures=12):
    rng = np.random.default_rng(seed)
    batch = []
    for index in range(structures):
        count = int(rng.integers(0, 25))
        if index % 3 == 0:
            batch.append(ase.Atoms(positions=rng.normal(0, 2.0, (count, 3))))
        else:
            cell = random_cell(rng, 0.4)
            pbc = rng.random(3) < 0.7
            batch.append(ase.Atoms(positions=rng.uniform(-0.2, 1.2, (count, 3)) @ cell,
                                   cell=cell, pbc=pbc))
    return batch


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_equals_concatenated_single_calls(seed):
    batch = random_batch(seed)
    cutoff = 3.2
    positions = torch.tensor(np.concatenate([a.positions for a in batch]))
    cell = torch.tensor(np.stack([a.cell.array for a in batch]))
    pbc = torch.tensor(np.stack([a.pbc for a in batch]))
    counts = [len(a) for a in batch]
    ptr = torch.tensor([0] + np.cumsum(counts).tolist())
    result = neighbor_list(positions, cutoff, cell=cell, pbc=pbc, ptr=ptr)
    expected = []
    for offset, atoms in zip(ptr[:-1].tolist(), batch):
        expected += ase_triples(atoms, cutoff, offset=offset)
    assert triples(result.edge_index, result.shifts) == expected


def max_neighbor_rows(atoms, cutoff, keep):
    cell = torch.tensor(atoms.cell.array)
    positions = torch.tensor(atoms.positions)
    full = run(atoms, cutoff)
    limited = run(atoms, cutoff, max_neighbors=keep)
    _, lengths = edge_vectors(positions, full.edge_index, full.shifts, cell)
    _, kept_lengths = edge_vectors(positions, limited.edge_index, limited.shifts, cell)
    return full, limited, lengths, kept_lengths


def test_max_neighbors_keeps_exactly_the_nearest():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=2)  # no ties
    full, limited, lengths, kept_lengths = max_neighbor_rows(atoms, 5.0, 10)
    for atom in range(len(atoms)):
        row = slice(int(full.row_ptr[atom]), int(full.row_ptr[atom + 1]))
        kept = slice(int(limited.row_ptr[atom]), int(limited.row_ptr[atom + 1]))
        nearest = torch.argsort(lengths[row])[:10] + row.start
        expected = sorted(triples(full.edge_index[:, nearest], full.shifts[nearest]))
        assert triples(limited.edge_index[:, kept], limited.shifts[kept]) == expected
    small = run(atoms, 5.0, max_neighbors=1000)  # more than any atom has: nothing dropped
    assert torch.equal(small.edge_index, full.edge_index)
    assert run(atoms, 5.0, max_neighbors=0).edge_index.shape == (2, 0)


def test_max_neighbors_with_ties_is_deterministic():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))  # 12 tied nearest
    full, limited, lengths, kept_lengths = max_neighbor_rows(atoms, 5.0, 10)
    assert (limited.row_ptr.diff() == 10).all()
    assert torch.allclose(kept_lengths, torch.full_like(kept_lengths, 3.6 / math.sqrt(2)))
    again = run(atoms, 5.0, max_neighbors=10)
    assert torch.equal(again.edge_index, limited.edge_index)
    assert torch.equal(again.shifts, limited.shifts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lower_precision_positions_give_the_list_of_their_float64_values(dtype):
    rng = np.random.default_rng(4)
    cell = torch.tensor(random_cell(rng, 0.3), dtype=dtype)
    positions = torch.tensor(rng.uniform(0, 1, (30, 3)), dtype=dtype) @ cell
    low = neighbor_list(positions, 3.0, cell=cell)
    high = neighbor_list(positions.double(), 3.0, cell=cell.double())
    assert torch.equal(low.edge_index, high.edge_index)
    assert torch.equal(low.shifts, high.shifts)
    vectors, _ = edge_vectors(positions, low.edge_index, low.shifts, cell)
    assert vectors.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)


def test_edge_vectors_match_definition_and_gradcheck():
    batch = random_batch(9, structures=4)
    positions = torch.tensor(np.concatenate([a.positions for a in batch]), requires_grad=True)
    cell = torch.tensor(np.stack([a.cell.array for a in batch]), requires_grad=True)
    pbc = torch.tensor(np.stack([a.pbc for a in batch]))
    ptr = torch.tensor([0] + np.cumsum([len(a) for a in batch]).tolist())
    nl = neighbor_list(positions, 3.0, cell=cell, pbc=pbc, ptr=ptr)
    vectors, lengths = edge_vectors(positions, nl.edge_index, nl.shifts, cell, ptr)
    structure = torch.repeat_interleave(torch.arange(4), ptr.diff())
    i, j = nl.edge_index
    expected = positions[j] - positions[i] + torch.einsum(
        "ek,ekc->ec", nl.shifts.double(), cell[structure[i]])
    assert torch.allclose(vectors, expected, atol=1e-12)
    assert (lengths < 3.0).all()

    def lengths_of(p, c):
        return edge_vectors(p, nl.edge_index, nl.shifts, c, ptr)[1]

    assert torch.autograd.gradcheck(lengths_of, (positions, cell))


def test_edge_vectors_single_cell_gradient_is_the_virial():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    positions = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(atoms.cell.array, requires_grad=True)
    nl = neighbor_list(positions, 4.0, cell=cell)
    _, lengths = edge_vectors(positions, nl.edge_index, nl.shifts, cell)
    energy = torch.exp(-lengths).sum()
    (grad_cell,) = torch.autograd.grad(energy, cell)
    # finite difference along one cell component
    step = 1e-6
    shifted = cell.detach().clone()
    shifted[0, 1] += step
    _, lengths_shifted = edge_vectors(positions.detach(), nl.edge_index, nl.shifts, shifted)
    numeric = (torch.exp(-lengths_shifted).sum() - energy.detach()) / step
    assert math.isclose(float(grad_cell[0, 1]), float(numeric), rel_tol=1e-4, abs_tol=1e-8)


# ------------------------------------------------------------------ bad input
def test_nan_position_names_the_structure():
    positions = torch.zeros(6, 3, dtype=torch.float64)
    positions[4, 1] = float("nan")
    with pytest.raises(ValueError, match="structure 1"):
        neighbor_list(positions, 2.0, ptr=torch.tensor([0, 3, 6]))


def test_infinite_cell_names_the_structure():
    cell = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1) * 5
    cell[1, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="cell of structure 1"):
        neighbor_list(torch.zeros(4, 3, dtype=torch.float64), 2.0, cell=cell,
                      ptr=torch.tensor([0, 2, 4]))


@pytest.mark.parametrize("bad_cell", [
    [[5.0, 0, 0], [0, 5.0, 0], [0, 0, 0.0]],
    [[5.0, 0, 0], [10.0, 0, 0], [0, 0, 5.0]],
    [[5.0, 0, 0], [0, 5.0, 0], [5.0, 5.0, 1e-9]],
])
def test_singular_periodic_cell_is_rejected(bad_cell):
    with pytest.raises(ValueError, match="structure 0"):
        neighbor_list(torch.zeros(2, 3, dtype=torch.float64), 2.0,
                      cell=torch.tensor(bad_cell, dtype=torch.float64))


def test_zero_cell_vector_on_a_non_periodic_axis_is_fine():
    cell = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 0.0]], dtype=torch.float64)
    result = neighbor_list(torch.tensor([[0, 0, 0], [0, 0, 1.0]], dtype=torch.float64), 2.0,
                           cell=cell, pbc=torch.tensor([True, True, False]))
    assert result.edge_index.shape[1] == 2


@pytest.mark.parametrize("cutoff", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_cutoff(cutoff):
    with pytest.raises(ValueError, match="cutoff"):
        neighbor_list(torch.zeros(2, 3, dtype=torch.float64), cutoff)


def test_cutoff_of_wrong_type():
    with pytest.raises(TypeError, match="cutoff"):
        neighbor_list(torch.zeros(2, 3, dtype=torch.float64), "5")


def test_ptr_inconsistent_with_positions():
    with pytest.raises(ValueError, match="ptr"):
        neighbor_list(torch.zeros(5, 3, dtype=torch.float64), 2.0, ptr=torch.tensor([0, 2, 4]))
    with pytest.raises(ValueError, match="ptr"):
        neighbor_list(torch.zeros(5, 3, dtype=torch.float64), 2.0, ptr=torch.tensor([0, 4, 2, 5]))


def test_positions_shape_and_dtype():
    with pytest.raises(ValueError, match="positions"):
        neighbor_list(torch.zeros(4, 2, dtype=torch.float64), 2.0)
    with pytest.raises(TypeError, match="positions"):
        neighbor_list(torch.zeros(4, 3, dtype=torch.long), 2.0)


def test_mismatched_cell_dtype_and_device():
    positions = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="cell has dtype"):
        neighbor_list(positions, 2.0, cell=torch.eye(3, dtype=torch.float32) * 4)
    with pytest.raises(ValueError, match="cell is on meta"):
        neighbor_list(positions, 2.0, cell=torch.eye(3, dtype=torch.float64, device="meta"))


def test_too_many_pairs_is_refused_before_allocating():
    positions = torch.zeros(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="pairs"):
        neighbor_list(positions, 600.0, cell=torch.eye(3, dtype=torch.float64) * 1.0)
    many = torch.rand(60000, 3, dtype=torch.float64) * 3.0
    with pytest.raises(ValueError, match="pairs expected"):
        neighbor_list(many, 1e4)  # every atom sees every other: 3.6e9 pairs


def test_raw_op_passes_opcheck():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6)
    positions = torch.tensor(atoms.positions)
    nl_inputs = {}

    def spy(*args):
        nl_inputs["args"] = args
        return torch.ops.pygfm.neighbor_list.default(*args)

    from pygfm.ops import neighbors

    original = neighbors._ops
    neighbors._ops = type("Ops", (), {"neighbor_list": staticmethod(spy)})
    try:
        neighbor_list(positions, 4.0, cell=torch.tensor(atoms.cell.array))
    finally:
        neighbors._ops = original
    torch.library.opcheck(torch.ops.pygfm.neighbor_list.default, nl_inputs["args"],
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("max_neighbors", [None, 8])
def test_gpu_equals_cpu(max_neighbors):
    batch = random_batch(21, structures=30)
    positions = torch.tensor(np.concatenate([a.positions for a in batch]))
    cell = torch.tensor(np.stack([a.cell.array for a in batch]))
    pbc = torch.tensor(np.stack([a.pbc for a in batch]))
    ptr = torch.tensor([0] + np.cumsum([len(a) for a in batch]).tolist())
    cpu = neighbor_list(positions, 3.5, cell=cell, pbc=pbc, ptr=ptr, max_neighbors=max_neighbors)
    gpu = neighbor_list(positions.cuda(), 3.5, cell=cell.cuda(), pbc=pbc.cuda(), ptr=ptr.cuda(),
                        max_neighbors=max_neighbors)
    for ours, theirs in zip(cpu, gpu):
        assert torch.equal(ours, theirs.cpu())


def dense_batch(seed):
    """Small, dense periodic cells (fcc Cu, perturbed), a partly periodic slab and a molecule."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    batch = []
    for repeat in [(1, 1, 1), (2, 1, 1), (1, 2, 2)]:
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        batch.append(atoms)
    slab = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
    slab.pbc = [True, True, False]
    batch.append(slab)
    batch.append(ase.Atoms(positions=rng.normal(0, 3.0, (40, 3))))
    return batch


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("cutoff, max_neighbors", [(7.0, None), (7.0, 100), (15.0, None),
                                                   (15.0, 700)])
def test_gpu_equals_cpu_long_rows(cutoff, max_neighbors):
    """Rows of hundreds (7 Å) and of more than a thousand (15 Å) pairs: the GPU row sort's
    per-row shared-memory path and its global-memory path for rows longer than its tile."""
    batch = dense_batch(3)
    positions = torch.tensor(np.concatenate([a.positions for a in batch]))
    cell = torch.tensor(np.stack([a.cell.array for a in batch]))
    pbc = torch.tensor(np.stack([a.pbc for a in batch]))
    ptr = torch.tensor([0] + np.cumsum([len(a) for a in batch]).tolist())
    cpu = neighbor_list(positions, cutoff, cell=cell, pbc=pbc, ptr=ptr,
                        max_neighbors=max_neighbors)
    if cutoff > 10 and max_neighbors is None:
        assert int(cpu.row_ptr.diff().max()) > 1024
    gpu = neighbor_list(positions.cuda(), cutoff, cell=cell.cuda(), pbc=pbc.cuda(),
                        ptr=ptr.cuda(), max_neighbors=max_neighbors)
    for ours, theirs in zip(cpu, gpu):
        assert torch.equal(ours, theirs.cpu())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("structures", [1, 3])
def test_gpu_equals_cpu_open_and_empty(structures):
    """Open structures take the GPU's min/max of fractional coordinates (amin/amax for one
    structure, scatter ops for a batch, with an empty structure)."""
    rng = np.random.default_rng(structures)
    counts = [50, 0, 30][:structures]
    positions = torch.tensor(rng.normal(0, 4.0, (sum(counts), 3)))
    ptr = torch.tensor([0] + np.cumsum(counts).tolist())
    pbc = torch.tensor([[True, False, False]] * structures)
    cell = torch.eye(3, dtype=torch.float64).expand(structures, 3, 3) * 6.0
    for kwargs in ({}, {"cell": cell, "pbc": pbc}):
        cpu = neighbor_list(positions, 3.0, ptr=ptr, **kwargs)
        gpu = neighbor_list(positions.cuda(), 3.0, ptr=ptr.cuda(),
                            **{k: v.cuda() for k, v in kwargs.items()})
        for ours, theirs in zip(cpu, gpu):
            assert torch.equal(ours, theirs.cpu())


def test_memory_guard_counts_crowded_atoms_before_allocating():
    # 2,000 atoms within 2 Å in a 1,000 Å periodic cell: a uniform-density
    # estimate sees ~0 pairs, the bins hold 4M (190 MB to build)
    import pygfm

    generator = torch.Generator().manual_seed(0)
    crowded = torch.rand(2000, 3, generator=generator, dtype=torch.float64) * 2.0 + 500.0
    spread = torch.rand(2000, 3, generator=generator, dtype=torch.float64) * 1000.0
    cell = torch.eye(3, dtype=torch.float64) * 1000.0
    pbc = torch.ones(3, dtype=torch.bool)
    with pygfm.settings.override(neighbor_memory_mb=100):
        with pytest.raises(ValueError, match=r"3998000 pairs within 5 Å .* structure 0 alone"):
            neighbor_list(crowded, 5.0, cell=cell, pbc=pbc)
        assert neighbor_list(spread, 5.0, cell=cell, pbc=pbc).edge_index.shape[1] < 100
        kept = neighbor_list(crowded, 5.0, cell=cell, pbc=pbc, max_neighbors=16)  # 32k pairs fit
        assert kept.edge_index.shape[1] == 2000 * 16
    assert neighbor_list(crowded, 5.0, cell=cell, pbc=pbc).edge_index.shape[1] == 2000 * 1999
