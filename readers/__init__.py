"""Readers for trainers: PyTorch-compatible datasets over actprep shards, with the sampling
of the TSN and I3D / non-local literature. torch and webdataset in, no Beam."""
