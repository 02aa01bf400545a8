"""Read-ahead of small files (artfs/cache/prefetch.py) on S3 with a delay per
request: ``tar c`` of a version of many small files through the mount, cold
cache, read-ahead on and off, against ``tar c`` of the plain directory.

    python -m bench.bench_prefetch                      # 2,000 x 4 KiB in 20 dirs, 20 ms
    python -m bench.bench_prefetch --files 500 --delay 0.05

SeaweedFS (``weed mini``) on loopback behind tests/faultproxy.py, which
delays every request by ``--delay`` seconds (an object store's latency);
both are stopped at the end. Each mount has a cache of its own (cold) and
``ARTFS_PREFETCH_WORKERS=0`` for its daemon (read-ahead off) or not. Prints
figures and ratios, asserts nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

from artfs.api import Api
from bench.common import base_parser, drop_caches, report, workdir
from tests.faultproxy import FaultProxy, Faults
from tests.mounting import mounted
from tests.s3server import start_seaweedfs, stop_seaweedfs


def make_dataset(root: Path, files: int, size: int, dirs: int) -> None:
    per_dir = max(1, files // dirs)
    for i in range(files):
        d = root / f"d{i // per_dir:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.bin").write_bytes(hashlib.shake_256(f"pf:{i}".encode()).digest(size))


def tar(cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run("tar cf - . | cat > /dev/null", shell=True, cwd=cwd, check=True)
    return time.perf_counter() - start


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--dirs", type=int, default=20)
    p.add_argument("--size", type=int, default=4 << 10)
    p.add_argument("--delay", type=float, default=0.02, help="seconds added to every request")
    args = p.parse_args()
    with workdir(args.dir, args.keep) as base:
        server, proc = start_seaweedfs(base / "seaweedfs", volume_size_mb=256, max_volumes=50)
        try:
            src = base / "data" / "small"
            make_dataset(src, args.files, args.size, args.dirs)
            url = server.url("bench")
            env = {**os.environ, **server.env()}
            os.environ.update(server.env())
            Api(store=url, cache=str(base / "put-cache")).put([src], "bench/small")
            with FaultProxy(server.port, Faults(delay=1.0, delay_seconds=args.delay)) as proxy:
                env = {**env, **server.env(proxy.url), "ARTFS_CONFIG": str(base / "none.toml")}
                drop_caches(True)
                plain = tar(src)
                print(
                    f"{args.files:,} x {args.size} B in {args.dirs} dirs, "
                    f"S3 +{args.delay * 1000:.0f} ms a request"
                )
                env.pop("ARTFS_PREFETCH_WORKERS", None)
                for workers in ("0", ""):  # "": the daemon's default
                    name = f"w{workers}"
                    mount_env = {**env, "ARTFS_PREFETCH_WORKERS": workers} if workers else env
                    with mounted(
                        base / f"mnt-{name}",
                        store_url=url,
                        cache_dir=base / f"cache-{name}",
                        state_dir=base / f"state-{name}",
                        env=mount_env,
                    ) as m:
                        version = m.path / "bench/small/v0"
                        os.listdir(version)  # the manifest: fetched before timing
                        before = m.stats()
                        t = tar(version)
                        s = m.stats()
                        label = "off" if workers else "on"
                        report(
                            f"tar c through the mount, cold, read-ahead {label}",
                            t,
                            baseline=plain,
                            baseline_label="plain",
                        )
                        print(
                            f"   opens {s['opens'] - before['opens']:,}, on the event loop "
                            f"{s['opens_now'] - before['opens_now']:,}, fetches "
                            f"{s['fetches'] - before['fetches']:,}, read-ahead {s['prefetch']}, "
                            f"most requests at once at the proxy {proxy.max_inflight}"
                        )
        finally:
            stop_seaweedfs(proc)


if __name__ == "__main__":
    main()
