"""Pause points that tests use to hold a process at a precise moment.

``ARTFS_TEST_PAUSE_<NAME>=<path>``: on reaching pause point NAME the process
creates ``<path>.reached`` and waits until ``<path>`` exists. A test can then
run something else in the window (a gc inside a commit) or kill the process
at exactly that point. Unset (always, outside tests), a pause point costs one
environment lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_PREFIX = "ARTFS_TEST_PAUSE_"


def pause_point(name: str) -> None:
    target = os.environ.get(_PREFIX + name)
    if not target:
        return
    path = Path(target)
    Path(f"{target}.reached").write_text(f"{os.getpid()}\n")
    while not path.exists():
        time.sleep(0.02)


def mark_point(name: str) -> None:
    """``ARTFS_TEST_MARK_<NAME>=<path>``: create ``<path>`` on reaching NAME, and go on."""
    target = os.environ.get("ARTFS_TEST_MARK_" + name)
    if target:
        Path(target).write_text(f"{os.getpid()}\n")
