"""Writing a version through the mount: ``cp -r`` into staging plus ``touch .commit``.

    python -m bench.bench_commit                         # 1 GiB in 5,000 files
    python -m bench.bench_commit --size 64M --files 500  # quick

1. ``cp -r`` of the tree into ``staging/``, then ``touch staging/.commit``,
   against ``cp -r`` of the same tree to a plain local directory (and that
   plus ``sync``, since a commit returns only once the version is durable),
   measured in the same run. The commit step alone is shown too.
2. A ``.base`` commit: ``echo latest > .base``, rewrite 10% of the files,
   commit: seconds, and the bytes and blobs that went into the store,
   against the first commit.

Ratios are artfs time / plain time (>1 is slower). Prints figures, asserts nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.common import (
    base_parser,
    cp_r,
    drop_caches,
    human,
    make_tree,
    parse_size,
    report,
    timed,
    workdir,
)
from tests.mounting import mounted


def store_blobs(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (store / "blobs").rglob("xxh128:*")}


def touch_commit(staging: Path) -> None:
    r = subprocess.run(["touch", str(staging / ".commit")], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"commit failed: {r.stderr}\n{(staging / '.status').read_text()}")


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--size", default="1G", help="total bytes (default 1G)")
    p.add_argument("--files", type=int, default=5000, help="number of files (default 5000)")
    p.add_argument("--changed", type=float, default=0.10, help="fraction rewritten for .base")
    args = p.parse_args()
    total = parse_size(args.size)
    per_file = max(1, total // args.files)
    cold = not args.warm

    with workdir(args.dir, args.keep) as base:
        src = base / "src"
        nbytes = make_tree(src, args.files, per_file)
        print(f"tree: {args.files} files of {human(per_file)} = {human(nbytes)}", flush=True)
        store, cache, state = base / "store", base / "cache", base / "state"
        env = dict(os.environ, ARTFS_CONFIG=str(base / "config.toml"))

        print("\n== cp -r into staging, then touch .commit", flush=True)
        drop_caches(cold)
        plain = cp_r(src, base / "plain")
        drop_caches(cold)
        plain_sync = cp_r(src, base / "plain", sync=True)
        report("cp -r to a local directory", plain, nbytes=nbytes)
        report("cp -r to a local directory + sync", plain_sync, nbytes=nbytes)
        subprocess.run(["rm", "-rf", str(base / "plain")], check=True)

        with mounted(
            base / "mnt", store_url=str(store), cache_dir=cache, state_dir=state, env=env
        ) as m:
            (m.path / "bench").mkdir()
            (m.path / "bench/data").mkdir()
            staging = m.path / "bench/data/staging"
            drop_caches(cold)
            t_cp = timed(lambda: subprocess.run(["cp", "-r", f"{src}/.", str(staging)], check=True))
            t_commit = timed(lambda: touch_commit(staging))
            report("cp -r into staging", t_cp, nbytes=nbytes, baseline=plain)
            report("touch .commit (the commit alone)", t_commit, nbytes=nbytes)
            report(
                "cp -r + commit",
                t_cp + t_commit,
                nbytes=nbytes,
                baseline=plain,
                more={"cp -r + sync": plain_sync},
            )
            print(f"  {(staging / '.status').read_text().splitlines()[0]}")
            hashed = [x for x in m.log_text().splitlines() if "hashed as written" in x]
            if hashed:
                print(f"  {hashed[-1].split(': ', 1)[1]}")

            print(f"\n== .base commit with {args.changed:.0%} of the files rewritten", flush=True)
            before = store_blobs(store)
            files = sorted(x for x in src.rglob("*.bin"))
            step = max(1, round(1 / args.changed)) if args.changed > 0 else len(files) + 1
            changed = files[::step]

            def edit() -> None:
                (staging / ".base").write_text("latest\n")
                for f in changed:
                    (staging / f.relative_to(src)).write_bytes(os.urandom(per_file))

            t_edit = timed(edit)
            t_base = timed(lambda: touch_commit(staging))
            after = store_blobs(store)
            new = {d: s for d, s in after.items() if d not in before}
            written = sum(new.values())
            report(f"write {len(changed)} changed files", t_edit, nbytes=len(changed) * per_file)
            report(
                "touch .commit (.base)",
                t_base,
                baseline=t_commit,
                baseline_label="first commit",
            )
            print(
                f"  bytes written to the store: {human(written)} in {len(new)} blobs "
                f"({written / nbytes:.1%} of the tree; changed data "
                f"{human(len(changed) * per_file)})"
            )
            print(f"  {(staging / '.status').read_text().splitlines()[0]}", flush=True)


if __name__ == "__main__":
    main()
