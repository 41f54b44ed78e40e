"""Readers for trainers: PyTorch-compatible datasets over actprep shards, with the sampling
of the TSN and I3D / non-local literature and an epoch order that splits evenly across DDP
ranks and resumes at any sample. torch in, no Beam (webdataset only for ``streaming=True``).

``tsn_indices`` and ``clip_indices`` (numpy only) are imported at once; ``ActprepDataset``,
``make_loader`` and ``collate`` import torch, so they load on first use. Usage:
docs/READER.md.
"""
from actprep.readers.sampling import clip_indices, tsn_indices

__all__ = ["ActprepDataset", "clip_indices", "collate", "make_loader", "tsn_indices"]


def __getattr__(name: str):
    if name in ("ActprepDataset", "collate", "make_loader"):
        from actprep.readers import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'actprep.readers' has no attribute {name!r}")
