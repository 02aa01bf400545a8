"""artfs: versioned, deduplicated ML artifacts in a plain store, shown as directories.

The API is loaded on first use (PEP 562), so ``import artfs.digest`` does not
load the whole stack.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActiveRun",
    "Api",
    "Artifact",
    "ArtifactEntry",
    "ArtifactVersion",
    "Run",
    "init",
    "log_artifact",
    "use_artifact",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from artfs import api

        return getattr(api, name)
    raise AttributeError(f"module 'artfs' has no attribute {name!r}")
