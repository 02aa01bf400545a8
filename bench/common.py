"""Helpers shared by the benchmarks: trees to test with, a ``cp -r`` baseline
measured in the same run, cold page caches, and one way to print a figure.

Every benchmark prints figures and ratios and asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DIR = Path("/tmp/artfs-bench")


def parse_size(text: str) -> int:
    """'1G', '4K', '1GiB', '4096' -> bytes (powers of 1024)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    mult = units.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where data goes (emptied)")
    p.add_argument(
        "--warm", action="store_true", help="do not drop the page cache before each measurement"
    )
    p.add_argument("--keep", action="store_true", help="keep the data afterwards")
    return p


# -- trees --------------------------------------------------------------------


def _file_path(root: Path, i: int, per_dir: int) -> Path:
    return root / f"d{i // per_dir:04d}" / f"f{i:07d}.bin"


def make_tree(root: Path, files: int, size: int, *, per_dir: int = 1000) -> int:
    """``files`` files of ``size`` random (incompressible, all distinct) bytes,
    at most ``per_dir`` to a directory. Returns the bytes written."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        p = _file_path(root, i, per_dir)
        if i % per_dir == 0:
            p.parent.mkdir(exist_ok=True)
        with open(p, "wb") as f:
            f.write(os.urandom(size))
    return files * size


def change_files(root: Path, files: int, fraction: float, *, per_dir: int = 1000) -> list[Path]:
    """Rewrite every ``1/fraction``-th file with new bytes of the same size."""
    count = round(files * fraction)
    step = files / count if count else 0
    changed = []
    for k in range(count):
        p = _file_path(root, int(k * step), per_dir)
        size = p.stat().st_size
        with open(p, "wb") as f:
            f.write(os.urandom(size))
        changed.append(p)
    return changed


def tree_bytes(root: Path) -> int:
    return sum((Path(d) / f).lstat().st_size for d, _, names in os.walk(root) for f in names)


# -- measuring ----------------------------------------------------------------


def drop_caches(enabled: bool = True) -> bool:
    """Write back dirty pages and drop the page cache, so reads come from disk.
    Needs root; returns whether it happened."""
    if not enabled:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


_last_delete = 0.0  # time.monotonic() of the last remove_tree
_warned = False
SETTLE_SECONDS = 32  # ext4's 30 s guard (dirty_expire_centisecs), rounded up to its 1 s dtime


def _has_no_journal(path: Path) -> bool:
    """Whether ``path`` is on ext4 without a journal (this VM kind's root is)."""
    dev = os.stat(path).st_dev
    for sys_dir in Path("/sys/fs/ext4").glob("*"):
        try:
            dev_file = Path("/sys/class/block", sys_dir.name, "dev").read_text().split(":")
            if os.makedev(int(dev_file[0]), int(dev_file[1])) == dev:
                return (sys_dir / "journal_task").read_text().strip() == "<none>"
        except (OSError, ValueError, IndexError):
            continue
    return False


def remove_tree(path: Path) -> None:
    """``rm -rf``, noting when, so the next measurement can wait out ext4's guard."""
    global _last_delete
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
        _last_delete = time.monotonic()


def settle(path: Path) -> None:
    """Before a timed run: wait out the worst of ext4's guard against reusing
    freed inodes, and say once that it is not all of it.

    Without a journal ext4 will not hand out an inode freed in the last 30 s
    (330 s while its inode-table block is dirty), and every create scans past
    each such inode: right after an ``rm -rf`` of 10,000 files a create here
    cost 0.5-1 ms instead of ~50 us (perf: ``recently_deleted`` under
    ``__ext4_new_inode``). So: write the inode tables back and wait 30 s. Not
    enough: creates still cost ~330 us after the wait (28 us once quiet), as
    the timed creates dirty those blocks again and the guard becomes 330 s.
    Hence the warning: measure on a filesystem with a journal."""
    global _warned
    if not _last_delete or not _has_no_journal(path if path.exists() else Path("/")):
        return
    if not _warned:
        _warned = True
        print(
            f"bench: {path} is on ext4 without a journal: creates after a delete stay"
            " slow for minutes; for figures, give --dir on a filesystem with a journal"
            " (e.g. mkfs.ext4 on a loop file)",
            file=sys.stderr,
        )
    os.sync()
    left = SETTLE_SECONDS - (time.monotonic() - _last_delete)
    if left > 0:
        time.sleep(left)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cp_r(src: Path, dest: Path, *, sync: bool = False) -> float:
    """Seconds for ``cp -r src dest`` (plus ``sync`` when asked); dest is removed
    first, and ext4's guard waited out (``settle``)."""
    remove_tree(dest)
    settle(dest.parent)
    os.sync()  # the sync timed is this copy's, not what earlier steps left dirty

    def run() -> None:
        subprocess.run(["cp", "-r", str(src), str(dest)], check=True)
        if sync:
            os.sync()

    return timed(run)


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def artfs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "artfs.cli", *args]


@dataclass
class Figure:
    label: str
    seconds: float
    nbytes: int | None = None
    baselines: dict[str, float | None] = field(default_factory=dict)

    def line(self) -> str:
        parts = [f"{self.label:<48} {self.seconds:8.2f} s"]
        parts.append(f"{self.nbytes / self.seconds / (1 << 20):8.1f} MiB/s" if self.nbytes else "")
        ratios = [f"{self.seconds / t:.2f}x {name}" for name, t in self.baselines.items() if t]
        if ratios:
            parts.append(", ".join(ratios))
        return "  ".join(parts)


def report(
    label: str,
    seconds: float,
    *,
    nbytes: int | None = None,
    baseline: float | None = None,
    baseline_label: str = "cp -r",
    more: dict[str, float | None] | None = None,
    note: str = "",
) -> Figure:
    """Print one figure: time, throughput, and its ratio to each baseline
    (>1 is slower). ``more`` adds baselines by name (None: not measured);
    ``note`` is printed after."""
    baselines = {baseline_label: baseline} if baseline else {}
    baselines.update(more or {})
    fig = Figure(label, seconds, nbytes, baselines)
    print(fig.line() + (f"  {note}" if note else ""), flush=True)
    return fig


@contextlib.contextmanager
def workdir(path: Path, keep: bool = False) -> Iterator[Path]:
    remove_tree(path)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def local_store_env(base: Path) -> dict[str, str]:
    """The environment for artfs on a local store under ``base``: its store,
    cache and state there, and no config file of the user's."""
    env = dict(os.environ)
    env.update(
        ARTFS_STORE=str(base / "store"),
        ARTFS_CACHE=str(base / "cache"),
        ARTFS_STATE=str(base / "state"),
        ARTFS_CONFIG=str(base / "no-config.toml"),
    )
    return env
