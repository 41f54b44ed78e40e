"""Versions written into every sample so that readers can tell layouts apart."""
from importlib import metadata

LAYOUT_VERSION = 1

try:
    ACTPREP_VERSION = metadata.version("actprep")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    ACTPREP_VERSION = "0+unknown"
