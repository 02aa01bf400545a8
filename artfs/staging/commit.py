"""Committing staging, its journal, and recovery after a failed or killed commit.

A commit builds the tree (the base with the marks applied, then the upper
layer: one manifest entry per name, so two hard-linked names are two entries
with one digest), hard-links each staged inode into ``commit/links/`` and
hands those links to ``commit_tree(move=True)``: a local store on the same
filesystem renames a link into its blobs, so the bytes are never copied, yet
the staged names stay until the version record exists. Files not hashed as
they were written are hashed through the same links (short paths, whatever
the depth of the staged tree).

Before the store sees a link, ``commit/journal.json`` records, for each
inode the store may take, its staged names, mode and mtime. On failure (or
after a kill, from the journal) an inode with more links than staged names
is shared with a stored blob: it is copied to an inode of its own and every
name re-linked to the copy, so later writes can never reach a stored blob;
its mode and mtime (which the store changes) are put back.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artfs import names
from artfs.config import format_size
from artfs.fsutil import atomic_write, flock
from artfs.manifest import DIR, FILE, SYMLINK, Manifest, ManifestBuilder
from artfs.objects import StoreError
from artfs.repo import CommitResult, NotFoundError, RepoError, Version, commit_tree
from artfs.repo.commit import hash_files
from artfs.repo.records import Committer
from artfs.staging.errors import StagingError
from artfs.staging.overlay import ALIASES, CONTROL_FILES, DESCRIPTION, METADATA, join

if TYPE_CHECKING:
    from artfs.staging.area import StagingArea

RELEASE_WAIT = 2.0
StagedFiles = list[tuple[str, os.stat_result]]


def _copy_base_tree(
    builder: ManifestBuilder, manifest: Manifest, src: str, dest: str, default_mtime: int | None
) -> None:
    """Put the base's tree at ``src`` into ``builder`` at ``dest`` (a redirect)."""
    top = manifest.lookup(src)
    if top is None or not top.is_dir:
        return
    stack = [(top, dest)]
    while stack:
        d, path = stack.pop()
        t = d.mtime_ns if d.mtime_ns is not None else default_mtime
        builder.add_dir(path, mode=d.mode, mtime_ns=t)
        for e in manifest.children(d.id):
            sub = join(path, e.name)
            t = e.mtime_ns if e.mtime_ns is not None else default_mtime
            if e.kind == DIR:
                stack.append((e, sub))
            elif e.kind == SYMLINK:
                builder.add_symlink(sub, e.target or "", mtime_ns=t)
            elif e.kind == FILE and e.ref is not None:  # stays a reference
                builder.add_reference(
                    sub, e.ref, e.size, digest=e.digest, etag=e.etag, mode=e.mode, mtime_ns=t
                )
            elif e.kind == FILE and e.digest is not None:
                builder.add_file(sub, e.size, e.digest, mode=e.mode, mtime_ns=t)


class Commits:
    """Commit, journal and recovery (a part of ``StagingArea``)."""

    @contextlib.contextmanager
    def _commit_lock(self: StagingArea) -> Iterator[None]:
        """Across processes too: one commit of this staging at a time."""
        with flock(self.root / "lock"):
            yield

    def _commit_options(self: StagingArea) -> dict[str, Any]:
        text = self.read_control(METADATA).strip()
        metadata = None
        if text:
            try:
                metadata = json.loads(text)
            except ValueError as e:
                raise StagingError(errno.EINVAL, f"bad .metadata.json: not JSON ({e})") from None
            if not isinstance(metadata, dict):
                raise StagingError(errno.EINVAL, "bad .metadata.json: must be a JSON object")
        aliases = []
        for line in self.read_control(ALIASES).splitlines():
            for alias in line.replace(",", " ").split():
                try:
                    names.check_alias(alias)
                except names.BadName as e:
                    raise StagingError(errno.EINVAL, f"bad .aliases: {e}") from None
                aliases.append(alias)
        return {
            "metadata": metadata,
            "description": self.read_control(DESCRIPTION).rstrip("\n"),
            "aliases": aliases,
        }

    def _build(self: StagingArea) -> tuple[ManifestBuilder, StagedFiles]:
        """The tree to commit: the base with the marks applied, then the upper layer.

        Returns the builder (files of the upper layer not yet added) and the
        upper layer's regular files with their stat, one per name.
        """
        base = self.base()
        if self.state.kv("base") is not None and base is None:
            raise StagingError(errno.ENOENT, f"the base {self.state.kv('base')} no longer exists")
        builder = ManifestBuilder()
        if base is not None:
            created = int(base[0].created * 1e9)
            builder = ManifestBuilder.from_manifest(base[1], created)
            redirects = sorted(self.state.redirects.items(), key=lambda r: r[0].count("/"))
            for dest, src in redirects:
                builder.remove(dest)
                _copy_base_tree(builder, base[1], src, dest, created)
        for p in sorted(self.state.whiteouts | self.state.opaque):
            builder.remove(p)
        root = os.stat(".", dir_fd=self._fd)
        builder.add_dir("", mode=root.st_mode, mtime_ns=root.st_mtime_ns)
        files: StagedFiles = []
        stack = [""]
        while stack:
            rel = stack.pop()
            for name, st in sorted(self._scan_upper(rel)):
                path = join(rel, name)
                if stat.S_ISDIR(st.st_mode):
                    try:
                        # merges with a base directory, taking the staged mode and times
                        builder.add_dir(path, mode=st.st_mode, mtime_ns=st.st_mtime_ns)
                    except ValueError:
                        builder.remove(path)
                        builder.add_dir(path, mode=st.st_mode, mtime_ns=st.st_mtime_ns)
                    stack.append(path)
                else:
                    builder.remove(path)
                    if stat.S_ISLNK(st.st_mode):
                        target = self._readlink_upper(path)
                        builder.add_symlink(path, target, mtime_ns=st.st_mtime_ns)
                    elif stat.S_ISREG(st.st_mode):
                        files.append((path, st))
                    else:
                        raise StagingError(errno.EINVAL, f"cannot commit {path}: not a file")
        return builder, files

    def commit(
        self: StagingArea, logged_by: str | None = None, committed_by: Committer | None = None
    ) -> CommitResult:
        """Make the next version from staging; staging is then empty.

        On any failure staging is as it was and the error (a StagingError,
        RepoError, StoreError or OSError) says why; ``.status`` says it too.
        """
        with self._lock, self._commit_lock():
            self._recover()
            try:
                return self._commit(logged_by, committed_by)
            except BaseException as e:
                self._set_status(f"commit of {self.ref} failed: {e}")
                self.log.warning("commit of %s failed: %s", self.ref, e)
                raise
            finally:
                shutil.rmtree(self.commit_dir / "links", ignore_errors=True)

    def _commit(
        self: StagingArea, logged_by: str | None, committed_by: Committer | None = None
    ) -> CommitResult:
        # The kernel sends a release after close(2) returns: give the last
        # files of a cp a moment to arrive.
        self._idle.wait_for(lambda: not self._busy(), timeout=RELEASE_WAIT)
        busy = self._busy()
        if busy:
            raise StagingError(errno.EBUSY, f"{busy[0]} is open for writing")
        for hs in self._open.values():
            for h in hs:
                h.stale = True  # its inode may become a stored blob
        if self.is_empty():
            raise StagingError(errno.EINVAL, "nothing staged: write files or a .base first")
        options = self._commit_options()
        type = self.artifact_type()
        builder, files = self._build()
        stored: set[str] = set()
        base = self.base()
        if base is not None:
            v = base[0]
            try:
                self.repo.version(v.project, v.artifact, v.number)
            except NotFoundError:
                raise StagingError(errno.ENOENT, f"the base {v.ref} was deleted") from None
            stored = base[1].digests()  # kept by gc while that version lives

        # One link per staged inode: hard-linked names share it.
        names_of: dict[int, list[str]] = {}
        stats: dict[int, os.stat_result] = {}
        for path, st in files:
            names_of.setdefault(st.st_ino, []).append(path)
            stats[st.st_ino] = st
        links = self._link_inodes(names_of)
        digest_of: dict[int, str] = {}
        unknown: list[tuple[str, Path]] = []
        for ino, st in stats.items():
            digest = self.state.hashed(ino, st.st_size)
            if digest is None:
                unknown.append((names_of[ino][0], links[ino]))
            else:
                digest_of[ino] = digest
        known = set(digest_of)
        hashed = ManifestBuilder()
        sources: dict[str, Path] = hash_files(unknown, hashed)
        got = {path: digest for path, _size, digest in hashed.files()}
        for ino in stats:
            if ino not in digest_of:
                digest_of[ino] = got[names_of[ino][0]]
        for path, st in files:
            digest = digest_of[st.st_ino]
            builder.add_file(path, st.st_size, digest, mode=st.st_mode, mtime_ns=st.st_mtime_ns)
            sources.setdefault(digest, links[st.st_ino])
        hashed_now = sum(len(names_of[ino]) for ino in stats if ino not in known)
        self.log.info(
            "commit of %s: %d files hashed as written, %d hashed now",
            self.ref,
            len(files) - hashed_now,
            hashed_now,
        )
        tree = builder.tree_digest()

        try:
            before = self.repo.next_version_number(self.project, self.artifact)
        except (RepoError, StoreError):
            before = 0
        ino_of = {p: ino for ino, p in links.items()}
        taken = {ino_of[p] for p in sources.values()}
        journal = {
            "tree": tree,
            "before": before,
            "aliases": options["aliases"],
            "files": [[names_of[ino], stats[ino].st_mode, stats[ino].st_mtime_ns] for ino in taken],
        }
        self._write_journal(journal)
        moved = self._links_dir_used(links)
        try:
            result = commit_tree(
                self.repo,
                self.project,
                self.artifact,
                builder,
                sources,
                type=type,
                logged_by=logged_by,
                committed_by=committed_by,
                move=moved and self.repo.store.is_local,
                stored=stored,
                **options,
            )
        except BaseException:
            if self._settle(journal, failed=True):
                version = self._committed_version(journal)
                if version is not None:
                    return CommitResult(version, True, 0, 0, 0)
            raise
        self._finish(result)
        return result

    def _links_dir_used(self: StagingArea, links: dict[int, Path]) -> bool:
        return any(p.parent == self.commit_dir / "links" for p in links.values())

    def _link_inodes(self: StagingArea, names_of: dict[int, list[str]]) -> dict[int, Path]:
        """A short path to each staged inode: a hard link under ``commit/links/``.

        Where the state directory has no hard links, the staged names themselves.
        """
        links_dir = self.commit_dir / "links"
        shutil.rmtree(links_dir, ignore_errors=True)
        links_dir.mkdir(parents=True)
        links: dict[int, Path] = {}
        for i, (ino, paths) in enumerate(names_of.items()):
            link = links_dir / str(i)
            try:
                os.link(paths[0], link, src_dir_fd=self._fd, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                return {ino: self.files / ps[0] for ino, ps in names_of.items()}
            links[ino] = link
        return links

    def _write_journal(self: StagingArea, journal: dict[str, Any]) -> None:
        self.commit_dir.mkdir(exist_ok=True)
        atomic_write(self.commit_dir / "journal.json", json.dumps(journal))

    def _committed_version(self: StagingArea, journal: dict[str, Any]) -> Version | None:
        """The version a journaled commit made, if it got as far as its record."""
        try:
            versions = self.repo.versions(self.project, self.artifact, with_aliases=False)
        except (RepoError, StoreError):
            return None
        for v in reversed(versions):
            if v.number >= journal["before"] and v.tree == journal["tree"]:
                return v
        return None

    def _settle(self: StagingArea, journal: dict[str, Any], *, failed: bool) -> bool:
        """After a failed or killed commit: finish it if its version exists, else
        put staging back as it was. Returns True if the commit was finished."""
        shutil.rmtree(self.commit_dir / "links", ignore_errors=True)
        version = self._committed_version(journal)
        if version is not None:
            try:
                self.repo.advance_latest(self.project, self.artifact, version.number)
                for alias in journal.get("aliases", []):
                    self.repo.set_alias(version, alias)
            except (RepoError, StoreError) as e:
                self.log.warning(
                    "%s: v%d exists but latest could not move: %s", self.ref, version.number, e
                )
            else:
                self._clear()
                self._set_status(
                    f"committed {version.ref}: {version.file_count} files, "
                    f"{format_size(version.size)} (finished after an interrupted commit)"
                )
                (self.commit_dir / "journal.json").unlink(missing_ok=True)
                return True
        for paths, mode, mtime_ns in journal["files"]:
            if isinstance(paths, str):
                paths = [paths]
            self._own_inode(paths, mode, mtime_ns)
        (self.commit_dir / "journal.json").unlink(missing_ok=True)
        if not failed:
            self._set_status(f"commit of {self.ref} was interrupted; staging is as it was")
        return False

    def _own_inode(self: StagingArea, paths: list[str], mode: int, mtime_ns: int) -> None:
        """Give staged names back an inode of their own, with its mode and mtime,
        if the store shares it (more links than staged names)."""
        fd = self._fd
        try:
            st = os.stat(paths[0], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if st.st_nlink > len(paths):
            copy = self._copy_fd
            tmp = uuid.uuid4().hex
            src = os.open(paths[0], os.O_RDONLY, dir_fd=fd)
            dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=copy)
            with os.fdopen(src, "rb") as s, os.fdopen(dst, "wb") as d:
                shutil.copyfileobj(s, d, 1 << 20)
                d.flush()
                os.fchmod(d.fileno(), stat.S_IMODE(mode))
                os.utime(d.fileno(), ns=(mtime_ns, mtime_ns))
                os.fsync(d.fileno())
            for path in paths:
                step = uuid.uuid4().hex
                os.link(tmp, step, src_dir_fd=copy, dst_dir_fd=copy)
                os.rename(step, path, src_dir_fd=copy, dst_dir_fd=fd)
            os.unlink(tmp, dir_fd=copy)
            row = self.state.hashed_row(st.st_ino)
            self.state.set_hashed(st.st_ino)
            if row:
                new_ino = os.stat(paths[0], dir_fd=fd, follow_symlinks=False).st_ino
                self.state.set_hashed(new_ino, row[0], row[1])
            return
        if st.st_mode != mode:
            os.chmod(paths[0], stat.S_IMODE(mode), dir_fd=fd)
        if st.st_mtime_ns != mtime_ns:
            os.utime(paths[0], ns=(st.st_atime_ns, mtime_ns), dir_fd=fd)

    def _recover(self: StagingArea) -> None:
        for trash in self.root.glob("trash-*"):
            shutil.rmtree(trash, ignore_errors=True)
        journal_path = self.commit_dir / "journal.json"
        if not journal_path.exists():
            shutil.rmtree(self.commit_dir / "links", ignore_errors=True)
            return
        try:
            journal = json.loads(journal_path.read_text())
        except ValueError:
            journal_path.unlink()
            return
        self.log.warning("%s: recovering from an interrupted commit", self.ref)
        self._settle(journal, failed=False)

    def _finish(self: StagingArea, result: CommitResult) -> None:
        v = result.version
        self._clear()
        self.state.set_kv("last_commit", str(time.time()))
        if result.created:
            self._set_status(
                f"committed {v.ref}: {v.file_count} files, {format_size(v.size)}, "
                f"{format_size(result.new_bytes)} new"
            )
        else:
            self._set_status(f"unchanged: identical to {v.ref}, no new version")
        shutil.rmtree(self.commit_dir, ignore_errors=True)

    def _clear(self: StagingArea) -> None:
        """Empty staging after a commit: files, marks, base and control files.

        The upper layer's root stays (the descriptor every call uses); what
        is in it moves to a trash directory first, removed after.
        """
        trash = self.root / f"trash-{uuid.uuid4().hex}"
        trash.mkdir()
        trash_fd = os.open(trash, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, _st in self._scan_upper(""):
                os.rename(name, name, src_dir_fd=self._fd, dst_dir_fd=trash_fd)
        finally:
            os.close(trash_fd)
        os.chmod(".", 0o755, dir_fd=self._fd)
        os.utime(".", dir_fd=self._fd)
        self.state.clear()
        self._base, self._base_key = None, None
        for name in CONTROL_FILES:
            os.truncate(self.control / name, 0)
        shutil.rmtree(trash, ignore_errors=True)
