"""artfs: versioned, deduplicated ML artifacts in a plain store, shown as directories."""

from artfs.api import Api, ArtifactVersion

__all__ = ["Api", "ArtifactVersion"]
__version__ = "0.1.0"
