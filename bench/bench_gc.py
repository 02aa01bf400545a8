"""``artfs gc`` and ``artfs check`` on a big store, and what the gc protocol adds to a commit.

    python -m bench.bench_gc                 # 1,000 versions, 200,000 blobs; local and SeaweedFS
    python -m bench.bench_gc --small         # 50 versions, 5,000 blobs
    python -m bench.bench_gc --small --stores local

1. A store of ``--versions`` versions holding ``--blobs`` distinct small blobs
   (each version: its own new files plus all of the previous version's, so
   deduplication is everywhere), half of the versions then deleted. Built
   through the registry and the store interface directly (the same format a
   put writes, without hashing the same bytes through a put 1,000 times).
2. The real CLI in a fresh process with an empty cache, on that store:
   ``gc --dry-run``, ``check``, ``check --read-data``, ``gc`` (which sweeps
   the deleted half). Seconds and the process's peak RSS.
3. A 5,000-file commit (``Api.put``, 4 KiB files) with the protocol (shared
   lock: one create-only put, one listing, one delete; the latest repair and
   the highest-live-version read) against the same commit with the lock
   replaced by a no-op, alternated (order flipped each round), median of 5;
   the ratio is with / without. The lock's own cost (acquire + release,
   median of 20) is shown too, as a fraction of the commit: the two-commit
   difference is within the noise of a shared machine.

Prints figures, asserts nothing.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from artfs.api import Api
from artfs.digest import digest_bytes
from artfs.manifest import ManifestBuilder
from artfs.objects import ObjectStore, open_store
from artfs.repo import Repo, Version, commit, layout
from artfs.repo.locks import SHARED
from bench.common import base_parser, human, make_tree, workdir
from tests.s3server import start_seaweedfs, stop_seaweedfs

THREADS = 16


def build_store(store: ObjectStore, cache: Path, versions: int, blobs: int) -> Repo:
    """``versions`` versions over ``blobs`` distinct blobs; the older half then deleted
    (so about half of the blobs become garbage)."""
    repo = Repo.open(store, str(cache))
    repo.create_artifact("proj", "big")
    per_version = max(1, blobs // versions)
    previous: list[tuple[str, int, str]] = []
    datas = {}
    for n in range(versions):
        own = []
        for i in range(per_version):
            data = f"v{n} blob {i} ".encode() * 8
            d = digest_bytes(data)
            datas[d] = data
            own.append((f"v{n}/f{i:05d}", len(data), d))
        b = ManifestBuilder()
        for path, size, d in previous + own:
            b.add_file(path, size, d)
        mf = cache / f"m{n}.sqlite"
        b.write(mf)
        md = digest_bytes(mf.read_bytes())
        with cf.ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda kv: store.put(layout.blob_key(kv[0]), kv[1]), datas.items()))
        datas.clear()
        store.put_file(layout.blob_key(md), mf)
        mf.unlink()
        files = previous + own
        repo.create_version_record(
            Version(
                "proj",
                "big",
                -1,
                md,
                b.tree_digest(),
                time.time(),
                sum(s for _, s, _ in files),
                len(files),
            )
        )
        repo.advance_latest("proj", "big", n)
        previous = own
    for n in range(versions // 2):
        repo.delete_version(repo.version("proj", "big", n), delete_aliases=True)
    return repo


def measure_cli(url: str, base: Path, label: str) -> None:
    env = dict(os.environ, ARTFS_STORE=url, ARTFS_CONFIG=str(base / "none.toml"))
    for args in (
        ["gc", "--grace", "0", "--force", "--dry-run"],
        ["check"],
        ["check", "--read-data"],
        ["gc", "--grace", "0", "--force"],
    ):
        cache = base / f"cache-{label}-{'-'.join(a.strip('-') for a in args)}"
        # Each command in its own child process so that ru_maxrss is its own.
        probe = subprocess.run(
            [sys.executable, "-c", _CHILD, url, str(cache), *args],
            env=env,
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            sys.exit(f"{args} failed:\n{probe.stderr}")
        seconds, peak, last = probe.stdout.strip().split("\t", 2)
        print(
            f"{label:<6} artfs {' '.join(args):<36} {float(seconds):8.2f} s  "
            f"peak RSS {human(int(peak)):>10}   {last[:90]}",
            flush=True,
        )


# Runs one CLI command in a grandchild and reports its time and peak RSS.
_CHILD = r"""
import resource, subprocess, sys, time
url, cache, *args = sys.argv[1:]
start = time.perf_counter()
p = subprocess.run([sys.executable, "-m", "artfs.cli", "--store", url, "--cache", cache, *args],
                   capture_output=True, text=True)
seconds = time.perf_counter() - start
if p.returncode not in (0, 1):
    sys.stderr.write(p.stderr); sys.exit(1)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
last = (p.stdout.strip().splitlines() or [p.stderr.strip()])[-1]
print(f"{seconds}\t{peak}\t{last}")
"""


class _NoLock:
    """The shared lock replaced by nothing: the commit as it was before the protocol."""

    def __init__(self, *a: object, **k: object) -> None:
        pass

    def __enter__(self) -> _NoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def check(self) -> None:
        pass


def measure_commit_cost(url: str, base: Path, label: str, files: int) -> None:
    api = Api(store=url, cache=str(base / f"cache-commit-{label}"))
    real = commit.StoreLock
    with_lock: list[float] = []
    without: list[float] = []
    for rep in range(5):
        for protocol in (True, False) if rep % 2 == 0 else (False, True):
            src = base / f"tree-{label}-{rep}-{protocol}"
            make_tree(src, files, 4096)
            commit.StoreLock = real if protocol else _NoLock  # type: ignore[misc]
            try:
                start = time.perf_counter()
                api.put([src], f"proj/commit{rep}{int(protocol)}")
                (with_lock if protocol else without).append(time.perf_counter() - start)
            finally:
                commit.StoreLock = real  # type: ignore[misc]
    w, wo = statistics.median(with_lock), statistics.median(without)
    lock_times = []
    for _ in range(20):
        start = time.perf_counter()
        with real(api.repo.store, SHARED, "bench") as lock:
            lock.check()
        lock_times.append(time.perf_counter() - start)
    lk = statistics.median(lock_times)
    print(
        f"{label:<6} put of {files} files (4 KiB): with protocol {w:.3f} s, without {wo:.3f} s: "
        f"{w / wo:.3f}x ({(w - wo) * 1000:+.0f} ms); the shared lock alone "
        f"{lk * 1000:.1f} ms = {lk / wo:.4f} of the commit",
        flush=True,
    )


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="50 versions, 5,000 blobs, 500-file commit")
    p.add_argument("--versions", type=int, default=None)
    p.add_argument("--blobs", type=int, default=None)
    p.add_argument("--commit-files", type=int, default=None)
    p.add_argument("--stores", default="local,s3", help="local, s3 or both (default)")
    args = p.parse_args()
    versions = args.versions or (50 if args.small else 1000)
    blobs = args.blobs or (5000 if args.small else 200_000)
    commit_files = args.commit_files or 5000
    kinds = args.stores.split(",")
    with workdir(args.dir, args.keep) as base:
        servers = contextlib.ExitStack()
        with servers:
            urls = {}
            if "local" in kinds:
                urls["local"] = str(base / "store")
            if "s3" in kinds:
                server, proc = start_seaweedfs(
                    base / "seaweedfs", volume_size_mb=256, max_volumes=200
                )
                servers.callback(stop_seaweedfs, proc)
                os.environ.update(server.env())
                urls["s3"] = server.url("bench")
            os.environ["ARTFS_CONFIG"] = str(base / "none.toml")
            for label, url in urls.items():
                start = time.perf_counter()
                (base / f"build-{label}").mkdir()
                build_store(open_store(url), base / f"build-{label}", versions, blobs)
                print(
                    f"{label:<6} store: {versions} versions (older half deleted), {blobs} blobs, "
                    f"built in {time.perf_counter() - start:.1f} s",
                    flush=True,
                )
                measure_cli(url, base, label)
                measure_commit_cost(url, base, label, commit_files)


if __name__ == "__main__":
    main()
