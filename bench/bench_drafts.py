"""Many writers, one version: a shared draft against one ``artfs put`` of the same bytes.

    python -m bench.bench_drafts                  # 8 writers x 500 files of 200 KiB, SeaweedFS
    python -m bench.bench_drafts --small          # 4 writers x 50 files of 64 KiB
    python -m bench.bench_drafts --store local    # a local-directory store

Starts SeaweedFS (``weed mini`` on loopback, stopped by PID at the end) unless
``--store local``. Each writer is its own process with its own cache (a
machine of its own). Measured in the same run, on fresh prefixes:

1. draft: every writer runs ``artfs put SHARD --draft G`` at once, then one
   ``artfs draft finish``; time from the start to the committed version,
   and the finish alone.
2. baseline: one ``artfs put`` of the whole tree (the same bytes).
3. (``--mounts``) the draft through two mounts: the writers split over two
   daemons, each ``cp -r`` of its shards into ``drafts/G/``, then
   ``touch .commit``.

Ratios are draft time / put time (>1 is slower). Prints figures, asserts nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import base_parser, human, make_tree, parse_size, report, workdir


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "artfs.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _ok(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"artfs failed: {err.decode(errors='replace')}")


def run_draft(
    base: Path, shards: list[Path], env: dict[str, str], name: str
) -> tuple[float, float]:
    start = time.perf_counter()
    procs = [
        _cli(
            "put",
            str(shard),
            "-n",
            name,
            "--draft",
            "g",
            env=dict(env, ARTFS_CACHE=str(base / f"cache-w{i}")),
        )
        for i, shard in enumerate(shards)
    ]
    for p in procs:
        _ok(p)
    before_finish = time.perf_counter()
    _ok(_cli("draft", "finish", name, "g", env=dict(env, ARTFS_CACHE=str(base / "cache-f"))))
    end = time.perf_counter()
    return end - start, end - before_finish


def run_put(base: Path, tree: Path, env: dict[str, str], name: str) -> float:
    start = time.perf_counter()
    _ok(_cli("put", str(tree), "-n", name, env=dict(env, ARTFS_CACHE=str(base / "cache-p"))))
    return time.perf_counter() - start


def run_mounts(base: Path, shards: list[Path], env: dict[str, str], store: str) -> float:
    from tests.mounting import mounted

    with (
        mounted(
            base / "m1", store_url=store, cache_dir=base / "mc1", state_dir=base / "ms1", env=env
        ) as m1,
        mounted(
            base / "m2", store_url=store, cache_dir=base / "mc2", state_dir=base / "ms2", env=env
        ) as m2,
    ):
        start = time.perf_counter()
        os.makedirs(m1.path / "proj" / "viamount" / "drafts" / "g")
        procs = []
        for i, shard in enumerate(shards):
            m = (m1, m2)[i % 2]
            dest = m.path / "proj" / "viamount" / "drafts" / "g" / f"w{i}"
            procs.append(subprocess.Popen(["cp", "-r", str(shard), str(dest)]))
        for p in procs:
            if p.wait() != 0:
                raise SystemExit("cp -r into the draft failed")
        subprocess.run(["touch", str(m1.path / "proj/viamount/drafts/g/.commit")], check=True)
        return time.perf_counter() - start


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--files", type=int, default=500, help="files per writer")
    p.add_argument("--size", type=parse_size, default=parse_size("200K"))
    p.add_argument("--small", action="store_true", help="4 writers x 50 files of 64 KiB")
    p.add_argument("--store", choices=("s3", "local"), default="s3")
    p.add_argument("--mounts", action="store_true", help="also through two mounts")
    args = p.parse_args()
    if args.small:
        args.writers, args.files, args.size = 4, 50, 64 << 10
    with workdir(args.dir, args.keep) as base:
        shards = []
        total = 0
        for i in range(args.writers):
            shard = base / "src" / f"w{i}"
            total += make_tree(shard, args.files, args.size)
            # Distinct names per writer: the shards are disjoint paths.
            for f in sorted(shard.rglob("*.bin")):
                f.rename(f.with_name(f"w{i}-{f.name}"))
            shards.append(shard)
        whole = base / "whole"
        whole.mkdir()
        for i, shard in enumerate(shards):
            subprocess.run(["cp", "-r", str(shard), str(whole / f"w{i}")], check=True)
        stop = None
        if args.store == "s3":
            from tests.s3server import start_seaweedfs, stop_seaweedfs

            server, proc = start_seaweedfs(base / "seaweedfs", volume_size_mb=256)
            stop = lambda: stop_seaweedfs(proc)  # noqa: E731

            def store_for(label: str) -> str:
                return server.url(f"bench-{label}")

            env_extra = server.env()
        else:

            def store_for(label: str) -> str:
                return str(base / f"store-{label}")

            env_extra = {}
        try:
            env = dict(os.environ, **env_extra)
            env.update(ARTFS_CONFIG=str(base / "config.toml"), ARTFS_STATE=str(base / "state"))

            def env_for(label: str) -> dict[str, str]:
                return dict(env, ARTFS_STORE=store_for(label))

            print(
                f"{args.writers} writers x {args.files} files of {human(args.size)} "
                f"({human(total)}) on {args.store}"
            )
            # A store (bucket prefix) each, so neither dedups against the other.
            put = run_put(base, whole, env_for("put"), "proj/whole")
            draft, finish = run_draft(base, shards, env_for("draft"), "proj/drafted")
            report("one artfs put", put, nbytes=total)
            report(
                "draft: writers at once + finish",
                draft,
                nbytes=total,
                baseline=put,
                baseline_label="one put",
            )
            report("  of which the finish", finish, baseline=put, baseline_label="one put")
            if args.mounts:
                shard_dirs = [whole / f"w{i}" for i in range(args.writers)]
                via = run_mounts(base, shard_dirs, env_for("mount"), store_for("mount"))
                report(
                    "draft through two mounts (cp -r + .commit)",
                    via,
                    nbytes=total,
                    baseline=put,
                    baseline_label="one put",
                )
        finally:
            if stop is not None:
                stop()


if __name__ == "__main__":
    main()
