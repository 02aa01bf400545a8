"""The issue-11 table: what users feel, each op against its baseline from the same run.

    python -m bench.bench_peers_ops            # medium, small and big at the issue's sizes
    python -m bench.bench_peers_ops --small    # the same shapes, scaled down (a quick run)

Datasets are made deterministically (seeded bytes), so two runs measure the
same trees. Each row prints its time, its ratio to the baseline measured
in the same run (the plain directory, ``cp -r``, ``cp -r && sync``), and the
FUSE requests the daemon answered for it by opcode (count, seconds spent),
and those answered on the event loop rather than in a worker thread, from
the ``user.artfs.stats`` xattr.

Read rows run each command twice in a row on the plain directory, then on
the mount (then on rclone): "cold" is a first pass after dropping the page
cache, "second pass" the one right after it, compared with the plain
directory's own second pass. A daemon's memory (artfs's open manifests,
rclone's directory cache) is not dropped: only the first row, ``tar c``,
meets daemons that have not listed the tree yet.

Peers, when installed (``bash bench/peers_setup.sh`` installs both; the
rows are skipped with a note otherwise): rclone 1.60 (``rclone mount`` of
the plain directories, ``--vfs-cache-mode off --read-only``) for the read
and dd rows, each with the artfs ratio next to it; dvc 3.67 (found as
``$ARTFS_BENCH_DVC``, on PATH, or in /opt/artfs-bench/dvc) for ``dvc add``
of medium in a fresh ``dvc init --no-scm`` project and for the same 40%
rewrite in place + ``dvc add`` again; the artfs put and ``.base`` rows
print their ratio to them. dvc runs as a CLI, so its rows include its
start-up (about a second); ``artfs put medium (cli, fresh store)`` is the
like-for-like row.

Prints figures, asserts nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from artfs.api import Api
from bench.common import (
    artfs_cmd,
    base_parser,
    cp_r,
    drop_caches,
    human,
    local_store_env,
    remove_tree,
    report,
    run,
    settle,
    workdir,
)
from tests.mounting import Mount, mounted

SHAPES = {
    # name: (files, size, dirs)
    "full": {"medium": (5_000, 200 << 10, 5), "small": (100_000, 4 << 10, 100), "big": 2 << 30},
    "small": {"medium": (500, 200 << 10, 5), "small": (10_000, 4 << 10, 100), "big": 256 << 20},
}


def make_dataset(root: Path, files: int, size: int, dirs: int, seed: str) -> None:
    """``files`` files of ``size`` bytes in ``dirs`` directories; bytes from a seeded hash."""
    per_dir = max(1, files // dirs)
    for i in range(files):
        d = root / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        block = hashlib.shake_256(f"{seed}:{i}".encode()).digest(size)
        (d / f"f{i:06d}.bin").write_bytes(block)


def make_big(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = hashlib.shake_256(b"big").digest(16 << 20)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


def shell(cmd: str, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, shell=True, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


class Requests:
    """FUSE requests the daemon answered between two points, by opcode."""

    def __init__(self, m: Mount) -> None:
        self.m = m
        self.before, self.now_before = self._ops()

    def _ops(self) -> tuple[dict[str, list[float]], dict[str, int]]:
        stats = self.m.stats()
        return dict(stats.get("ops", {})), dict(stats.get("now", {}))

    def line(self, files: int | None = None) -> str:
        after, now_after = self._ops()
        now = {op: n - self.now_before.get(op, 0) for op, n in now_after.items()}
        now_text = ", ".join(f"{op} {n:,}" for op, n in sorted(now.items()) if n > 0)
        parts = []
        for op, (n, t) in sorted(after.items(), key=lambda kv: -kv[1][0]):
            n0, t0 = self.before.get(op, (0, 0.0))
            if op == "getxattr":
                n0 += 2  # reading the stats: ERANGE on a 128-byte buffer, then the read
            dn, dt = n - n0, t - t0
            if dn <= 0:
                continue
            per = f" ({dn / files:.2f}/file)" if files else ""
            parts.append(f"{op} {dn:,}{per} {dt:.2f}s")
        line = "   requests: " + (", ".join(parts) or "none")
        return line + (f"\n   answered on the event loop: {now_text}" if now_text else "")


def mount_of(base: Path, name: str, env: dict[str, str]) -> Any:
    return mounted(
        base / name,
        store_url=env["ARTFS_STORE"],
        cache_dir=Path(env["ARTFS_CACHE"]),
        state_dir=base / "state",
        env=env,
    )


@contextlib.contextmanager
def rclone_mount(src: Path, mnt: Path) -> Iterator[Path]:
    """``src`` read-only through ``rclone mount`` of a local path with no VFS
    cache (the issue's "rclone (no cache)"), unmounted and stopped in ``finally``."""
    mnt.mkdir(parents=True)
    config = mnt.parent / "rclone.conf"  # empty: the :local: remote needs none
    config.touch()
    log_path = mnt.parent / f"{mnt.name}.log"
    cmd = ["rclone", "mount", f":local:{src}", str(mnt), "--config", str(config)]
    cmd += ["--read-only", "--vfs-cache-mode", "off"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"rclone mount of {src} did not come up: see {log_path}")
            time.sleep(0.1)
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=10)
            subprocess.run(["fusermount3", "-uz", str(mnt)], stderr=subprocess.DEVNULL)


def commit_through_staging(m: Mount, src: Path, artifact: str, files: int, label: str = "") -> None:
    art = m.path / "bench" / artifact
    art.mkdir(parents=True, exist_ok=True)
    staging = art / "staging"
    copies = [src.parent / f"{src.name}-copy", src.parent / f"{src.name}-copy-synced"]
    plain = cp_r(src, copies[0])
    synced = cp_r(src, copies[1], sync=True)
    settle(src.parent)  # the copies stay until after the timed run: no deletes just before it
    os.sync()  # the commit's syncfs then writes back this copy, not the baselines'
    r = Requests(m)
    start = time.perf_counter()
    subprocess.run(["cp", "-r", f"{src}/.", str(staging)], check=True)
    (staging / ".commit").touch()
    t = time.perf_counter() - start
    report(
        f"cp -r {src.name} into staging + .commit{label}",
        t,
        baseline=plain,
        more={"cp -r && sync": synced},
    )
    print(r.line(files), flush=True)
    for copy in copies:
        remove_tree(copy)


def rewrite_40(root: Path) -> None:
    """Rewrite 40% of the files under ``root`` in place with new seeded bytes of
    the same size: the same files and bytes wherever ``root`` holds medium."""
    for k, p in enumerate(sorted(root.rglob("*.bin"))):
        if k % 5 < 2:
            p.write_bytes(hashlib.shake_256(f"new:{k}".encode()).digest(p.stat().st_size))


def rewrite_base(m: Mount, src: Path, files: int, dvc_seconds: float | None = None) -> None:
    staging = m.path / "bench" / "medium-st" / "staging"
    r = Requests(m)
    start = time.perf_counter()
    (staging / ".base").write_text("latest\n")
    rewrite_40(staging)
    (staging / ".commit").touch()
    t = time.perf_counter() - start
    report(".base + rewrite 40% of medium + .commit", t, more={"dvc": dvc_seconds})
    print(r.line(files), flush=True)


def two_passes(
    cmd: str, where: Path, cold: bool, m: Mount | None = None, files: int | None = None
) -> list[tuple[float, str]]:
    """The first pass of ``cmd`` in ``where`` (after dropping the page cache when
    ``cold``) and the second pass right after it: (seconds, requests line) each,
    the line of the daemon's requests when ``m`` is the mount it runs on."""
    drop_caches(cold)
    passes = []
    for _ in range(2):
        r = Requests(m) if m else None
        t = shell(cmd, where)
        passes.append((t, r.line(files) if r else ""))
    return passes


def read_rows(
    m: Mount,
    tree: Path,
    version: Path,
    files: int,
    cold: bool,
    rclone: Path | None,
    ro: Mount | None = None,
) -> None:
    """Each command twice on the plain directory, then twice through the mount
    (through a read-only mount of the same store, ``-o ro``, and through
    rclone): a second pass is compared with the plain directory's own second
    pass."""
    rows = [
        ("tar c", "tar cf - . | cat > /dev/null"),
        ("find", "find . > /dev/null"),
        ("ls -lR", "ls -lR > /dev/null"),
    ]
    for label, cmd in rows:
        plain = two_passes(cmd, tree, cold)
        sides = [("the mount", two_passes(cmd, version, cold, m, files))]
        if ro:
            ro_version = ro.path / version.relative_to(m.path)
            sides.append(("the read-only mount", two_passes(cmd, ro_version, cold, ro, files)))
        peer = two_passes(cmd, rclone, cold) if rclone else []
        for i, state in enumerate(("cold", "second pass")):
            base_t = plain[i][0]
            for where, passes in sides:
                t, line = passes[i]
                report(
                    f"{label} small through {where}, {state}",
                    t,
                    baseline=base_t,
                    baseline_label="plain",
                )
                print(line, flush=True)
            if peer:
                t = sides[0][1][i][0]
                report(
                    f"{label} small through rclone, {state}",
                    peer[i][0],
                    baseline=base_t,
                    baseline_label="plain",
                    note=f"(artfs {t / base_t:.2f}x plain)",
                )


DD = "dd bs=1M if={} of=/dev/null status=none"


def put_rows(api: Api, base: Path, medium: Path, small: Path, dvc_add: float | None) -> None:
    """``artfs put`` of medium (API, then CLI in a fresh store, as dvc runs) and
    of small when it was made. A put writes every byte durably, so ``cp -r &&
    sync`` is its floor."""

    def timed_put(src: Path, name: str) -> float:
        remove_tree(base / "data" / "copy")
        settle(base)
        start = time.perf_counter()
        api.put([src], name)
        return time.perf_counter() - start

    plain = cp_r(medium, base / "data" / "copy")
    synced = cp_r(medium, base / "data" / "copy", sync=True)
    more = {"cp -r && sync": synced, "dvc add": dvc_add}
    t = timed_put(medium, "bench/medium-put")
    report("artfs put medium (api)", t, baseline=plain, more=more)
    cli_env = local_store_env(base / "put-cli")
    start = time.perf_counter()
    run(artfs_cmd("put", "-n", "bench/medium-put", str(medium)), env=cli_env)
    t = time.perf_counter() - start
    report("artfs put medium (cli, fresh store)", t, baseline=plain, more=more)
    if small.exists():  # many small files: the cost per file
        synced = cp_r(small, base / "data" / "copy", sync=True)
        t = timed_put(small, "bench/small")
        report("artfs put small (api)", t, baseline=synced, baseline_label="cp -r && sync")


def dd_pass(path: Path, hot: bool, cold: bool, m: Mount | None = None) -> tuple[float, str]:
    """One ``dd`` of ``path``: right after another (page cache hot) or after
    dropping the page cache; (seconds, the daemon's requests line when ``m``)."""
    cmd = DD.format(path)
    if hot:
        shell(cmd, Path("/"))
    else:
        drop_caches(cold)
    r = Requests(m) if m else None
    t = shell(cmd, Path("/"))
    return t, r.line() if r else ""


def dd_rows(
    m: Mount, big: Path, version_file: Path, size: int, cold: bool, rclone_file: Path | None
) -> None:
    os.stat(version_file)
    shell(DD.format(version_file), Path("/"))  # first read: fetch/verify once
    for state in ("page cache hot", "cold"):
        hot = state == "page cache hot"
        plain, _ = dd_pass(big, hot, cold)
        t, line = dd_pass(version_file, hot, cold, m)
        label = f"dd bs=1M {human(size)}"
        report(f"{label}, {state}", t, nbytes=size, baseline=plain, baseline_label="plain")
        print(line, flush=True)
        if rclone_file:
            report(
                f"{label} through rclone, {state}",
                dd_pass(rclone_file, hot, cold)[0],
                nbytes=size,
                baseline=plain,
                baseline_label="plain",
                note=f"(artfs {t / plain:.2f}x plain)",
            )


def lever_rows(
    base: Path,
    env: dict[str, str],
    lever: str,
    medium: Path,
    small: Path,
    mf: int,
    sf: int,
    medium_only: bool = False,
    index: int = 0,
) -> None:
    """The staging rows again, on a daemon with one lever turned on or off
    ("off:none": the defaults again, to see how much the machine drifted)."""
    how, _, name = lever.partition(":")
    # "off:a+b": both levers off on one mount (--levers splits on commas)
    lever_env = dict(env, **{f"ARTFS_BENCH_{how.upper()}": name.replace("+", ",")})
    tag = f"{how}-{name.replace('+', '-')}-{index}"
    with mount_of(base, f"mnt-{tag}", lever_env) as m:
        commit_through_staging(m, medium, f"medium-{tag}", mf, f" [{name} {how}]")
        if not medium_only:
            commit_through_staging(m, small, f"small-{tag}", sf, f" [{name} {how}]")


DVC_VENV = Path("/opt/artfs-bench/dvc/bin/dvc")  # where bench/peers_setup.sh puts it


def dvc_path() -> str | None:
    """$ARTFS_BENCH_DVC, else a dvc on PATH, else the one bench/peers_setup.sh installs."""
    for path in (os.environ.get("ARTFS_BENCH_DVC"), shutil.which("dvc"), str(DVC_VENV)):
        if path and os.access(path, os.X_OK):
            return path
    return None


def dvc_rows(dvc: str, proj: Path, medium: Path) -> dict[str, float]:
    """``dvc add`` of medium in a fresh ``dvc init --no-scm`` project (against
    the ``cp -r`` that put medium there), then the 40% rewrite of the artfs
    ``.base`` row in place and ``dvc add`` again. Returns the seconds of each."""
    # No analytics, no update checks: network only to 127.0.0.1.
    env = dict(os.environ, DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(proj / "site-cache"))

    def dvc_run(*args: str) -> float:
        start = time.perf_counter()
        subprocess.run([dvc, *args], cwd=proj, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start

    proj.mkdir(parents=True)
    dvc_run("init", "--no-scm", "-q")
    dvc_run("config", "core.analytics", "false")
    dvc_run("config", "core.check_update", "false")
    version = subprocess.run([dvc, "--version"], env=env, capture_output=True, text=True)
    plain = cp_r(medium, proj / medium.name)
    seconds = {"add": dvc_run("add", "-q", medium.name)}
    report(f"dvc add medium (dvc {version.stdout.strip()})", seconds["add"], baseline=plain)
    start = time.perf_counter()
    rewrite_40(proj / medium.name)
    seconds["rewrite"] = time.perf_counter() - start + dvc_run("add", "-q", medium.name)
    report("dvc: rewrite 40% of medium in place + dvc add", seconds["rewrite"])
    return seconds


def peer_mount(base: Path, src: Path) -> AbstractContextManager[Path | None]:
    """``src`` through rclone when it is installed, else None."""
    if shutil.which("rclone") is None:
        return contextlib.nullcontext()
    return rclone_mount(src, base / "rclone" / src.name)


def peers_note() -> None:
    if shutil.which("rclone") is None:
        print("(rclone is not installed: its rows are skipped; bench/peers_setup.sh installs it)")
    if dvc_path() is None:
        print(
            f"(dvc is not installed, nor at {DVC_VENV} or $ARTFS_BENCH_DVC: its rows are skipped)"
        )


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="scaled-down datasets (a quick run)")
    p.add_argument("--only", default="", help="comma-separated: staging,put,read,dd")
    p.add_argument(
        "--medium-only", action="store_true", help="staging rows: medium only, not small"
    )
    p.add_argument(
        "--levers",
        default="",
        help="comma-separated levers the staging rows are also run with, each on a mount "
        "of its own in the same run: on:writeback-cache, off:syncfs-names; "
        "off:a+b turns two off on one mount",
    )
    args = p.parse_args()
    shape = SHAPES["small" if args.small else "full"]
    only = set(filter(None, args.only.split(",")))
    cold = not args.warm
    if cold and not drop_caches(True):
        print("(cannot drop the page cache: not root? figures are warm)")
    peers_note()
    with workdir(args.dir, args.keep) as base:
        env = local_store_env(base)
        api = Api(store=env["ARTFS_STORE"], cache=env["ARTFS_CACHE"])
        mf, ms, md = shape["medium"]
        sf, ss, sd = shape["small"]
        medium, small = base / "data" / "medium", base / "data" / "small"
        make_dataset(medium, mf, ms, md, "medium")
        if not (args.medium_only and only and only <= {"staging", "put"}):
            make_dataset(small, sf, ss, sd, "small")
        print(f"medium {mf:,} x {human(ms)}, small {sf:,} x {human(ss)} in {sd} dirs")
        dvc, dvc_seconds = dvc_path(), {}
        if dvc and (not only or only & {"put", "staging"}):
            dvc_seconds = dvc_rows(dvc, base / "dvc", medium)
        if not only or "put" in only:
            put_rows(api, base, medium, small, dvc_seconds.get("add"))
        # Versions to read are put before the mount starts (a name looked up
        # before its put stays absent for the listing TTL).
        big = base / "data" / "big" / "big.bin"
        if (not only or "read" in only) and not api.artifact_exists("bench/small"):
            api.put([small], "bench/small")
        if not only or "dd" in only:
            make_big(big, shape["big"])
            api.put([big.parent], "bench/big")
        with mount_of(base, "mnt", env) as m:
            if not only or "staging" in only:
                commit_through_staging(m, medium, "medium-st", mf)
                if not args.medium_only:
                    commit_through_staging(m, small, "small-st", sf)
                rewrite_base(m, medium, mf, dvc_seconds.get("rewrite"))
                levers = filter(None, args.levers.split(","))
                for i, lever in enumerate(levers):
                    lever_rows(base, env, lever, medium, small, mf, sf, args.medium_only, i)
            if not only or "read" in only:
                ro_mount = mounted(
                    base / "mnt-ro",
                    store_url=env["ARTFS_STORE"],
                    cache_dir=Path(env["ARTFS_CACHE"]),
                    state_dir=base / "state-ro",
                    env=env,
                    args=["-o", "ro"],
                )
                with peer_mount(base, small) as rc, ro_mount as ro:
                    read_rows(m, small, m.path / "bench/small/v0", sf, cold, rc, ro)
            if not only or "dd" in only:
                with peer_mount(base, big.parent) as rc:
                    rc_file = rc / big.name if rc else None
                    dd_rows(m, big, m.path / "bench/big/v0/big.bin", shape["big"], cold, rc_file)
            print(f"daemon: {m.stats()['opens']:,} opens, {m.stats()['reads']:,} reads")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
