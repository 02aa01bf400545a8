"""Reading through the mount against reading the same bytes straight from disk.

    python -m bench.bench_mount                     # 2 GiB file; 100,000 x 4 KiB; 1,000,000 files
    python -m bench.bench_mount --big 256M --files 5000 --million 20000    # quick

1. One big file read sequentially through the mount: cold (nothing cached,
   page cache dropped), warm (blob cached or verified, page cache dropped) and
   hot (read again), each against reading the store's own file under the same
   cache state. Done for the default local mount (serving the store's file,
   verified once per mount) and for ``--via-cache`` (fetched into the cache).
   Prints the read request sizes the daemon saw.
2. A version of many small files: ``find``, ``ls -lR`` and
   ``tar cf - . | cat >/dev/null`` through the mount against the same tree
   in a plain directory, cold and warm.
3. The daemon's RSS with a version of a million files mounted and listed.

Ratios are mount time / plain time (>1 is slower). Prints figures, asserts nothing.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from artfs.api import Api
from artfs.manifest import ManifestBuilder
from artfs.repo import commit_tree, hash_files
from artfs.repo.layout import blob_key
from bench.common import (
    base_parser,
    drop_caches,
    human,
    local_store_env,
    make_tree,
    parse_size,
    report,
    workdir,
)
from tests.mounting import Mount, mounted

CHUNK = 1 << 20


def mount_bench(base: Path, name: str, api: Api, env: dict[str, str], *args: str):
    """The bench's store and cache, mounted on ``base/name`` (a context manager)."""
    return mounted(
        base / name,
        store_url=str(api.repo.store.url),
        cache_dir=api.repo.cache.root,
        state_dir=base / "state",
        env=env,
        args=args,
    )


def read_file(path: Path) -> float:
    """Seconds to read ``path`` start to end in 1 MiB reads."""
    buf = bytearray(CHUNK)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - start


def shell(cmd: str, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, shell=True, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else "0"
    return int(fields.get("VmRSS", 0)), int(fields.get("VmHWM", 0))


def read_sizes(m: Mount) -> str:
    s = m.stats()
    top = sorted(s["read_sizes"].items(), key=lambda kv: -kv[1])[:3]
    sizes = ", ".join(f"{human(int(k))} x{v}" for k, v in top)
    return f"max {human(s['max_read'])}; most common: {sizes}"


def big_file(base: Path, api: Api, size: int, cold: bool, env: dict[str, str]) -> None:
    print(f"\n== one file of {human(size)}, read sequentially in 1 MiB reads", flush=True)
    src = base / "big-src" / "big.bin"
    src.parent.mkdir()
    block = os.urandom(64 << 20)
    with open(src, "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
    builder = ManifestBuilder()
    sources = hash_files([("big.bin", src)], builder)
    commit_tree(api.repo, "bench", "big", builder, sources, move=True)
    digest = next(iter(sources))
    store_file = api.repo.store.local_path(blob_key(digest))
    assert store_file is not None
    cache = api.repo.cache

    for mode, args in (("local store, served directly", ()), ("--via-cache", ("--via-cache",))):
        print(f"-- {mode}", flush=True)
        with mount_bench(base, "mnt-big", api, env, *args) as m:
            path = m.path / "bench/big/v0/big.bin"
            os.stat(path)
            drop_caches(cold)
            direct_cold = read_file(store_file)
            report("direct disk read, cold", direct_cold, nbytes=size)
            drop_caches(cold)
            t = read_file(path)
            what = "verify once + read" if not args else "fetch into cache + read"
            report(
                f"mount, cold ({what})",
                t,
                nbytes=size,
                baseline=direct_cold,
                baseline_label="direct",
            )
            s = m.stats()
            if s["verify_seconds"]:
                print(f"   (verifying the store's file took {s['verify_seconds']:.2f} s)")
            drop_caches(cold)
            direct_warm = read_file(store_file if not args else cache.path(digest))
            report("direct disk read, cold again", direct_warm, nbytes=size)
            drop_caches(cold)
            t = read_file(path)
            report(
                "mount, warm (cached, page cache dropped)",
                t,
                nbytes=size,
                baseline=direct_warm,
                baseline_label="direct",
            )
            direct_hot = read_file(store_file if not args else cache.path(digest))
            report("direct read, hot", direct_hot, nbytes=size)
            t = read_file(path)
            report(
                "mount, hot (second read)",
                t,
                nbytes=size,
                baseline=direct_hot,
                baseline_label="direct",
            )
            print(f"   read requests seen by the daemon: {read_sizes(m)}")
            print(f"   fetches into the cache: {m.stats()['fetches']}", flush=True)
        if args:
            cache.path(digest).unlink(missing_ok=True)


def small_files(base: Path, api: Api, files: int, size: int, cold: bool, env: dict[str, str]):
    print(f"\n== a version of {files:,} files of {human(size)}", flush=True)
    tree = base / "small"
    make_tree(tree, files, size)
    start = time.perf_counter()
    api.put([tree], "bench/small")
    print(f"   (put took {time.perf_counter() - start:.1f} s)")
    with mount_bench(base, "mnt-small", api, env) as m:
        version = m.path / "bench/small/v0"
        commands = [
            ("find", "find . > /dev/null"),
            ("ls -lR", "ls -lR > /dev/null"),
            ("tar cf - . | cat", "tar cf - . | cat > /dev/null"),
        ]
        for label, cmd in commands:
            for state in ("cold", "warm"):
                if state == "cold":
                    drop_caches(cold)
                plain = shell(cmd, tree)
                if state == "cold":
                    drop_caches(cold)
                mount = shell(cmd, version)
                report(f"{label}, plain directory, {state}", plain)
                report(f"{label}, mount, {state}", mount, baseline=plain, baseline_label="plain")
        print(f"   daemon: {m.stats()['opens']:,} opens, {m.stats()['reads']:,} reads", flush=True)


def million(base: Path, api: Api, files: int, env: dict[str, str]) -> None:
    print(f"\n== daemon memory with a version of {files:,} files", flush=True)
    one = base / "one.txt"
    one.write_text("x")
    builder = ManifestBuilder()
    sources = hash_files([("f", one)], builder)
    digest = next(iter(sources))
    builder.remove("f")
    per_dir = 1000
    for i in range(files):
        builder.add_file(f"d{i // per_dir:04d}/f{i:07d}", 1, digest)
    start = time.perf_counter()
    commit_tree(api.repo, "bench", "million", builder, sources)
    print(f"   (manifest built and committed in {time.perf_counter() - start:.1f} s)")
    with mount_bench(base, "mnt-million", api, env) as m:
        idle, _ = rss_kib(m.pid)
        # find lists every directory (readdirplus brings every entry's
        # attributes); du then stats every file. ls -lR would add two xattr
        # round trips per file (SELinux label, ACL) and measure those instead.
        t = shell("find . > /dev/null", m.path / "bench/million/v0")
        report(f"find over {files:,} files through the mount", t)
        t = shell("du -s > /dev/null", m.path / "bench/million/v0")
        report("du -s (stat of every file)", t)
        rss, hwm = rss_kib(m.pid)
        print(
            f"   daemon RSS: {idle / 1024:.1f} MiB mounted, {rss / 1024:.1f} MiB after listing "
            f"everything (peak {hwm / 1024:.1f} MiB)",
            flush=True,
        )


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--big", default="2G", help="size of the big file (0 to skip)")
    p.add_argument("--files", type=int, default=100_000, help="small files (0 to skip)")
    p.add_argument("--size", default="4K", help="size of each small file")
    p.add_argument("--million", type=int, default=1_000_000, help="files for RSS (0 to skip)")
    args = p.parse_args()
    cold = not args.warm
    if cold and not drop_caches(True):
        print("(cannot drop the page cache: not root? figures are warm)")
    with workdir(args.dir, args.keep) as base:
        env = local_store_env(base)
        api = Api(store=env["ARTFS_STORE"], cache=env["ARTFS_CACHE"])
        if parse_size(args.big):
            big_file(base, api, parse_size(args.big), cold, env)
        if args.files:
            small_files(base, api, args.files, parse_size(args.size), cold, env)
        if args.million:
            million(base, api, args.million, env)


if __name__ == "__main__":
    main()
