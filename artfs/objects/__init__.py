"""Store backends. ``open_store`` is the one place that turns a URL into a backend."""

from __future__ import annotations

from artfs.objects.base import (
    Listing,
    NotFound,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StoreError,
)

OBJECT_STORE_SCHEMES = ("s3", "gs", "az", "azure", "abfs", "abfss")


def open_store(url: str) -> ObjectStore:
    """A backend for ``url``: a local path (or ``file://``), or an object-store URL."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in OBJECT_STORE_SCHEMES:
        from artfs.objects.cloud import CloudStore

        return CloudStore(url)
    if sep and scheme != "file":
        raise StoreError(
            f"unsupported store URL {url!r} (use a path, file://, s3://, gs:// or az://)"
        )
    from artfs.objects.local import LocalStore

    return LocalStore(rest if sep else url)


__all__ = [
    "Listing",
    "NotFound",
    "ObjectInfo",
    "ObjectStore",
    "PreconditionFailed",
    "StoreError",
    "open_store",
]
