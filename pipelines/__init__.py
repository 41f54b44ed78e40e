"""Beam jobs, shard writing and commit, the CLI."""
