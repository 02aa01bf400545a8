"""The golden store: a small store made by a fixed script, kept under
``tests/data/golden/store`` so every later artfs must read it back.

``python -m tests.golden`` makes it anew (after a format change, with the
version bumped in doc/FORMAT.md). ``normalized(store)`` is the store's bytes
with what a run cannot fix (times, run ids, lock ids, manifests' SQLite
bytes) replaced by stable stand-ins, so two stores made by the script
compare equal exactly when they follow the same format rules.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent / "data" / "golden"
MTIME_NS = 1_700_000_000_123_456_789
_TIME_KEYS = {"created", "start", "end", "deleted_at", "expires"}
# Fields that say where and by whom the script ran, not what the format is.
_MACHINE_KEYS = {"host", "user", "uid", "cwd", "git_commit"}
_RUN_RE = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")


def _tree(root: Path, files: dict[str, str | bytes], modes: dict[str, int] | None = None) -> Path:
    if root.exists():
        shutil.rmtree(root)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    for rel, mode in (modes or {}).items():
        os.chmod(root / rel, mode)
    for p in sorted(root.rglob("*"), reverse=True):
        os.utime(p, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)
    os.utime(root, ns=(MTIME_NS, MTIME_NS))
    return root


def make(store: Path, work: Path) -> None:
    """The fixed script: every kind of record and entry the format has."""
    from artfs.api import Api
    from artfs.repo import runs

    os.environ.pop("ARTFS_RUN", None)
    api = Api(store=str(store), cache=str(work / "cache"))
    src = _tree(
        work / "src",
        {"README.md": "golden\n", "data/a.bin": bytes(range(256)) * 4, "data/b.txt": "b\n"},
        {"data/b.txt": 0o600},
    )
    os.symlink("data/b.txt", src / "link")
    os.utime(src / "link", ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)
    (src / "empty").mkdir()
    os.utime(src / "empty", ns=(MTIME_NS, MTIME_NS))
    os.utime(src, ns=(MTIME_NS, MTIME_NS))
    api.put([src], "proj/ds", type="dataset", description="first", metadata={"rows": 3})
    (src / "data/b.txt").write_text("b2\n")
    os.utime(src / "data/b.txt", ns=(MTIME_NS, MTIME_NS))
    v1 = api.put([src], "proj/ds", aliases=["best"], metadata={"rows": 4, "acc": 0.5}).version
    api.repo.edit_tags(v1, ["golden"])
    api.repo.set_ttl(v1, 86400.0)
    run = runs.start_run(api.repo, ["python", "train.py"])
    runs.record_use(api.repo, run.id, v1)
    model = _tree(work / "model", {"model.pt": b"\x00weights\x01"})
    api.put([model], "proj/model", type="model", logged_by=run.id)
    runs.finish_run(api.repo, run, 0)
    old = _tree(work / "old", {"gone.txt": "deleted later\n"})
    v = api.put([old], "proj/tmp").version
    api.repo.delete_version(v, delete_aliases=True)


def normalized(store: Path) -> dict[str, Any]:
    """key -> bytes, a record with stable stand-ins, or a manifest's rows."""
    out: dict[str, Any] = {}
    manifests: dict[str, str] = {}
    for p in sorted(store.rglob("*")):
        if not p.is_file():
            continue
        key = p.relative_to(store).as_posix()
        data = p.read_bytes()
        if data.startswith(b"SQLite format 3\x00"):
            db = sqlite3.connect(f"file:{p}?mode=ro&immutable=1", uri=True)
            try:
                info = sorted(db.execute("SELECT key, value FROM info"))
                rows = [list(r) for r in db.execute("SELECT * FROM entries ORDER BY id")]
                schema = [r[0] for r in db.execute("SELECT sql FROM sqlite_master ORDER BY name")]
            finally:
                db.close()
            # Named by its tree digest: SQLite's bytes may differ, its content may not.
            name = f"MANIFEST-{dict(info)['tree']}"
            manifests[p.name] = name
            out[name] = {"schema": schema, "info": info, "entries": rows}
            continue
        out[key] = data
    runs_seen: dict[str, str] = {}

    def stable(text: str) -> str:
        for digest, name in manifests.items():
            text = text.replace(digest, name)
        for run_id in _RUN_RE.findall(text):
            runs_seen.setdefault(run_id, f"RUN{len(runs_seen)}")
            text = text.replace(run_id, runs_seen[run_id])
        return text

    def scrub(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {
                k: "TIME"
                if k in _TIME_KEYS and v is not None
                else "MACHINE"
                if k in _MACHINE_KEYS
                else scrub(v)
                for k, v in obj.items()
            }
        if isinstance(obj, list):
            return [scrub(v) for v in obj]
        return stable(obj) if isinstance(obj, str) else obj

    final: dict[str, Any] = {}
    for key, value in out.items():
        if isinstance(value, bytes) and key.endswith(".json"):
            # The encoding rules (sorted keys, indent 1, trailing newline) are
            # checked on the bytes; then times and ids are replaced.
            record = json.loads(value)
            assert value == json.dumps(record, indent=1, sort_keys=True).encode() + b"\n", key
            value = scrub(record)
        final[stable(key)] = value
    return final


def main() -> None:
    import tempfile

    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        make(store, Path(tmp) / "work")
        if (dest / "store").exists():
            shutil.rmtree(dest / "store")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(store, dest / "store", ignore=shutil.ignore_patterns(".tmp"))
    print(f"wrote {dest / 'store'}")


if __name__ == "__main__":
    main()
