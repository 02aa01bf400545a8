"""artfs on S3, GCS and Azure (emulators on loopback) against raw obstore transfers
of the same bytes on the same service.

    python -m bench.bench_s3                          # 1 GiB in 5,000 files; 2 GiB; 4 GiB TTFB
    python -m bench.bench_s3 --files 500 --small-total 64M --big 256M --ttfb-big 1G   # quick
    python -m bench.bench_s3 --services gs,az         # some services only

Starts each service's server on free loopback ports (S3: SeaweedFS ``weed
mini``; GCS: fake-gcs-server behind the tests' XML-API front; Azure: Azurite),
stopped by PID at the end, then, each measured in the same run against a raw
baseline on the same server:

1. put and get of many small files (``--files`` files, ``--small-total``
   bytes): ``Api.put`` (hash, upload missing blobs 8 at a time, manifest,
   version record) against raw ``obstore.put`` of the same files, 8 threads;
   ``download`` with a cold cache against raw ``obstore.get`` into files.
2. put and get of one big file (``--big``; on the emulators at most
   ``--emulator-big``, as they hold objects in memory): ``Api.put`` (hash +
   multipart upload) against raw multipart ``obstore.put`` of the file;
   ``download`` (parallel ranged parts into the cache, verified, then linked)
   against a raw single-stream ``obstore.get`` into a file.
3. cold sequential read of the big file through the mount (lazy ranged reads
   with readahead) against a raw parallel ranged download of the same object
   (8 MiB ranges, 8 at a time) into memory.
4. (S3 only) time to first byte of a 40 MiB and a ``--ttfb-big`` file
   (zeros) through the mount, cold cache, against a raw 4 KiB ranged GET.

Ratios are artfs time / raw time (>1 is slower); a table per service closes
the run. Prints figures, asserts nothing.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import obstore

from artfs.api import Api
from artfs.repo import layout
from bench.common import base_parser, drop_caches, human, make_tree, parse_size, report, workdir
from tests.azureserver import start_azurite
from tests.gcsserver import start_gcs, stop_gcs, stop_process
from tests.mounting import mounted
from tests.s3server import start_seaweedfs, stop_seaweedfs, store_ttfb_version

THREADS = 8
PART = 8 << 20


def files_under(root: Path) -> list[Path]:
    return sorted(Path(d) / f for d, _, names in os.walk(root) for f in names)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ranged_download(store: Any, key: str, size: int) -> None:
    """The raw baseline for a lazy read: 8 MiB ranges, 8 at a time, into memory."""

    def one(off: int) -> int:
        return len(obstore.get_range(store, key, start=off, length=min(PART, size - off)))

    with cf.ThreadPoolExecutor(THREADS) as pool:
        got = sum(pool.map(one, range(0, size, PART)))
    assert got == size


def read_file(path: Path) -> int:
    buf = bytearray(1 << 20)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def first_byte(path: Path, offset: int) -> float:
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 4096, offset)
    finally:
        os.close(fd)
    return time.perf_counter() - start


@dataclass
class Target:
    """One service under test: its server (``url(prefix)``, ``raw(prefix)``)."""

    name: str
    server: Any
    env: dict[str, str]
    stop: Callable[[], None]
    big: int  # the big file's size on this service


def start(service: str, base: Path, args) -> Target:
    if service == "s3":
        server, proc = start_seaweedfs(base / "seaweedfs", volume_size_mb=256, max_volumes=200)
        return Target("S3", server, server.env(), lambda: stop_seaweedfs(proc), args.big)
    big = min(args.big, args.emulator_big)
    if service == "gs":
        server, procs = start_gcs(base / "fake-gcs")
        return Target("GCS", server, server.env(), lambda: stop_gcs(procs), big)
    if service == "az":
        server, proc = start_azurite(base / "azurite", in_memory=False)
        return Target("Azure", server, server.env(), lambda: stop_process(proc), big)
    raise SystemExit(f"unknown service {service!r} (s3, gs or az)")


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--small-total", type=parse_size, default=parse_size("1G"))
    p.add_argument("--big", type=parse_size, default=parse_size("2G"))
    p.add_argument("--emulator-big", type=parse_size, default=parse_size("512M"))
    p.add_argument("--ttfb-big", type=parse_size, default=parse_size("4G"))
    p.add_argument("--services", default="s3,gs,az")
    args = p.parse_args()
    cold = not args.warm

    tables: dict[str, dict[str, tuple[float, float]]] = {}
    with workdir(args.dir, args.keep) as base:
        os.environ["ARTFS_CONFIG"] = str(base / "none.toml")
        for service in args.services.split(","):
            where = base / service
            where.mkdir()
            target = start(service, where, args)
            saved = dict(os.environ)
            try:
                os.environ.update(target.env)
                print(f"\n=== {target.name} ===")
                tables[target.name] = run(args, where, target, cold)
            finally:
                os.environ.clear()
                os.environ.update(saved)
                target.stop()
    print_table(tables)


def print_table(tables: dict[str, dict[str, tuple[float, float]]]) -> None:
    """One row per service: artfs seconds / raw seconds = ratio, for each measurement."""
    columns = list(next(iter(tables.values()), {}))
    print("\nartfs s / raw obstore s (ratio) per service")
    print(f"{'service':<8}" + "".join(f"{c:>26}" for c in columns))
    for name, row in tables.items():
        cells = [f"{a:.2f}/{r:.2f} ({a / r:.2f}x)" if r else "-" for a, r in row.values()]
        print(f"{name:<8}" + "".join(f"{c:>26}" for c in cells))


def run(args, base: Path, target: Target, cold: bool) -> dict[str, tuple[float, float]]:
    """Sections 1-4 on one service; returns {measurement: (artfs s, raw s)}."""
    server = target.server
    url = server.url("bench")
    raw = server.raw("raw")
    size = args.small_total // args.files
    table: dict[str, tuple[float, float]] = {}
    print(f"{target.name} on 127.0.0.1:{server.port}; page cache dropped: {drop_caches(cold)}")

    # 1. many small files ------------------------------------------------------
    small = base / "small"
    make_tree(small, args.files, size)
    paths = files_under(small)
    nbytes = size * len(paths)
    print(f"\n{len(paths)} files of {human(size)} ({human(nbytes)})")

    def raw_put_small() -> None:
        with cf.ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda q: obstore.put(raw, f"small/{q.name}", q), paths))

    def raw_get_small() -> None:
        out = base / "raw-small"
        out.mkdir()

        def one(q: Path) -> None:
            (out / q.name).write_bytes(obstore.get(raw, f"small/{q.name}").bytes())

        with cf.ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(one, paths))

    drop_caches(cold)
    t_raw = timed(raw_put_small)
    report("raw obstore put, 8 threads", t_raw, nbytes=nbytes)
    api = Api(store=url, cache=str(base / "cache-put"))
    drop_caches(cold)
    t = timed(lambda: api.put([small], "bench/small"))
    table["put small files"] = (t, t_raw)
    report(
        "artfs put (hash + upload + commit)",
        t,
        nbytes=nbytes,
        baseline=t_raw,
        baseline_label="raw put",
    )
    drop_caches(cold)
    t_raw = timed(raw_get_small)
    report("raw obstore get, 8 threads", t_raw, nbytes=nbytes)
    getter = Api(store=url, cache=str(base / "cache-get-small"))
    drop_caches(cold)
    t = timed(lambda: getter.artifact("bench/small:v0").download(base / "got-small"))
    table["get small files"] = (t, t_raw)
    report(
        "artfs get, cold cache (fetch + verify + place)",
        t,
        nbytes=nbytes,
        baseline=t_raw,
        baseline_label="raw get",
    )

    # 2. one big file ------------------------------------------------------------
    big_dir = base / "big"
    big_dir.mkdir()
    big = big_dir / "big.bin"
    big_size = target.big
    with open(big, "wb") as f:
        for _ in range(big_size // (64 << 20)):
            f.write(os.urandom(64 << 20))
        f.write(os.urandom(big_size % (64 << 20)))
    print(f"\none file of {human(big_size)}")
    drop_caches(cold)
    t_raw = timed(
        lambda: obstore.put(raw, "big.bin", big, chunk_size=16 << 20, max_concurrency=THREADS)
    )
    report("raw obstore multipart put", t_raw, nbytes=big_size)
    drop_caches(cold)
    t = timed(lambda: api.put([big_dir], "bench/big"))
    table["put big file"] = (t, t_raw)
    report(
        "artfs put (hash + multipart upload)",
        t,
        nbytes=big_size,
        baseline=t_raw,
        baseline_label="raw put",
    )

    def raw_get_big() -> None:
        with open(base / "raw-big.bin", "wb") as f:
            for chunk in obstore.get(raw, "big.bin").stream(min_chunk_size=8 << 20):
                f.write(chunk)

    drop_caches(cold)
    t_raw = timed(raw_get_big)
    report("raw obstore get, one stream", t_raw, nbytes=big_size)
    getter = Api(store=url, cache=str(base / "cache-get-big"))
    drop_caches(cold)
    t = timed(lambda: getter.artifact("bench/big:v0").download(base / "got-big"))
    table["get big file"] = (t, t_raw)
    report(
        "artfs get, cold cache (ranged parts, verify)",
        t,
        nbytes=big_size,
        baseline=t_raw,
        baseline_label="raw get",
    )

    # 3. cold sequential read through the mount ------------------------------------
    digest = api.artifact("bench/big:v0").files()[0][2]
    blob = server.raw("bench")
    print(f"\ncold sequential read of {human(big_size)} through the mount")
    drop_caches(cold)
    t_raw = timed(lambda: ranged_download(blob, layout.blob_key(digest), big_size))
    report("raw ranged download (8 MiB x 8 parallel)", t_raw, nbytes=big_size)
    with mounted(
        base / "mnt-read",
        store_url=url,
        cache_dir=base / "cache-mount",
        state_dir=base / "state-read",
        env=dict(os.environ),
    ) as m:
        path = m.path / "bench/big/v0/big.bin"
        path.stat()
        drop_caches(cold)
        t = timed(lambda: read_file(path))
        table["cold read, mount"] = (t, t_raw)
        report(
            "mount, cold cache, 1 MiB reads",
            t,
            nbytes=big_size,
            baseline=t_raw,
            baseline_label="raw ranged",
        )

    # 4. time to first byte --------------------------------------------------------
    if target.name == "S3":  # the 4 GiB object is streamed in with S3's unsigned payload
        ttfb_big(args, base, server)
    return table


def ttfb_big(args, base: Path, server) -> None:
    print(f"\ntime to first byte: 40 MiB and {human(args.ttfb_big)}, mount, cold cache")
    ttfb = store_ttfb_version(server, base / "cache-ttfb", big_size=args.ttfb_big)
    big_key = layout.blob_key(ttfb.big_digest)
    raw_store = server.raw(ttfb.url.rsplit("/", 1)[1])
    raw = [
        timed(lambda: obstore.get_range(raw_store, big_key, start=1 << 20, length=4096))
        for _ in range(5)
    ]
    t_raw = statistics.median(raw)
    report("raw 4 KiB ranged GET", t_raw)
    results: dict[str, list[float]] = {"small.bin": [], "big.bin": []}
    for i in range(3):
        with mounted(
            base / f"mnt-ttfb{i}",
            store_url=ttfb.url,
            cache_dir=base / f"cache-ttfb{i}",
            state_dir=base / f"state-ttfb{i}",
            env=dict(os.environ),
        ) as m:
            v0 = m.path / "proj/ttfb/v0"
            for name in results:
                size = (v0 / name).stat().st_size  # metadata first: time the bytes only
                results[name].append(first_byte(v0 / name, size // 2))
    for name, label in (("small.bin", "40 MiB"), ("big.bin", human(args.ttfb_big))):
        report(
            f"mount, first 4 KiB of {label}",
            statistics.median(results[name]),
            baseline=t_raw,
            baseline_label="raw GET",
        )
    ratio = statistics.median(results["big.bin"]) / statistics.median(results["small.bin"])
    print(f"{'TTFB big / small':<44} {ratio:8.2f}x")


if __name__ == "__main__":
    main()
