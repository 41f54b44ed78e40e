"""Readers for trainers: PyTorch-compatible datasets over actprep shards, with the sampling
of the TSN and I3D / non-local literature. torch and webdataset in, no Beam.

``tsn_indices`` and ``clip_indices`` (numpy only) are imported at once; ``ActprepDataset``
and ``collate`` import torch, so they load on first use. Usage: docs/READER.md.
"""
from actprep.readers.sampling import clip_indices, tsn_indices

__all__ = ["ActprepDataset", "clip_indices", "collate", "tsn_indices"]


def __getattr__(name: str):
    if name in ("ActprepDataset", "collate"):
        from actprep.readers import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'actprep.readers' has no attribute {name!r}")
