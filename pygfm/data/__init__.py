"""Atomic structures in memory, on disk and across ranks.

- :class:`Sample` (one labelled structure) and :class:`SampleBlock` (many, column-wise);
- :class:`AtomicBatch` (flat tensors a model takes), :func:`collate`, :func:`from_ase`;
- ADIOS2 datasets: :func:`open` / :func:`write_dataset`, format in docs/data-format.md;
- :class:`MultiDatasetSampler` and :func:`budget_batches` for imbalanced collections;
- :class:`BatchLoader`: budget-filled, mixed batches per rank, with neighbor lists;
- :class:`DistributedStore`: a dataset spread over MPI ranks, any sample readable anywhere;
- :func:`read_hydragnn` for HydraGNN's ADIOS2 files.
"""

from .adios import AtomicDataset, DatasetError, open_dataset, write_dataset
from .batch import AtomicBatch, collate, from_ase
from .block import SampleBlock
from .hydragnn import hydragnn_splits, is_hydragnn_file, read_hydragnn
from .sample import LABELS, Sample, labels_from_ase
from .loader import BatchLoader
from .sampler import MultiDatasetSampler, balance_batch_count, budget_batches
from .store import DistributedStore

open = open_dataset  # noqa: A001 - pygfm.data.open(DIR) reads like the format it opens

__all__ = ["AtomicBatch", "AtomicDataset", "BatchLoader", "DistributedStore", "DatasetError", "LABELS", "MultiDatasetSampler",
           "Sample", "SampleBlock", "balance_batch_count", "budget_batches", "collate",
           "from_ase", "hydragnn_splits", "is_hydragnn_file", "labels_from_ase", "open",
           "open_dataset", "read_hydragnn", "write_dataset"]
