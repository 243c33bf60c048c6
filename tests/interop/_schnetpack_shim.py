"""Make schnetpack 2.1.1 importable with recent torch (imported before schnetpack).

schnetpack 2.1.1's ``schnetpack/data/loader.py`` does
``from torch.utils.data.dataloader import _collate_fn_t, T_co``, but newer torch
(2.13 here) no longer defines the type variable ``T_co`` in that module, so
``import schnetpack`` fails with an ImportError. schnetpack only uses ``T_co``
in a type annotation, so putting an equivalent covariant TypeVar back is
enough. Nothing else in torch or schnetpack is touched.
"""

from __future__ import annotations

import typing


def apply() -> None:
    import torch.utils.data.dataloader as dataloader

    if not hasattr(dataloader, "T_co"):
        dataloader.T_co = typing.TypeVar("T_co", covariant=True)


apply()
