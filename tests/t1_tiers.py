"""The test tiers keep their promise: t1 and t2 are collected where pyfuse3
cannot be imported, and mount nothing, so they run on a machine without FUSE
and without root (pyproject.toml names the tiers)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent
ROOT = TESTS.parent
LOWER_TIERS = sorted(TESTS.glob("t[12]_*.py"))

# pyfuse3 made unimportable in the pytest process itself before anything loads.
BLOCKED_PYTEST = (
    "import sys; sys.modules['pyfuse3'] = None; import pytest; sys.exit(pytest.main(sys.argv[1:]))"
)


def test_the_lower_tiers_are_collected_without_pyfuse3() -> None:
    assert len(LOWER_TIERS) >= 10, LOWER_TIERS
    args = ["--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_PYTEST, *args, *map(str, LOWER_TIERS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    collected = re.search(r"(\d+) tests? collected", proc.stdout)
    assert collected and int(collected.group(1)) > 100, proc.stdout[-2000:]
    # Every lower-tier file had tests collected, none was dropped for an import error.
    files = {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}
    assert files == {p.relative_to(ROOT).as_posix() for p in LOWER_TIERS}


def test_the_block_is_real() -> None:
    """The wrapper above does make pyfuse3 unimportable (else the test proves nothing)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['pyfuse3'] = None; import artfs.fs.daemon"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "pyfuse3" in proc.stderr, proc.stderr


def test_unmounting_needs_no_fuse_library(tmp_path: Path) -> None:
    """``artfs umount`` and the tests' mount harness use ``artfs.fs.mountpoints``,
    which imports neither pyfuse3 nor trio: an unmount pays for neither."""
    code = (
        "import sys; sys.modules['pyfuse3'] = None; sys.modules['trio'] = None; "
        "import artfs.cli, tests.mounting; "
        f"sys.exit(artfs.cli.main(['umount', '{tmp_path}', '--state', '{tmp_path}']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    # Refused as a user error (nothing is mounted there), not an ImportError.
    assert proc.returncode == 2 and "is not mounted" in proc.stderr, proc.stderr


def test_no_lower_tier_test_mounts() -> None:
    """A mount needs FUSE and, for most options, root: those tests belong in t4 or t5."""
    mounting = re.compile(r"\bmounted\(|\bstart_mount\(|\"mount\",|artfs\.fs\b|pyfuse3")
    offenders = {
        p.name: m.group(0)
        for p in LOWER_TIERS
        if p.name != "t1_tiers.py" and (m := mounting.search(p.read_text()))
    }
    assert not offenders, offenders
