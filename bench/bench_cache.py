"""What the cache's integrity costs: stamp checks on reads, `get` placement, daemon memory.

    python -m bench.bench_cache           # 1 GiB file; get of 1 GiB in 5,000 files; 100,000 staged
    python -m bench.bench_cache --small   # 256 MiB; 64 MiB in 500 files; 5,000 staged
    python -m bench.bench_cache --base d9f6c83 --files 0   # against another commit

1. Read throughput through the mount, page cache dropped for the file before
   each pass (so every 1 MiB read reaches the daemon and its stamp check),
   against the same read by the code of ``--base`` (default a34dab1,
   exported with ``git archive`` into a temp directory and mounted with
   ``PYTHONPATH`` pointing there), and by this code with the stamp checked
   within one open every 0.2 s (``ARTFS_READER_CHECK_INTERVAL=0.2``) instead
   of after every read.
   Local store served directly, and ``--via-cache``. Passes alternate; the
   best of each counts.
2. ``artfs get`` of a version (blobs already cached): default (reflink where
   the filesystem can, else copy), copy forced, and ``--link``, each against
   ``cp -r`` of the same tree on the same disk.
3. The daemon's RSS (and its count of nodes in memory) idle, after staging
   many small files through the mount, once the kernel dropped its dentries
   (``drop_caches``, so it forgets its inodes) while they are staged, after
   committing them, and after dropping the dentries again; for this code and
   the ``--base`` code (which counts only the nodes the kernel holds, not
   those its directories keep).

Prints figures and ratios (>1 is slower); asserts nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from artfs import materialize
from artfs.api import Api
from bench.bench_mount import read_file, rss_kib
from bench.common import (
    base_parser,
    cp_r,
    human,
    local_store_env,
    make_tree,
    parse_size,
    report,
    workdir,
)
from tests.mounting import Mount, mounted

BASE_COMMIT = "a34dab1"
REPO = Path(__file__).resolve().parent.parent


def export_base(dest: Path, commit: str = BASE_COMMIT) -> Path | None:
    """The tree of ``commit`` in ``dest`` (no worktree: nothing in .git changes)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "artfs"], capture_output=True
    )
    if archive.returncode != 0:
        print(f"(cannot export {commit}: {archive.stderr.decode().strip()})")
        return None
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def _env_for(env: dict[str, str], code: Path | None) -> dict[str, str]:
    out = dict(env)
    if code is not None:
        out["PYTHONPATH"] = str(code)
    return out


def _mount(base: Path, name: str, store: str, env: dict[str, str], *args: str):
    return mounted(
        base / name,
        store_url=store,
        cache_dir=Path(env["ARTFS_CACHE"]),
        state_dir=base / f"state-{name}",
        env=env,
        args=args,
        check_log=False,
    )


def _drop_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def reads(
    base: Path, api: Api, env: dict[str, str], size: int, code: Path | None, base_commit: str
) -> None:
    print(f"\n== read of one {human(size)} file through the mount, page cache dropped", flush=True)
    src = base / "big"
    src.mkdir()
    block = os.urandom(64 << 20)
    with open(src / "big.bin", "wb") as f:
        for off in range(0, size, len(block)):
            f.write(block[: min(len(block), size - off)])
    api.put([src], "bench/big")
    shutil.rmtree(src)
    store = str(api.repo.store.url)
    for mode, args in (("local store, served directly", ()), ("--via-cache", ("--via-cache",))):
        best: dict[str, float] = {}
        interval_env = {**env, "ARTFS_READER_CHECK_INTERVAL": "0.2"}
        with (
            _mount(base, "new", store, env, *args) as new,
            _mount(base, "every", store, interval_env, *args) as interval,
            _mount(base, "old", store, _env_for(env, code), *args) if code else _nullmount() as old,
        ):
            paths = {
                "now": new.path / "bench/big/v0/big.bin",
                "interval": interval.path / "bench/big/v0/big.bin",
            }
            if old is not None:
                paths[base_commit] = old.path / "bench/big/v0/big.bin"
            for p in paths.values():
                read_file(p)  # verify / fetch once
            for _ in range(5):
                for name, p in paths.items():
                    _drop_file(p)
                    t = read_file(p)
                    best[name] = min(best.get(name, t), t)
        print(f"-- {mode}")
        report("now (stamp checked on every open and after every read)", best["now"], nbytes=size)
        report(
            "now, but checked every 0.2 s within an open",
            best["interval"],
            nbytes=size,
            baseline=best["now"],
            baseline_label="now",
        )
        print(f"   cost of a check per read: {(best['now'] / best['interval'] - 1) * 100:+.1f}%")
        if base_commit in best:
            report(
                f"before ({base_commit})",
                best[base_commit],
                nbytes=size,
                baseline=best["now"],
                baseline_label="now",
            )
            cost = (best["now"] / best[base_commit] - 1) * 100
            print(f"   cost against {base_commit}: {cost:+.1f}%")


class _nullmount:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def gets(base: Path, api: Api, files: int, size: int) -> None:
    total = files * size
    print(f"\n== get of {files:,} files, {human(total)} (blobs cached)", flush=True)
    src = base / "get-src"
    make_tree(src, files, size)
    api.put([src], "bench/get")
    version = api.artifact("bench/get:v0").record
    for d, sz in ((d, sz) for _, sz, d in api.artifact("bench/get:v0").files()):
        api.repo.cache.ensure(d, sz)  # what a first get (or a mount) left in the cache
    baseline = min(cp_r(src, base / "cp-out") for _ in range(2))
    report("cp -r", baseline, nbytes=total)
    for label, link, reflink in (
        ("get (reflink, else copy)", False, True),
        ("get, copy", False, False),
        ("get --link", True, True),
    ):
        materialize.REFLINK = reflink
        best = None
        counts: list[dict[str, int]] = []
        for i in range(2):
            place = materialize.materialize
            out = base / f"get-out-{i}"
            shutil.rmtree(out, ignore_errors=True)
            # A fresh Api per run: a new process hashes a local store's files again.
            fresh = Api(store=str(api.repo.store.url), cache=str(api.repo.cache.root))
            start = time.perf_counter()
            counts.append(place(fresh.repo, version, out, link=link))
            t = time.perf_counter() - start
            best = t if best is None else min(best, t)
        report(label, best, nbytes=total, baseline=baseline)
        print(f"   files: {counts[-1]}")
    materialize.REFLINK = True


def _nodes(m: Mount) -> int:
    """Nodes the daemon keeps in memory (held strongly only, on code that does not say)."""
    s = m.stats()
    return int(s.get("nodes_live", s["nodes"]))


def _forget(m: Mount) -> None:
    """Make the kernel drop its dentries, so it forgets its inodes, until the
    daemon's node count stops falling."""
    last, deadline = -1, time.monotonic() + 30
    while time.monotonic() < deadline:
        Path("/proc/sys/vm/drop_caches").write_text("2")  # dentries and inodes only
        time.sleep(1.0)
        now = _nodes(m)
        if now == last:
            return
        last = now


def staging_rss(
    base: Path,
    api: Api,
    env: dict[str, str],
    files: int,
    code: Path | None,
    base_commit: str,
    forget_every: int = 0,
) -> None:
    print(f"\n== daemon RSS after staging and committing {files:,} files", flush=True)
    if forget_every:
        print(f"   (the kernel's dentries dropped every {forget_every:,} files staged)")
    store = str(api.repo.store.url)
    for name, code_dir in (("now", None), (f"before ({base_commit})", code)):
        if name != "now" and code_dir is None:
            continue
        art = f"a{len(name)}"
        with _mount(base, f"rss-{len(name)}", store, _env_for(env, code_dir)) as m:
            if not (m.path / "rss").exists():
                os.mkdir(m.path / "rss")
            os.mkdir(m.path / "rss" / art)
            staging = m.path / "rss" / art / "staging"
            os.listdir(staging)
            figures = [("idle", rss_kib(m.pid)[0], _nodes(m))]
            start = time.perf_counter()
            for i in range(files):
                d = staging / f"d{i // 1000:03d}"
                if i % 1000 == 0:
                    d.mkdir()
                (d / f"f{i:06d}.txt").write_bytes(b"x%d\n" % i)
                if forget_every and i % forget_every == forget_every - 1:
                    # Memory pressure, as on a busy machine: the kernel forgets.
                    Path("/proc/sys/vm/drop_caches").write_text("2")
            staged = time.perf_counter() - start
            figures.append(("staged", rss_kib(m.pid)[0], _nodes(m)))
            _forget(m)  # while staged: what the daemon keeps once the kernel forgot
            figures.append(("staged, forgotten", rss_kib(m.pid)[0], _nodes(m)))
            start = time.perf_counter()
            (staging / ".commit").touch()
            committed = time.perf_counter() - start
            figures.append(("committed", rss_kib(m.pid)[0], _nodes(m)))
            _forget(m)
            figures.append(("dentries dropped", rss_kib(m.pid)[0], _nodes(m)))
            hwm = rss_kib(m.pid)[1]
        print(f"-- {name}: staged in {staged:.1f} s, committed in {committed:.1f} s", flush=True)
        for label, rss, nodes in figures:
            print(f"   {label:<18} RSS {rss / 1024:7.1f} MiB   nodes in memory {nodes:>8,}")
        print(f"   peak RSS {hwm / 1024:.1f} MiB", flush=True)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="small sizes, for a quick run")
    p.add_argument("--big", default=None, help="read file size (1G; --small 256M; 0 skips)")
    p.add_argument("--files", type=int, default=None, help="files for get (5000; --small 500)")
    p.add_argument("--staged", type=int, default=None, help="files staged (100000; --small 5000)")
    p.add_argument(
        "--forget-every", type=int, default=0, help="drop dentries every N files staged (0: never)"
    )
    p.add_argument("--base", default=BASE_COMMIT, help=f"commit to compare with ({BASE_COMMIT})")
    p.add_argument("--no-base", action="store_true", help="do not compare with another commit")
    args = p.parse_args()
    big = parse_size(args.big or ("256M" if args.small else "1G"))
    files = args.files if args.files is not None else (500 if args.small else 5000)
    get_bytes = (64 << 20) if args.small else (1 << 30)
    staged = args.staged if args.staged is not None else (5000 if args.small else 100_000)
    with workdir(args.dir, args.keep) as base, tempfile.TemporaryDirectory() as tmp:
        code = None if args.no_base else export_base(Path(tmp) / "base", args.base)
        env = local_store_env(base)
        api = Api(store=env["ARTFS_STORE"], cache=env["ARTFS_CACHE"])
        if big:
            reads(base, api, env, big, code, args.base)
        if files:
            gets(base, api, files, get_bytes // files)
        if staged:
            staging_rss(base, api, env, staged, code, args.base, args.forget_every)


if __name__ == "__main__":
    main()
