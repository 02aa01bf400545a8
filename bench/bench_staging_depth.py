"""Cost of depth in staging: directory chains of 2 and 40 levels, per level.

    python -m bench.bench_staging_depth              # 20 chains of each depth
    python -m bench.bench_staging_depth --chains 5   # quick

For each depth, makes ``--chains`` chains of directories with one small file
at every level (mkdir + create + write + close per level), then stats every
level again, in staging and in a plain local directory, in the same run.
Prints seconds per level and the ratio 40-level / 2-level (1.0 means the
cost is linear in depth), and artfs / plain. Asserts nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.common import base_parser, workdir
from tests.mounting import mounted


def build(root: Path, depth: int, chains: int) -> float:
    """Seconds per level to make and then stat ``chains`` chains of ``depth`` levels."""
    start = time.perf_counter()
    for c in range(chains):
        d = root / f"chain{depth}-{c}"
        for level in range(depth):
            d = d / f"l{level}"
            d.mkdir(parents=level == 0)
            (d / "f").write_bytes(b"x")
        for _ in range(depth):
            os.stat(d)
            d = d.parent
    return (time.perf_counter() - start) / (depth * chains)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--chains", type=int, default=20, help="chains of each depth (default 20)")
    args = p.parse_args()
    with workdir(args.dir, args.keep) as base:
        plain = {d: build(base / "plain", d, args.chains) for d in (2, 40)}
        env = dict(os.environ, ARTFS_CONFIG=str(base / "config.toml"))
        with mounted(
            base / "mnt",
            store_url=str(base / "store"),
            cache_dir=base / "cache",
            state_dir=base / "state",
            env=env,
        ) as m:
            (m.path / "bench").mkdir()
            (m.path / "bench/deep").mkdir()
            staging = m.path / "bench/deep/staging"
            artfs = {d: build(staging, d, args.chains) for d in (2, 40)}
        for d in (2, 40):
            print(
                f"depth {d:2d}: staging {artfs[d] * 1e3:7.3f} ms/level, "
                f"plain {plain[d] * 1e3:7.3f} ms/level, {artfs[d] / plain[d]:.1f}x plain",
                flush=True,
            )
        print(
            f"per-level cost, 40 levels / 2 levels: staging {artfs[40] / artfs[2]:.2f}x, "
            f"plain {plain[40] / plain[2]:.2f}x"
        )


if __name__ == "__main__":
    main()
