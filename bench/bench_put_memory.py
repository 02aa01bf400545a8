"""Peak memory of ``artfs put`` of many tiny files (issue 11: aim <= 300 MB for 1,000,000).

    python -m bench.bench_put_memory                 # 1,000,000 files
    python -m bench.bench_put_memory --small         # 20,000 files (a quick run)
    python -m bench.bench_put_memory --files 200000

The tree (distinct bytes in every file, 1,000 to a directory) and the store
are made under ``--dir`` (default on tmpfs, /dev/shm, when it exists: the
disk is not what is measured). Each put runs in a process of its own: the
CLI, as users run it; its peak RSS is that child's ``ru_maxrss``. A second
put of the same tree (nothing new to upload) is measured too. Prints
figures, asserts nothing.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import base_parser, workdir


def make_tiny_tree(root: Path, files: int, per_dir: int = 1000) -> None:
    for i in range(files):
        d = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / f"f{i:07d}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"file {i}\n".encode())
        finally:
            os.close(fd)


def put_peak(src: Path, env: dict[str, str], name: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one ``artfs put`` in a fresh process."""
    code = (
        "import resource, sys; from artfs.cli import main\n"
        "try:\n    rc = main(sys.argv[1:])\n"
        "finally:\n"
        "    print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, "put", str(src), "-n", name],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"put failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    peak_kb = next(
        int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK")
    )
    return seconds, peak_kb / 1024


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.set_defaults(dir=Path("/dev/shm/artfs-bench-put") if Path("/dev/shm").is_dir() else None)
    p.add_argument("--small", action="store_true", help="20,000 files")
    p.add_argument("--files", type=int, default=None, help="how many files (default 1,000,000)")
    p.add_argument("--once", action="store_true", help="only the first put")
    args = p.parse_args()
    files = args.files or (20_000 if args.small else 1_000_000)
    with workdir(args.dir, args.keep) as base:
        src = base / "tree"
        start = time.perf_counter()
        make_tiny_tree(src, files)
        print(f"made {files:,} files in {time.perf_counter() - start:.1f} s", flush=True)
        env = dict(os.environ)
        env.update(
            ARTFS_STORE=str(base / "store"),
            ARTFS_CACHE=str(base / "cache"),
            ARTFS_CONFIG=str(base / "no-config.toml"),
        )
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        labels = ["first put (every blob new)", "second put (same tree, nothing new)"]
        for label in labels[:1] if args.once else labels:
            seconds, peak = put_peak(src, env, "bench/tiny")
            print(
                f"artfs put {files:,} tiny files, {label}: {seconds:.1f} s, "
                f"peak RSS {peak:.0f} MB ({peak * 2**20 / files:.0f} B/file; "
                f"this bench's own RSS {base_rss:.0f} MB)",
                flush=True,
            )


if __name__ == "__main__":
    main()
