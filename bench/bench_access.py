"""What access by project visibility costs: a stat of every file of a version.

    python -m bench.bench_access            # 20,000 files
    python -m bench.bench_access --small    # 2,000 files

A mount with ``-o allow_other`` (owners and modes by visibility, version
attributes kept by the kernel for the TTL only) against a plain mount of
the same store, both ``--ttl 1``: the first walk after mounting (every
lookup reaches the daemon), and a walk after the TTL has passed (the plain
mount's kernel still holds every attribute; the shared one asks again).
Rounds alternate; the best of each counts.

Prints figures and ratios (>1 is slower); asserts nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from artfs.api import Api
from bench.common import base_parser, make_tree, report, workdir
from tests.mounting import mounted

TTL = 1.0
ROUNDS = 3


def walk_stat(root: Path) -> int:
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return n


def one_round(base: Path, store: str, env: dict[str, str], shared: bool, i: int) -> tuple:
    args = ["--ttl", str(TTL)] + (["-o", "allow_other"] if shared else [])
    name = f"{'shared' if shared else 'plain'}-{i}"
    with mounted(
        base / name,
        store_url=store,
        cache_dir=Path(env["ARTFS_CACHE"]),
        state_dir=base / f"state-{name}",
        env=env,
        args=args,
        check_log=False,
    ) as m:
        v0 = m.path / "proj/ds/v0"
        t = time.perf_counter()
        n = walk_stat(v0)
        first = time.perf_counter() - t
        time.sleep(TTL + 0.2)
        t = time.perf_counter()
        walk_stat(v0)
        again = time.perf_counter() - t
    return n, first, again


def main() -> None:
    p = base_parser(__doc__ or "")
    p.add_argument("--small", action="store_true", help="2,000 files")
    args = p.parse_args()
    files = 2_000 if args.small else 20_000
    with workdir(args.dir, args.keep) as base:
        env = dict(os.environ)
        store = str(base / "store")
        env.update(
            ARTFS_STORE=store,
            ARTFS_CACHE=str(base / "cache"),
            ARTFS_CONFIG=str(base / "config.toml"),
        )
        make_tree(base / "src", files, 64)
        api = Api(store=store, cache=env["ARTFS_CACHE"])
        api.create_project("proj", "public", "0")
        api.put([base / "src"], "proj/ds")
        best: dict[bool, list[float]] = {False: [1e9, 1e9], True: [1e9, 1e9]}
        n = 0
        for i in range(ROUNDS):
            for shared in (False, True) if i % 2 == 0 else (True, False):
                n, first, again = one_round(base, store, env, shared, i)
                best[shared][0] = min(best[shared][0], first)
                best[shared][1] = min(best[shared][1], again)
        for k, what in enumerate(("first walk (cold)", f"walk after the TTL ({TTL:.0f} s)")):
            plain, shared = best[False][k], best[True][k]
            report(f"stat of {n} files, {what}: plain mount", plain)
            report(
                f"stat of {n} files, {what}: allow_other",
                shared,
                baseline=plain,
                baseline_label="plain mount",
            )


if __name__ == "__main__":
    main()
