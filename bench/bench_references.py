"""Reference entries: committing a 1,000-object prefix, with and without checksums.

    python -m bench.bench_references               # 1,000 objects of 64 KiB on SeaweedFS
    python -m bench.bench_references --small       # 100 objects of 16 KiB

Starts SeaweedFS (``weed mini`` on loopback, stopped by PID at the end),
uploads the objects into a second bucket, and measures in the same run, each
into a fresh store prefix:

1. baseline: ``artfs put`` of the same bytes as plain files (hash + upload);
2. ``artfs put --reference s3://refs/prefix/`` (checksum: every object read
   once and hashed, nothing uploaded);
3. ``artfs put --reference ... --no-checksum`` (one listing: etags only);
4. a read of every reference through ``artfs get`` (fetched from the URI)
   after the etag-only commit, against ``artfs get`` of the plain version.

Ratios are against the plain put (>1 is slower). Prints figures, asserts nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import base_parser, human, make_tree, parse_size, report, workdir


def _run(*args: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "artfs.cli", *args], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"artfs {' '.join(args)} failed: {proc.stderr}")
    return time.perf_counter() - start


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=1000)
    p.add_argument("--size", type=parse_size, default=parse_size("64K"))
    p.add_argument("--small", action="store_true", help="100 objects of 16 KiB")
    args = p.parse_args()
    if args.small:
        args.objects, args.size = 100, 16 << 10
    from tests.s3server import create_bucket, start_seaweedfs, stop_seaweedfs

    with workdir(args.dir, args.keep) as base:
        tree = base / "src"
        total = make_tree(tree, args.objects, args.size)
        files = sorted(tree.rglob("*.bin"))
        server, proc = start_seaweedfs(base / "seaweedfs", volume_size_mb=256)
        try:
            create_bucket(server, "refs")
            env = dict(os.environ, **server.env())
            env.update(ARTFS_CONFIG=str(base / "config.toml"), ARTFS_STATE=str(base / "state"))
            os.environ.update(server.env())
            from artfs.objects.cloud import CloudStore

            refs = CloudStore("s3://refs")
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(
                    pool.map(
                        lambda f: refs.put(f"data/{f.relative_to(tree)}", f.read_bytes()), files
                    )
                )

            def env_for(label: str) -> dict[str, str]:
                return dict(
                    env,
                    ARTFS_STORE=server.url(f"bench-{label}"),
                    ARTFS_CACHE=str(base / f"cache-{label}"),
                )

            print(f"{args.objects} objects of {human(args.size)} ({human(total)}) on SeaweedFS")
            plain = _run("put", str(tree), "-n", "proj/plain", env=env_for("plain"))
            summed = _run(
                "put", "-n", "proj/refs", "--reference", "s3://refs/data/", env=env_for("sum")
            )
            etags = _run(
                "put",
                "-n",
                "proj/refs",
                "--reference",
                "s3://refs/data/",
                "--no-checksum",
                env=env_for("etag"),
            )
            report("artfs put of the files (baseline)", plain, nbytes=total)
            report(
                "put --reference prefix (checksum)",
                summed,
                nbytes=total,
                baseline=plain,
                baseline_label="plain put",
            )
            report(
                "put --reference prefix --no-checksum",
                etags,
                baseline=plain,
                baseline_label="plain put",
            )
            get_plain = _run(
                "get",
                "proj/plain:v0",
                "--root",
                str(base / "out-plain"),
                env=env_for("plain2") | {"ARTFS_STORE": server.url("bench-plain")},
            )
            get_refs = _run(
                "get",
                "proj/refs:v0",
                "--root",
                str(base / "out-refs"),
                env=env_for("etag2") | {"ARTFS_STORE": server.url("bench-etag")},
            )
            report("get of the plain version, cold cache", get_plain, nbytes=total)
            report(
                "get of the etag-only references, cold cache",
                get_refs,
                nbytes=total,
                baseline=get_plain,
                baseline_label="plain get",
            )
            same = all(
                (base / "out-refs" / str(f.relative_to(tree))).read_bytes() == f.read_bytes()
                for f in files[:: max(1, len(files) // 50)]
            )
            print(f"bytes read back equal (sampled): {same}")
        finally:
            stop_seaweedfs(proc)


if __name__ == "__main__":
    main()
