"""The mount daemon's life: start, readiness, logging, signals, unmount.

``artfs mount`` forks the daemon and returns only once the mount answers a
``stat`` (or exits non-zero with the daemon's reason). The daemon logs to a
file in the state directory; SIGTERM, SIGINT and SIGHUP unmount cleanly. A
mountpoint left behind by a daemon that died ("Transport endpoint is not
connected") is detached and mounted again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyfuse3
import trio

from artfs.config import Settings, credentials_warning, load_settings
from artfs.fs.access import Access
from artfs.fs.files import BlobOpener
from artfs.fs.mountpoints import MountError, mount_files, prepare_mountpoint
from artfs.fs.nodes import InodeTable, MountContext
from artfs.fs.notify import sd_notify, with_systemd
from artfs.fs.operations import Operations, stats_of
from artfs.fs.writes import install as install_writes
from artfs.objects import ObjectStore, open_store
from artfs.objects.base import Listing, ObjectInfo
from artfs.repo import Repo
from artfs.staging import StagingManager

log = logging.getLogger("artfs.fs")

DEFAULT_TTL = 5.0
DEFAULT_READ_AHEAD_KB = 1024
WORKER_THREADS = 16
READY_TIMEOUT = 60.0


@dataclass
class MountConfig:
    mountpoint: Path
    settings: Settings
    options: list[str] = field(default_factory=list)
    ttl: float = DEFAULT_TTL
    debug: bool = False
    foreground: bool = False
    via_cache: bool = False
    read_ahead_kb: int = DEFAULT_READ_AHEAD_KB

    @property
    def pid_file(self) -> Path:
        return mount_files(self.settings.state_dir, self.mountpoint)[0]

    @property
    def log_file(self) -> Path:
        return mount_files(self.settings.state_dir, self.mountpoint)[1]


# -- the store, seen without its local paths -------------------------------------


class ThroughCache(ObjectStore):
    """A store whose blobs are always copied into the cache, even if local.

    For a store directory on a slow or shared filesystem (NFS), serving its
    files directly would send every read there.
    """

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self.inner.get_range(key, start, length)

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        return self.inner.get_tagged(key)

    def download(self, key: str, out: BinaryIO) -> int:
        return self.inner.download(key, out)

    def put(
        self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> str:
        return self.inner.put(key, data, if_absent=if_absent, if_match=if_match)

    def put_file(
        self, key: str, path: Path, *, if_absent: bool = False, move: bool = False
    ) -> None:
        self.inner.put_file(key, path, if_absent=if_absent, move=move)

    def head(self, key: str) -> ObjectInfo:
        return self.inner.head(key)

    def list(self, prefix: str, *, recursive: bool = False) -> Listing:
        return self.inner.list(prefix, recursive=recursive)

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.iter_objects(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()


def set_read_ahead(mountpoint: Path, kb: int) -> int | None:
    """Raise the mount's read-ahead so the kernel sends reads of ``kb`` KiB, not 128."""
    st = os.stat(mountpoint)
    path = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    try:
        if int(path.read_text()) < kb:
            path.write_text(str(kb))
        return int(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("cannot raise read-ahead in %s: %s (reads stay small)", path, e)
        return None


# -- the daemon -------------------------------------------------------------------------


def _setup_logging(cfg: MountConfig) -> None:
    cfg.log_file.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.FileHandler(cfg.log_file)]
    if cfg.foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.DEBUG if cfg.debug else logging.INFO)
    logging.getLogger("pyfuse3").setLevel(logging.DEBUG if cfg.debug else logging.WARNING)


# A lever a benchmark turns on to measure it (ARTFS_BENCH_ON=default-permissions):
# the kernel's permission checks on a mount only root may enter, too.
_ALWAYS_CHECKED = "default-permissions" in os.environ.get("ARTFS_BENCH_ON", "").split(",")


def _fuse_options(cfg: MountConfig, uid: int | None = None) -> set[str]:
    """The mount's options: the user's, plus what artfs needs.

    ``default_permissions`` (the kernel checks modes and owners itself) is
    added unless only root can enter the mount: without ``allow_other`` the
    kernel lets in only callers whose uids and gids all match the mounter's,
    and root passes every mode check but execute, which the kernel still
    makes for files and ``Operations.access`` answers for ``access(2)``.
    Skipping it spares a request per file created: under it, each create
    makes the parent's attributes stale and the next create asks for them.
    """
    # nosuid, nodev: a version never carries set-id bits or devices; say so to the kernel too.
    options = {"fsname=artfs", "subtype=artfs", "nosuid", "nodev"}
    for opt in cfg.options:
        options.update(o.strip() for o in opt.split(",") if o.strip())
    uid = os.getuid() if uid is None else uid
    if "allow_other" in options and "default_permissions" not in options:
        # Other users in: the kernel must check the modes that carry each
        # project's visibility (access.py), or anyone could read anything.
        log.info("allow_other: adding default_permissions (access by project visibility)")
        options.add("default_permissions")
    elif uid != 0 or _ALWAYS_CHECKED:
        options.add("default_permissions")  # the owner's own modes hold for the owner
    return options


async def _serve(cfg: MountConfig, ops: Operations, notify: Callable[[str], None]) -> None:
    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("got %s: unmounting", signal.Signals(signum).name)
                sd_notify("STOPPING=1")
                pyfuse3.terminate()
                return

    async def announce() -> None:
        try:
            st = await trio.to_thread.run_sync(os.stat, cfg.mountpoint)
            if st.st_ino != pyfuse3.ROOT_INODE:
                raise MountError(f"{cfg.mountpoint} does not show the mount (inode {st.st_ino})")
            ra = await trio.to_thread.run_sync(set_read_ahead, cfg.mountpoint, cfg.read_ahead_kb)
        except (OSError, MountError) as e:
            log.error("the mount does not answer: %s", e)
            notify(f"the mount on {cfg.mountpoint} does not answer: {e}")
            pyfuse3.terminate()
            return
        log.info("mounted %s on %s; read_ahead_kb=%s", cfg.settings.store, cfg.mountpoint, ra)
        notify("ok")

    ops.limiter = trio.CapacityLimiter(WORKER_THREADS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        nursery.start_soon(announce)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def _recover_at_start(repo: Repo, staging: StagingManager) -> None:
    """Before serving: finish or undo commits a killed daemon left in staging
    (opening an area recovers it), and point every ``latest`` that a killed
    commit left behind at its highest live version. Failures are logged: a
    read-only or unreachable store still mounts."""
    for journal in sorted(staging.root.glob("*/*/commit/journal.json")):
        project, artifact = journal.parts[-4], journal.parts[-3]
        try:
            staging.area(project, artifact)
        except Exception as e:
            log.error("cannot recover staging of %s/%s: %s", project, artifact, e)
    try:
        for name, old, new in repo.repair_every_latest():
            log.warning("%s: latest named v%s, repaired to v%s", name, old, new)
    except Exception as e:
        log.warning("cannot check latest of every artifact: %s", e)


def run_daemon(cfg: MountConfig, notify: Callable[[str], None]) -> int:
    """Mount and serve until unmounted or signalled; returns the exit status."""
    _setup_logging(cfg)
    notify = with_systemd(notify)
    log.info(
        "starting: store %s, cache %s, ttl %ss%s",
        cfg.settings.store,
        cfg.settings.cache_dir,
        cfg.ttl,
        ", blobs through the cache" if cfg.via_cache else "",
    )
    warning = credentials_warning(cfg.settings)
    if warning:
        log.warning("%s", warning)
    try:
        options = _fuse_options(cfg)
        store = open_store(cfg.settings.store)
        if cfg.via_cache:
            store = ThroughCache(store)
        repo = Repo.open(store, str(cfg.settings.cache_dir), cfg.settings.cache_size)
        ctx = MountContext(
            repo=repo,
            opener=BlobOpener(repo.cache, store, repo.referents),
            ttl=cfg.ttl,
            uid=os.getuid(),
            gid=os.getgid(),
            started=time.time(),
            access=Access(
                enforced="allow_other" in options, uid=os.getuid(), gid=os.getgid(), ttl=cfg.ttl
            ),
        )
        table = InodeTable(ctx)
        staging = install_writes(table, cfg.settings.state_dir)
        _recover_at_start(repo, staging)
        # Read-only: nothing can be written, so no close needs its flush.
        ops = Operations(table, trio.CapacityLimiter(WORKER_THREADS), no_flush="ro" in options)
        table.stats = lambda: stats_of(ops, ctx.opener, repo.cache)
        pyfuse3.init(ops, str(cfg.mountpoint), options)
    except Exception as e:
        log.error("cannot mount %s: %s", cfg.mountpoint, e)
        notify(f"cannot mount {cfg.mountpoint}: {e}")
        return 1
    cfg.pid_file.parent.mkdir(parents=True, exist_ok=True)
    cfg.pid_file.write_text(f"{os.getpid()}\n")
    status = 0
    try:
        trio.run(_serve, cfg, ops, notify)
    except BaseException:
        log.exception("the daemon failed")
        status = 1
    finally:
        pyfuse3.close(unmount=True)
        ctx.opener.prefetch.close()
        staging.close()
        with contextlib.suppress(OSError):
            if cfg.pid_file.read_text().strip() == str(os.getpid()):
                cfg.pid_file.unlink()
        log.info("unmounted %s", cfg.mountpoint)
    return status


# -- the commands -----------------------------------------------------------------------


def _config(args: Any) -> MountConfig:
    settings = load_settings(
        args.store, args.cache, getattr(args, "state", None), system=getattr(args, "system", False)
    )
    ttl = args.ttl if getattr(args, "ttl", None) is not None else DEFAULT_TTL
    if ttl < 0:
        raise MountError(f"bad --ttl {ttl}: must be 0 or more seconds")
    return MountConfig(
        mountpoint=Path(os.path.abspath(args.mountpoint)),
        settings=settings,
        options=list(getattr(args, "options", []) or []),
        ttl=ttl,
        debug=bool(getattr(args, "debug", False)),
        foreground=bool(getattr(args, "foreground", False)),
        via_cache=bool(getattr(args, "via_cache", False)),
        read_ahead_kb=int(getattr(args, "read_ahead_kb", None) or DEFAULT_READ_AHEAD_KB),
    )


def _pipe_notifier(fd: int) -> Callable[[str], None]:
    def notify(message: str) -> None:
        nonlocal fd
        if fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(fd, message.encode() + b"\n")
            os.close(fd)
        fd = -1

    return notify


def _read_notice(fd: int, timeout: float) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return ""
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def mount_command(args: Any) -> None:
    cfg = _config(args)
    prepare_mountpoint(cfg.mountpoint)
    warning = credentials_warning(cfg.settings)
    if warning:
        print(f"artfs: warning: {warning}", file=sys.stderr)
    if cfg.foreground:
        if run_daemon(cfg, lambda message: None) != 0:
            raise MountError(f"the mount failed; see {cfg.log_file}")
        return
    cfg.log_file.parent.mkdir(parents=True, exist_ok=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        status = 1
        try:
            os.close(r)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            log_fd = os.open(cfg.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(null, 0)
            # libfuse writes its own complaints to stderr: keep them in the log.
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            status = run_daemon(cfg, _pipe_notifier(w))
        finally:
            os._exit(status)
    os.close(w)
    try:
        notice = _read_notice(r, READY_TIMEOUT)
    finally:
        os.close(r)
    if notice == "ok":
        print(
            f"artfs: mounted {cfg.settings.store} on {cfg.mountpoint} "
            f"(daemon pid {pid}, log {cfg.log_file})",
            file=sys.stderr,
        )
        return
    if not notice:
        with contextlib.suppress(ProcessLookupError):
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                os.kill(pid, signal.SIGTERM)
        notice = f"the daemon did not answer; see {cfg.log_file}"
    raise MountError(notice)
