"""``artfs put`` and ``artfs get`` against ``cp -r`` of the same tree, and the
bytes a second put writes when 40% of the files changed.

    python -m bench.bench_store                      # 1 GiB in 5,000 files; 100,000 x 4 KiB
    python -m bench.bench_store --big 64M --big-files 500 --small-files 5000   # quick

Each figure is printed with its ratio to ``cp -r`` measured in the same run
(>1 means slower). Page caches are dropped before every measurement unless
``--warm``. Prints figures, asserts nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from artfs.objects import open_store
from bench.common import (
    artfs_cmd,
    base_parser,
    change_files,
    cp_r,
    drop_caches,
    human,
    make_tree,
    parse_size,
    report,
    run,
    timed,
    workdir,
)


def store_bytes(url: str) -> tuple[int, int]:
    """(objects, bytes) in the store, counted through the store interface."""
    infos = list(open_store(url).iter_objects(""))
    return len(infos), sum(o.size for o in infos)


def scenario(base: Path, name: str, files: int, size: int, change: float, cold: bool) -> None:
    total = files * size
    print(f"\n== {name}: {files:,} files of {human(size)} = {human(total)}", flush=True)
    tree = base / name / "tree"
    make_tree(tree, files, size)
    env = dict(os.environ)
    store = str(base / name / "store")
    env.update(
        ARTFS_STORE=store,
        ARTFS_CACHE=str(base / name / "cache"),
        ARTFS_CONFIG=str(base / "no-config.toml"),
    )
    ref = f"bench/{name}"

    drop_caches(cold)
    cp = cp_r(tree, base / name / "cp")
    report("cp -r (baseline)", cp, nbytes=total)
    drop_caches(cold)
    cp_sync = cp_r(tree, base / name / "cp", sync=True)
    report("cp -r && sync", cp_sync, nbytes=total, baseline=cp)
    shutil.rmtree(base / name / "cp")

    drop_caches(cold)
    t = timed(lambda: run(artfs_cmd("put", str(tree), "-n", ref), env))
    report(
        "artfs put (new artifact)", t, nbytes=total, baseline=cp, more={"cp -r && sync": cp_sync}
    )
    drop_caches(cold)
    t = timed(lambda: run(artfs_cmd("get", ref, "--root", str(base / name / "get1")), env))
    report("artfs get (empty cache: store -> cache -> link)", t, nbytes=total, baseline=cp)
    drop_caches(cold)
    t = timed(lambda: run(artfs_cmd("get", ref, "--root", str(base / name / "get2")), env))
    report("artfs get (cached: hard links)", t, nbytes=total, baseline=cp)
    drop_caches(cold)
    t = timed(lambda: run(artfs_cmd("get", ref, "--root", str(base / name / "get2")), env))
    report("artfs get (again, files already there)", t, nbytes=total, baseline=cp)
    shutil.rmtree(base / name / "get1")
    shutil.rmtree(base / name / "get2")

    changed = change_files(tree, files, change)
    changed_bytes = sum(p.stat().st_size for p in changed)
    objects_before, bytes_before = store_bytes(store)
    drop_caches(cold)
    t = timed(lambda: run(artfs_cmd("put", str(tree), "-n", ref), env))
    report(f"artfs put ({change:.0%} of files changed)", t, nbytes=changed_bytes, baseline=cp)
    objects_after, bytes_after = store_bytes(store)
    written = bytes_after - bytes_before
    print(
        f"  second put wrote {human(written)} in {objects_after - objects_before:,} objects "
        f"to the store: {written / total:.3f} of the tree ({human(total)}), "
        f"{written / changed_bytes:.3f} of the changed files ({human(changed_bytes)})",
        flush=True,
    )
    shutil.rmtree(base / name)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--big", default="1G", help="total size of the large-file tree")
    p.add_argument("--big-files", type=int, default=5000)
    p.add_argument("--small-files", type=int, default=100_000)
    p.add_argument("--small-size", default="4K")
    p.add_argument("--change", type=float, default=0.4, help="fraction changed for put 2")
    p.add_argument("--only", choices=["big", "small"], help="run one of the two trees")
    args = p.parse_args()
    cold = not args.warm
    with workdir(args.dir, args.keep) as base:
        if not drop_caches(cold) and cold:
            print("(cannot drop the page cache: not root; figures are warm)")
        if args.only in (None, "big"):
            big = parse_size(args.big)
            scenario(base, "big", args.big_files, big // args.big_files, args.change, cold)
        if args.only in (None, "small"):
            size = parse_size(args.small_size)
            scenario(base, "small", args.small_files, size, args.change, cold)


if __name__ == "__main__":
    main()
