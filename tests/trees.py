"""Building source trees for tests."""

from __future__ import annotations

import os
from pathlib import Path


def make_tree(
    root: Path,
    files: dict[str, bytes | str],
    *,
    executable: tuple[str, ...] = (),
    symlinks: dict[str, str] | None = None,
    empty_dirs: tuple[str, ...] = (),
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        os.chmod(p, 0o755 if rel in executable else 0o644)
    for rel, target in (symlinks or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)
    for rel in empty_dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)
    return root


def read_tree(root: Path) -> dict[str, tuple]:
    """path -> ('f', bytes, executable) | ('l', target) | ('d',) for comparing trees."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("d",)
            else:
                out[rel] = ("f", p.read_bytes(), bool(p.stat().st_mode & 0o100))
    return out


def store_snapshot(store) -> dict[str, tuple[int, str]]:
    """key -> (size, etag) of every object: equal snapshots mean an unchanged store."""
    return {o.key: (o.size, o.etag) for o in store.iter_objects("")}


def blob_keys(store) -> set[str]:
    return {o.key for o in store.iter_objects("blobs/")}


def damage_in_place(path: Path, offset: int = 0) -> None:
    """Flip one byte in place, same size, and put the mtime back: only the
    ctime (which no user can set) tells."""
    st = path.stat()
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    os.chmod(path, st.st_mode & 0o777)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
