"""The ``artfs`` command line. Errors are one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from artfs import __version__, names
from artfs.api import Api
from artfs.config import ConfigError, load_settings, parse_duration, parse_size
from artfs.config import format_size as _fmt_size
from artfs.objects import StoreError
from artfs.repo import RepoError

EXIT_BAD_INPUT = 2
EXIT_PROBLEMS = 1  # check and verify: the store is not what it should be


class CliError(Exception):
    pass


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _fmt_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


@contextlib.contextmanager
def _progress_bars() -> Iterator[Any]:
    """``bars(desc, total)`` -> a callback that advances a tqdm bar on stderr, or
    None when stderr is not a terminal. Every bar closes when the block ends."""
    if not sys.stderr.isatty():
        yield lambda desc, total: None
        return
    from tqdm import tqdm

    opened: list[Any] = []
    try:
        cols, rows = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        cols, rows = 0, 0

    def bars(desc: str, total: int) -> Any:
        if opened:
            opened[-1].close()
        # A terminal that reports no size (a bare pty) would get no bar at all.
        bar = tqdm(
            total=total,
            desc=desc,
            unit="B",
            unit_scale=True,
            leave=False,
            ncols=cols or 80,
            nrows=rows or 24,
            dynamic_ncols=bool(cols),
        )
        opened.append(bar)
        return bar.update

    try:
        yield bars
    finally:
        for bar in opened:
            bar.close()


def _api(args: argparse.Namespace) -> Api:
    return Api(settings=load_settings(args.store, args.cache))


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _load_metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    source, what = text, "not JSON"
    if not text.lstrip().startswith("{") and Path(text).is_file():
        try:
            source, what = Path(text).read_text(), "file is not JSON"
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"bad metadata {text!r}: cannot read it ({e})") from None
    try:
        value = json.loads(source)
    except ValueError as e:
        hint = "" if Path(text).exists() or "{" in text else " and no such file"
        raise CliError(f"bad metadata {text!r}: {what}{hint} ({e})") from None
    if not isinstance(value, dict):
        raise CliError(f"bad metadata {text!r}: must be a JSON object")
    return value


# -- commands ----------------------------------------------------------------


def cmd_put(args: argparse.Namespace) -> None:
    if args.draft is not None:
        _put_draft(args)
        return
    metadata = _load_metadata(args.metadata)
    ttl = parse_duration(args.ttl) if args.ttl else None
    if "latest" in args.alias:
        print("artfs: note: latest moves with every commit; -a latest ignored", file=sys.stderr)
    if not args.paths and not args.reference:
        raise CliError("put: a PATH is required (a file or directory), or --reference URI")
    if args.ref_name is not None and len(args.reference) != 1:
        raise CliError("put: --ref-name goes with exactly one --reference")
    if args.max_objects is not None and args.max_objects < 1:
        raise CliError(f"put: bad --max-objects {args.max_objects}: at least 1")
    api = _api(args)
    with _progress_bars() as bars:
        result = api.put(
            args.paths,
            args.name,
            type=args.type,
            aliases=args.alias,
            description=args.description or "",
            metadata=metadata,
            phases=bars,
            ttl=ttl,
            references=[(uri, args.ref_name) for uri in args.reference],
            checksum=not args.no_checksum,
            max_objects=args.max_objects,
        )
    v = result.version
    if args.json:
        _print_json(
            {
                **v.to_json(),
                "created_new": result.created,
                "new_blobs": result.new_blobs,
                "new_bytes": result.new_bytes,
            }
        )
        return
    if not result.created:
        print(f"{v.ref} (unchanged: identical to latest, no new version)", file=sys.stderr)
    else:
        print(
            f"stored {_plural(v.file_count, 'file')}, {_fmt_size(v.size)}; "
            f"{_plural(result.new_blobs, 'new blob')} ({_fmt_size(result.new_bytes)})",
            file=sys.stderr,
        )
    print(v.ref)


def _put_draft(args: argparse.Namespace) -> None:
    if args.reference:
        raise CliError("put --draft takes files, not --reference: put references as a version")
    if args.alias or args.description or args.metadata or args.ttl:
        raise CliError("put --draft takes no -a/-d/-m/--ttl: give them to `artfs draft finish`")
    d = _api(args).put_draft(args.paths, args.name, args.draft, type=args.type)
    if args.json:
        _print_json(d.to_json())
        return
    print(
        f"draft {d.group} of {d.name}: {_plural(d.files, 'file')} in {_plural(d.parts, 'part')}",
        file=sys.stderr,
    )


def cmd_draft_ls(args: argparse.Namespace) -> None:
    found = _api(args).list_drafts(args.name)
    if args.json:
        _print_json([d.to_json() for d in found])
        return
    for d in found:
        state = f"closed (v{d.version})" if d.state == "closed" else d.state
        print(
            f"{d.group}\t{state}\t{_plural(d.parts, 'part')}\t{_plural(d.files, 'file')}\t"
            f"updated {_fmt_time(d.updated)}"
        )


def cmd_draft_finish(args: argparse.Namespace) -> None:
    v = _api(args).finish_artifact(args.name, args.group, aliases=args.alias)
    if args.json:
        _print_json(v.record.to_json())
        return
    print(f"finished draft {args.group}: {_plural(v.file_count, 'file')}", file=sys.stderr)
    print(v.record.ref)


def cmd_draft_abort(args: argparse.Namespace) -> None:
    d = _api(args).abort_draft(args.name, args.group)
    print(f"aborted draft {d.group} of {d.name}", file=sys.stderr)


def cmd_get(args: argparse.Namespace) -> None:
    api = _api(args)
    art = api.artifact(args.ref)
    with _progress_bars() as bars:
        path = art.download(args.root, args.path_prefix, bars("get", art.size), link=args.link)
    if args.json:
        _print_json({"ref": art.qualified_name, "path": str(path)})
        return
    print(path)


def cmd_ls(args: argparse.Namespace) -> None:
    api = _api(args)
    repo = api.repo
    if not args.target:
        projects = repo.projects()
        if args.json:
            _print_json([{"name": p.name, "visibility": p.visibility} for p in projects])
        for p in [] if args.json else projects:
            print(f"{p.name}\t{p.visibility}")
        return
    project, _, artifact = args.target.partition("/")
    if not artifact:
        arts = repo.artifacts(project)
        rows = []
        for a in arts:
            versions = repo.versions(project, a.name, with_aliases=False)
            rows.append({"name": a.qualified, "type": a.type, "versions": len(versions)})
        if args.json:
            _print_json(rows)
        for r in [] if args.json else rows:
            print(f"{r['name']}\t{r['type']}\t{_plural(r['versions'], 'version')}")
        return
    art = repo.artifact(project, artifact)
    versions = repo.versions(project, artifact)
    if args.json:
        _print_json([v.to_json(art.type) for v in versions])
        return
    _print_versions(versions)


def _print_versions(versions: list[Any]) -> None:
    for v in versions:
        aliases = ",".join(v.aliases)
        tags = " ".join(f"#{t}" for t in v.tags)
        print(
            f"v{v.number}\t{_fmt_time(v.created)}\t{_plural(v.file_count, 'file')}\t"
            f"{_fmt_size(v.size)}\t{aliases}" + (f"\t{tags}" if tags else "")
        )


def cmd_show(args: argparse.Namespace) -> None:
    api = _api(args)
    art = api.artifact(args.ref)
    v = art.record
    out = v.to_json(art.type)
    if args.files:
        out["files"] = [
            {"path": f.path, "kind": f.kind, "size": f.size, "digest": f.digest or None}
            | ({"target": f.target} if f.target is not None else {})
            | ({"reference": f.ref} if f.ref is not None else {})
            for f in art.files()
        ]
    if args.json:
        _print_json(out)
        return
    print(f"ref:         {v.ref}")
    print(f"type:        {art.type}")
    print(f"aliases:     {', '.join(v.aliases) or '-'}")
    print(f"created:     {_fmt_time(v.created)}")
    print(f"files:       {v.file_count}")
    print(f"size:        {_fmt_size(v.size)} ({v.size} bytes)")
    print(f"manifest:    {v.manifest_digest}")
    print(f"description: {v.description or '-'}")
    print(f"metadata:    {json.dumps(v.metadata, sort_keys=True)}")
    if v.tags:
        print(f"tags:        {', '.join(v.tags)}")
    if v.expires is not None:
        print(f"expires:     {_fmt_time(v.expires)}")
    if v.logged_by:
        print(f"logged by:   {v.logged_by}")
    if v.committed_by is not None:
        print(f"committed by: {v.committed_by.user} (uid {v.committed_by.uid})")
    if args.files:
        for f in out["files"]:
            if f["kind"] == "dir":
                print(f"  {'dir':>12}  {f['path']}/")
            elif f["kind"] == "symlink":
                print(f"  {'link':>12}  {f['path']} -> {f['target']}")
            elif "reference" in f:
                print(f"  {f['size']:>12}  {f['path']}  (reference: {f['reference']})")
            else:
                print(f"  {f['size']:>12}  {f['path']}")


def _print_project(p: Any, as_json: bool) -> None:
    if as_json:
        _print_json(p.to_json())
        return
    print(f"project:     {p.name}")
    print(f"visibility:  {p.visibility}")
    print(f"group:       {p.group or '-'}")
    print(f"created:     {_fmt_time(p.created)}")


def cmd_project_create(args: argparse.Namespace) -> None:
    p = _api(args).create_project(args.name, args.visibility, args.group)
    _print_project(p, args.json)


def cmd_project_set(args: argparse.Namespace) -> None:
    if args.visibility is None and args.group is None:
        raise CliError("project set: give --visibility and/or --group")
    p = _api(args).set_project(args.name, visibility=args.visibility, group=args.group)
    _print_project(p, args.json)


def cmd_project_show(args: argparse.Namespace) -> None:
    _print_project(_api(args).project(args.name), args.json)


def cmd_alias_set(args: argparse.Namespace) -> None:
    api = _api(args)
    v = api.artifact(args.ref).record
    api.repo.set_alias(v, args.alias)
    print(f"{v.project}/{v.artifact}:{args.alias} -> v{v.number}")


def cmd_alias_rm(args: argparse.Namespace) -> None:
    api = _api(args)
    ref = names.Ref.parse(args.name)
    number = api.repo.alias_target(ref.project, ref.artifact, args.alias)
    api.repo.remove_alias(ref.project, ref.artifact, args.alias)
    print(f"removed alias {ref.name}:{args.alias} (was v{number})")


def cmd_describe(args: argparse.Namespace) -> None:
    art = _api(args).artifact(args.ref)
    art.description = args.text
    art.save()


def cmd_meta_set(args: argparse.Namespace) -> None:
    art = _api(args).artifact(args.ref)
    for pair in args.pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"bad metadata pair {pair!r}: use KEY=VALUE")
        try:
            art.metadata[key] = json.loads(value)
        except ValueError:
            art.metadata[key] = value  # a bare word is a string
    art.save()


def cmd_meta_replace(args: argparse.Namespace) -> None:
    metadata = _load_metadata(args.json_value) or {}
    api = _api(args)
    api.repo.update_version(api.artifact(args.ref).record, metadata=metadata)


def cmd_delete(args: argparse.Namespace) -> None:
    api = _api(args)
    ref = names.Ref.parse(args.ref)
    if args.all:
        if ref.selector is not None:
            raise CliError(
                f"--all deletes a whole artifact: name it without a version ({ref.name})"
            )
        gone = api.delete_artifact(ref.name)
        print(f"deleted {ref.name} ({_plural(len(gone), 'version')}; its blobs go at gc)")
        return
    if ref.selector is None:
        raise CliError(f"bad ref {args.ref!r}: name the version to delete, e.g. {ref.name}:v0")
    art = api.artifact(args.ref)
    removed = api.repo.delete_version(art.record, delete_aliases=args.delete_aliases)
    extra = f" (aliases removed: {', '.join(removed)})" if removed else ""
    print(f"deleted {art.ref}{extra}")


def cmd_cache_cleanup(args: argparse.Namespace) -> None:
    size = parse_size(args.size)
    assert size is not None
    r = _api(args).cache_cleanup(size)
    if args.json:
        _print_json(
            {"removed": r.removed, "freed": r.freed, "size": r.kept_bytes, "pinned": r.pinned}
        )
        return
    print(
        f"removed {_plural(r.removed, 'blob')}, freed {_fmt_size(r.freed)}; cache now "
        f"{_fmt_size(r.kept_bytes)}" + (f"; {r.pinned} in use kept" if r.pinned else "")
    )


def cmd_cache_info(args: argparse.Namespace) -> None:
    i = _api(args).cache_info()
    if args.json:
        _print_json(
            {
                "path": i.root,
                "size": i.size,
                "limit": i.limit,
                "blobs": i.blobs,
                "partial": i.partials,
                "pinned": i.pinned,
                "pinned_bytes": i.pinned_bytes,
                "hits": i.hits,
                "misses": i.misses,
                "hit_rate": i.hit_rate,
            }
        )
        return
    rate = f"{i.hit_rate:.1%}" if i.hit_rate is not None else "-"
    print(f"path:     {i.root}")
    print(f"size:     {_fmt_size(i.size)} ({i.size} bytes)")
    print(f"limit:    {_fmt_size(i.limit) + f' ({i.limit} bytes)' if i.limit else 'none'}")
    print(f"blobs:    {i.blobs}" + (f" (+{i.partials} partly fetched)" if i.partials else ""))
    print(f"pinned:   {i.pinned} in use, {_fmt_size(i.pinned_bytes)}")
    print(f"hit rate: {rate} ({i.hits} hits, {i.misses} misses)")


def cmd_mount(args: argparse.Namespace) -> None:
    from artfs.fs.daemon import mount_command
    from artfs.fs.mountpoints import MountError

    try:
        mount_command(args)
    except MountError as e:
        raise CliError(str(e)) from None


def cmd_umount(args: argparse.Namespace) -> None:
    from artfs.fs.mountpoints import MountError, umount_command

    try:
        umount_command(args)
    except MountError as e:
        raise CliError(str(e)) from None


def cmd_gc(args: argparse.Namespace) -> None:
    from artfs.repo.gc import collect_garbage
    from artfs.repo.retention import delete_expired

    grace = parse_duration(args.grace)

    def waiting(holders: list[Any]) -> None:
        print(
            f"artfs: gc waits for {len(holders)} commit(s) to finish: "
            + "; ".join(h.describe() for h in holders[:3]),
            file=sys.stderr,
            flush=True,
        )

    repo = _api(args).repo
    expired = delete_expired(repo, dry_run=args.dry_run)
    r = collect_garbage(
        repo,
        grace=grace,
        dry_run=args.dry_run,
        force=args.force,
        on_wait=waiting,
        draft_age=parse_duration(args.draft_age),
    )
    if args.json:
        _print_json({**dataclasses.asdict(r), "expired_versions": [v.ref for v in expired]})
        return
    for v in expired:
        print(f"{'would delete' if args.dry_run else 'deleted'} expired {v.ref}")
    for d in r.drafts_removed:
        print(f"{'would remove' if args.dry_run else 'removed'} draft {d}")
    verb = "would sweep" if r.dry_run else "swept"
    kept = [f"{r.live_blobs} blobs in {r.live_versions} live versions kept"]
    if r.deleted_kept:
        kept.append(f"{r.deleted_kept} of versions deleted less than the grace period ago kept")
    if r.draft_blobs:
        kept.append(f"{r.draft_blobs} of open drafts kept")
    if r.young_kept:
        kept.append(f"{r.young_kept} unreferenced but younger than the grace period kept")
    temps = ""
    if r.temp_files:
        temps = (
            f"; {'would remove' if r.dry_run else 'removed'} {r.temp_files} temp files of "
            f"killed uploads ({_fmt_size(r.temp_bytes)})"
        )
    stale = f"; removed {r.stale_locks} stale locks" if r.stale_locks else ""
    freed = r.swept_bytes + r.temp_bytes
    print(
        f"{verb} {r.swept_blobs} blobs ({_fmt_size(r.swept_bytes)}){temps}{stale}; "
        + "; ".join(kept)
        + f"; {'would free' if r.dry_run else 'freed'} {_fmt_size(freed)}"
    )


def cmd_check(args: argparse.Namespace) -> None:
    from artfs.repo.check import check_store

    report = check_store(_api(args).repo, read_data=args.read_data, repair=args.repair)
    if args.json:
        _print_json(report.to_json())
    else:
        for p in report.problems:
            print(f"{'repaired' if p.repaired else 'problem'}: {p}")
        for w in report.warnings:
            print(f"{'repaired' if w.repaired else 'note'}: {w}")
        read = (
            f", re-hashed {report.blobs_read} blobs ({_fmt_size(report.bytes_read)})"
            if args.read_data
            else ""
        )
        left = sum(1 for p in report.problems if not p.repaired)
        print(
            f"checked {report.versions} versions of {report.artifacts} artifacts, "
            f"{report.blobs} blobs{read}: "
            + ("no problems" if not report.problems else f"{left} problems")
            + (f", {len(report.problems) - left} repaired" if len(report.problems) - left else "")
        )
    if not report.ok:
        raise SystemExit(EXIT_PROBLEMS)


def cmd_verify(args: argparse.Namespace) -> None:
    from artfs.repo.check import verify_version

    api = _api(args)
    art = api.artifact(args.ref)
    report = verify_version(api.repo, art.record, from_cache=args.from_cache)
    for m in report.mismatches:
        print(f"mismatch: {m}")
    where = "the local cache" if args.from_cache else "the store"
    extra = f"; {report.not_cached} not cached (not checked)" if report.not_cached else ""
    print(
        f"{art.ref}: {report.files} files, {report.checked} blobs ({_fmt_size(report.bytes)}) "
        f"re-hashed from {where}{extra}: "
        + (f"{len(report.mismatches)} mismatches" if report.mismatches else "all match")
    )
    if report.mismatches:
        raise SystemExit(EXIT_PROBLEMS)


def cmd_run(args: argparse.Namespace) -> None:
    import subprocess

    from artfs.repo import runs

    command = args.run_command
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise CliError("nothing to run: artfs run -- COMMAND [ARGS...]")
    api = _api(args)
    run = runs.start_run(api.repo, command)
    print(f"artfs: run {run.id}", file=sys.stderr)
    env = dict(os.environ, **{runs.RUN_ENV: run.id})
    try:
        code = subprocess.call(command, env=env)
    except OSError as e:
        # As a shell: 127 for a command not found, 126 for one that cannot run.
        code = 127 if isinstance(e, FileNotFoundError) else 126
        runs.finish_run(api.repo, run, code)
        print(f"artfs: {command[0]}: {e.strerror}", file=sys.stderr)
        raise SystemExit(code) from None
    runs.finish_run(api.repo, run, code)
    raise SystemExit(code)


def cmd_lineage(args: argparse.Namespace) -> None:
    from artfs.repo import graph, runs

    api = _api(args)
    repo = api.repo
    up = not args.down or args.up
    down = not args.up or args.down
    if args.run:
        run = runs.get_run(repo, args.target)
        g = graph.walk(repo, run_id=run.id, up=up, down=down, depth=args.depth)
        summary: dict[str, Any] = {
            "run": run.to_record(),
            "used": [v.ref for v in runs.used_artifacts(repo, run.id)],
            "logged": [v.ref for v in runs.logged_artifacts(repo, run.id)],
        }
    else:
        version = api.artifact(args.target).record
        g = graph.walk(repo, version=version, up=up, down=down, depth=args.depth)
        producer = runs.logged_by(repo, version)
        summary = {
            "ref": version.ref,
            "logged_by": producer
            and {
                **producer.to_record(),
                "used": [v.ref for v in runs.used_artifacts(repo, producer.id)],
            },
            "used_by": [
                {**r.to_record(), "logged": [v.ref for v in runs.logged_artifacts(repo, r.id)]}
                for r in runs.used_by(repo, version)
            ],
        }
    fmt = "json" if args.json else args.format
    if args.svg or args.png:
        _render_dot(g.to_dot(), args.svg, "svg")
        _render_dot(g.to_dot(), args.png, "png")
    if fmt == "json":
        _print_json({**summary, "graph": g.to_json()})
    elif fmt == "dot":
        sys.stdout.write(g.to_dot())
    elif not (args.svg or args.png):
        _print_lineage(g)


def _render_dot(source: str, dest: str | None, fmt: str) -> None:
    import shutil
    import subprocess

    if not dest:
        return
    dot = shutil.which("dot")
    if dot is None:
        raise CliError(
            f"--{fmt} needs Graphviz's dot (Debian: apt-get install graphviz); "
            "--format dot prints the graph's source"
        )
    proc = subprocess.run(
        [dot, f"-T{fmt}", "-o", dest], input=source, text=True, capture_output=True
    )
    if proc.returncode != 0:
        raise CliError(f"dot failed: {proc.stderr.strip().splitlines()[-1:]}")
    print(f"wrote {dest}", file=sys.stderr)


def _print_lineage(g: Any) -> None:
    """The graph as an indented outline: what made the root above, what it made below."""

    def label(node: str) -> str:
        f = g.nodes[node]
        if f["kind"] == "version":
            return node
        return f"run {f['run']}: {' '.join(f.get('command') or ['(no record)'])}"

    def outline(node: str, forward: bool, indent: int, seen: set[str]) -> None:
        nxt = sorted(b if forward else a for a, b in g.edges if (a if forward else b) == node)
        for other in nxt:
            is_run = g.nodes[other]["kind"] == "run"
            if forward:
                verb = "used by" if is_run else "which logged"
            else:
                verb = "logged by" if is_run else "which used"
            print(f"{'  ' * indent}{verb} {label(other)}")
            if other not in seen:
                outline(other, forward, indent + 1, seen | {other})

    print(label(g.root))
    outline(g.root, False, 1, {g.root})
    outline(g.root, True, 1, {g.root})


def cmd_versions(args: argparse.Namespace) -> None:
    api = _api(args)
    arts = api.artifact_versions(args.name, where=args.where, sort=args.sort, limit=args.limit)
    if args.json:
        _print_json([a.record.to_json(a.type) for a in arts])
        return
    _print_versions([a.record for a in arts])


def cmd_diff(args: argparse.Namespace) -> None:
    api = _api(args)
    old, new = api.artifact(args.old), api.artifact(args.new)
    changes = old.diff(new)
    if args.json:
        _print_json(
            {"from": old.qualified_name, "to": new.qualified_name}
            | {"changes": [c.to_json() for c in changes]}
        )
        return
    marks = {"added": "+", "removed": "-", "changed": "M"}
    for c in changes:
        if c.status == "changed":
            sizes = f"{_fmt_size(c.old_size or 0)} -> {_fmt_size(c.new_size or 0)}"
        else:
            sizes = _fmt_size((c.new_size if c.status == "added" else c.old_size) or 0)
        suffix = "/" if c.kind == "dir" else ""
        print(f"{marks[c.status]} {c.path}{suffix}\t{sizes}")
    counts = {k: sum(1 for c in changes if c.status == k) for k in marks}
    print(
        f"{counts['added']} added, {counts['removed']} removed, {counts['changed']} changed",
        file=sys.stderr,
    )


def cmd_ttl_set(args: argparse.Namespace) -> None:
    api = _api(args)
    art = api.artifact(args.ref)
    v = api.repo.set_ttl(art.record, parse_duration(args.duration))
    assert v.expires is not None
    print(f"{v.ref} expires {_fmt_time(v.expires)} (deleted by gc then, unless it has an alias)")


def cmd_ttl_rm(args: argparse.Namespace) -> None:
    api = _api(args)
    v = api.repo.set_ttl(api.artifact(args.ref).record, None)
    print(f"{v.ref} no longer expires")


def cmd_tag(args: argparse.Namespace) -> None:
    api = _api(args)
    art = api.artifact(args.ref)
    add = args.tags if args.tag_command == "add" else []
    remove = args.tags if args.tag_command == "rm" else []
    v = api.repo.edit_tags(art.record, add, remove)
    print(f"{v.ref} tags: {', '.join(v.tags) or '-'}")


def cmd_prune(args: argparse.Namespace) -> None:
    from artfs.repo.retention import PruneRules, prune

    api = _api(args)
    ref = names.Ref.parse(args.name)
    if ref.selector:
        raise CliError(f"prune takes project/artifact, not a version ({args.name})")
    if args.keep_last is not None and args.keep_last < 0:
        raise CliError(f"bad --keep-last {args.keep_last}: must be 0 or more")
    rules = PruneRules(
        keep_last=args.keep_last,
        older_than=parse_duration(args.older_than) if args.older_than else None,
        keep_aliased=not args.delete_aliased,
    )
    api.repo.artifact(ref.project, ref.artifact)
    gone = prune(api.repo, ref.project, ref.artifact, rules, dry_run=args.dry_run)
    if args.json:
        _print_json({"dry_run": args.dry_run, "deleted": [v.ref for v in gone]})
        return
    verb = "would delete" if args.dry_run else "deleted"
    for v in gone:
        print(f"{verb} {v.ref}")
    print(f"{verb} {_plural(len(gone), 'version')}; blobs go at gc", file=sys.stderr)


# -- parser ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"artfs: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    def store_options(parser: argparse.ArgumentParser, default: Any) -> None:
        parser.add_argument(
            "--store",
            default=default,
            help="store URL or directory (else $ARTFS_STORE, the config file, the default)",
        )
        parser.add_argument(
            "--cache", default=default, help="cache directory (else $ARTFS_CACHE, config)"
        )

    # The options are accepted before and after the command. After it they must
    # not reset one given before it, so there they have no default at all.
    common = argparse.ArgumentParser(add_help=False)
    store_options(common, argparse.SUPPRESS)
    parser = _Parser(
        prog="artfs",
        description="Versioned ML artifacts in a plain store, shown as directories.",
    )
    store_options(parser, None)
    parser.add_argument("--version", action="version", version=f"artfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Any, help: str, parents: list | None = None
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, parents=parents or [common])
        p.set_defaults(func=func)
        return p

    p = add("put", cmd_put, "store files or directories as a new version")
    p.add_argument("paths", nargs="*", metavar="PATH", help="files and directories to store")
    p.add_argument("-n", "--name", required=True, help="project/artifact")
    p.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="URI",
        help="add an object outside the store by URI, not a copy (s3://, gs://, az://, "
        "file://, https://); a prefix ending in / or a file:// directory adds each object "
        "under it (repeat)",
    )
    p.add_argument(
        "--ref-name",
        metavar="PATH",
        help="the path of the one --reference in the artifact (a prefix's directory)",
    )
    p.add_argument(
        "--max-objects",
        type=int,
        metavar="N",
        help="refuse a --reference prefix of more than N objects",
    )
    p.add_argument(
        "--no-checksum",
        action="store_true",
        help="record each reference's etag instead of reading it to record its digest",
    )
    p.add_argument(
        "-t", "--type", help="artifact type (default: the artifact's, or dataset for a new one)"
    )
    p.add_argument(
        "-a", "--alias", action="append", default=[], help="an alias for the new version (repeat)"
    )
    p.add_argument("-d", "--description", help="the version's description")
    p.add_argument("-m", "--metadata", help="a JSON object, or a file holding one")
    p.add_argument("--ttl", help="delete the version at gc this long after it is made (e.g. 30d)")
    p.add_argument("--json", action="store_true", help="print the new version as JSON")
    p.add_argument(
        "--draft",
        metavar="GROUP",
        help="add the files to the shared draft GROUP instead (finish with `artfs draft finish`)",
    )

    draft = sub.add_parser("draft", help="shared drafts: many writers, one version")
    draft_sub = draft.add_subparsers(dest="draft_command", required=True, metavar="COMMAND")
    p = draft_sub.add_parser("ls", parents=[common], help="list the drafts of an artifact")
    p.set_defaults(func=cmd_draft_ls)
    p.add_argument("name", metavar="PROJECT/ARTIFACT", help="the artifact")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = draft_sub.add_parser("finish", parents=[common], help="merge a draft into a version")
    p.set_defaults(func=cmd_draft_finish)
    p.add_argument("name", metavar="PROJECT/ARTIFACT", help="the artifact")
    p.add_argument("group", help="the draft's group")
    p.add_argument(
        "-a", "--alias", action="append", default=[], help="an alias for the new version (repeat)"
    )
    p.add_argument("--json", action="store_true", help="print the new version as JSON")
    p = draft_sub.add_parser("abort", parents=[common], help="discard a draft")
    p.set_defaults(func=cmd_draft_abort)
    p.add_argument("name", metavar="PROJECT/ARTIFACT", help="the artifact")
    p.add_argument("group", help="the draft's group")

    p = add("get", cmd_get, "download a version into a directory")
    p.add_argument("ref", help="project/artifact[:version-or-alias]")
    p.add_argument("--root", help="directory to write (default ./artifacts/NAME:vN)")
    p.add_argument(
        "--link",
        action="store_true",
        help="hard-link files to the cache (read-only, no copy) instead of reflink or copy",
    )
    p.add_argument("--path-prefix", help="only the entries under this path in the version")
    p.add_argument("--json", action="store_true", help="print the ref and directory as JSON")

    p = add("ls", cmd_ls, "list projects, artifacts or versions")
    p.add_argument("target", nargs="?", metavar="PROJECT[/ARTIFACT]", help="what to list")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("show", cmd_show, "show one version")
    p.add_argument("ref", help="project/artifact[:version-or-alias]")
    p.add_argument("--files", action="store_true", help="list its entries too")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("versions", cmd_versions, "list versions matching conditions, sorted")
    p.add_argument("name", metavar="PROJECT/ARTIFACT", help="the artifact")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COND",
        help="e.g. 'metadata.val_acc>0.9', 'tags=sweep3' (repeat: all must hold)",
    )
    p.add_argument("--sort", metavar="FIELD", help="e.g. -metadata.val_acc (- for descending)")
    p.add_argument("--limit", type=int, help="at most this many versions")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("diff", cmd_diff, "paths added, removed and changed between two versions")
    p.add_argument("old", metavar="REF1", help="the version to compare from")
    p.add_argument("new", metavar="REF2", help="the version to compare to")
    p.add_argument("--json", action="store_true", help="print JSON")

    project = sub.add_parser("project", help="create, change or show a project")
    project_sub = project.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    visibilities = ("private", "public", "open")
    p = project_sub.add_parser("create", parents=[common], help="make a project")
    p.set_defaults(func=cmd_project_create)
    p.add_argument("name", help="the project")
    p.add_argument(
        "--visibility",
        choices=visibilities,
        default="private",
        help="private: the group only; public: all read, the group writes; open: all write",
    )
    p.add_argument("--group", help="the owning group (a group name or gid)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = project_sub.add_parser("set", parents=[common], help="change visibility or group")
    p.set_defaults(func=cmd_project_set)
    p.add_argument("name", help="the project")
    p.add_argument("--visibility", choices=visibilities, help="the new visibility")
    p.add_argument("--group", help="the new owning group (a group name or gid)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = project_sub.add_parser("show", parents=[common], help="show a project")
    p.set_defaults(func=cmd_project_show)
    p.add_argument("name", help="the project")
    p.add_argument("--json", action="store_true", help="print JSON")

    alias = sub.add_parser("alias", help="set or remove aliases")
    alias_sub = alias.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    p = alias_sub.add_parser("set", parents=[common], help="point ALIAS at REF")
    p.set_defaults(func=cmd_alias_set)
    p.add_argument("ref", help="the version to point at")
    p.add_argument("alias", help="the alias")
    p = alias_sub.add_parser("rm", parents=[common], help="remove ALIAS")
    p.set_defaults(func=cmd_alias_rm)
    p.add_argument("name", metavar="PROJECT/ARTIFACT", help="the artifact")
    p.add_argument("alias", help="the alias")

    p = add("describe", cmd_describe, "set a version's description")
    p.add_argument("ref", help="the version")
    p.add_argument("text", help="the new description")

    meta = sub.add_parser("meta", help="edit a version's metadata")
    meta_sub = meta.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    p = meta_sub.add_parser("set", parents=[common], help="set keys (values parsed as JSON)")
    p.set_defaults(func=cmd_meta_set)
    p.add_argument("ref", help="the version")
    p.add_argument("pairs", nargs="+", metavar="KEY=VALUE", help="keys to set")
    p = meta_sub.add_parser("replace", parents=[common], help="replace all metadata")
    p.set_defaults(func=cmd_meta_replace)
    p.add_argument("ref", help="the version")
    p.add_argument("json_value", metavar="JSON", help="a JSON object, or a file holding one")

    tag = sub.add_parser("tag", help="add or remove a version's tags")
    tag_sub = tag.add_subparsers(dest="tag_command", required=True, metavar="COMMAND")
    for verb, what in (("add", "add TAGs"), ("rm", "remove TAGs")):
        p = tag_sub.add_parser(verb, parents=[common], help=what)
        p.set_defaults(func=cmd_tag)
        p.add_argument("ref", help="the version")
        p.add_argument("tags", nargs="+", metavar="TAG", help="tags (name rules as aliases)")

    ttl = sub.add_parser("ttl", help="set or remove a version's time to live")
    ttl_sub = ttl.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    p = ttl_sub.add_parser("set", parents=[common], help="expire REF this long after its creation")
    p.set_defaults(func=cmd_ttl_set)
    p.add_argument("ref", help="the version")
    p.add_argument("duration", help="e.g. 30d, 12h")
    p = ttl_sub.add_parser("rm", parents=[common], help="REF no longer expires")
    p.set_defaults(func=cmd_ttl_rm)
    p.add_argument("ref", help="the version")

    p = add("delete", cmd_delete, "delete a version, or with --all an artifact (blobs go at gc)")
    p.add_argument("ref", help="project/artifact:version (or project/artifact with --all)")
    p.add_argument(
        "--delete-aliases", action="store_true", help="also remove the version's aliases"
    )
    p.add_argument("--all", action="store_true", help="delete every version and the artifact")

    p = add("prune", cmd_prune, "delete the versions of an artifact that rules select")
    p.add_argument("name", metavar="PROJECT/ARTIFACT", help="the artifact")
    p.add_argument("--keep-last", type=int, metavar="N", help="keep the N highest versions")
    p.add_argument("--older-than", metavar="AGE", help="only versions older than this (e.g. 30d)")
    p.add_argument(
        "--keep-aliased",
        action="store_true",
        default=True,
        help="keep versions that hold an alias, latest included (the default)",
    )
    p.add_argument(
        "--delete-aliased", action="store_true", help="delete aliased versions too (aliases go)"
    )
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.add_argument("--json", action="store_true", help="print JSON")

    cache = sub.add_parser("cache", help="manage the local cache")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    p = cache_sub.add_parser("cleanup", parents=[common], help="prune the cache to SIZE")
    p.set_defaults(func=cmd_cache_cleanup)
    p.add_argument("size", metavar="SIZE", help="e.g. 1GB")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = cache_sub.add_parser(
        "info", parents=[common], help="size, limit, blobs, pinned bytes and hit rate"
    )
    p.set_defaults(func=cmd_cache_info)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("gc", cmd_gc, "delete expired versions and blobs that no live version needs")
    p.add_argument(
        "--grace",
        default="6h",
        help="keep blobs of versions deleted less than this ago, and unreferenced blobs "
        "uploaded less than this ago (default 6h, at least 1h)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would be freed")
    p.add_argument("--force", action="store_true", help="allow a grace period under the 1h floor")
    p.add_argument(
        "--draft-age",
        default="7d",
        help="remove drafts with no write for this long (abandoned, or closed; default 7d)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("check", cmd_check, "check that the store is consistent (exit 1 if not)")
    p.add_argument("--read-data", action="store_true", help="also re-hash every needed blob")
    p.add_argument(
        "--repair", action="store_true", help="fix latest, stale locks and orphan temp files"
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    # Its --cache means "from the cache": the cache directory goes before the command.
    store_only = argparse.ArgumentParser(add_help=False)
    store_only.add_argument("--store", default=argparse.SUPPRESS, help="store URL or directory")
    p = add(
        "verify",
        cmd_verify,
        "re-hash one version's files and name every mismatch",
        parents=[store_only],
    )
    p.add_argument("ref", help="the version to re-hash")
    p.add_argument(
        "--cache",
        dest="from_cache",
        action="store_true",
        help="re-hash the local cache's copies (give a cache directory before the command)",
    )

    p = add("run", cmd_run, "run a command, recording what it uses and logs")
    p.add_argument(
        "run_command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command to run"
    )

    p = add("lineage", cmd_lineage, "show the runs and versions around a version or run")
    p.add_argument("target", metavar="REF|RUN_ID", help="a version, or a run id with --run")
    p.add_argument("--run", action="store_true", help="TARGET is a run id")
    p.add_argument("--up", action="store_true", help="only what led to TARGET")
    p.add_argument("--down", action="store_true", help="only what came from TARGET")
    p.add_argument("--depth", type=int, help="at most this many edges away (default: all)")
    p.add_argument(
        "--format", choices=("text", "json", "dot"), default="text", help="output format"
    )
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument("--svg", metavar="FILE", help="draw the graph into FILE with Graphviz")
    p.add_argument("--png", metavar="FILE", help="draw the graph into FILE with Graphviz")

    p = add("mount", cmd_mount, "mount the store as a filesystem")
    p.add_argument("mountpoint", help="an empty directory")
    p.add_argument(
        "--foreground", "-f", action="store_true", help="stay in the foreground, log to stderr"
    )
    p.add_argument(
        "-o", dest="options", action="append", default=[], help="mount options, e.g. allow_other"
    )
    p.add_argument("--state", help="state directory (logs, staging)")
    p.add_argument("--ttl", type=float, default=None, help="seconds to cache listings")
    p.add_argument("--debug", action="store_true", help="log every request")
    p.add_argument("--system", action="store_true", help="use the system service's paths")
    p.add_argument(
        "--via-cache",
        action="store_true",
        help="copy blobs of a local-directory store into the cache instead of reading the "
        "store's files (for a store on NFS or another slow disk)",
    )
    p.add_argument(
        "--read-ahead-kb", type=int, default=None, help="kernel read-ahead (default 1024)"
    )

    p = add("umount", cmd_umount, "unmount and wait for the daemon to exit")
    p.add_argument("mountpoint", help="where artfs is mounted")
    p.add_argument("--state", help="state directory the mount was started with")
    p.add_argument("-z", "--lazy", action="store_true", help="detach now even if files are open")
    return parser


def _one_line(e: Exception) -> str:
    return str(e).replace("\n", " ") or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--sort -metadata.acc`: a descending sort key looks like an option to argparse.
    for i in range(len(argv) - 1):
        if argv[i] == "--sort" and argv[i + 1].startswith("-"):
            argv[i : i + 2] = [f"--sort={argv[i + 1]}"]
            break
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CliError, RepoError, names.BadName, ConfigError, StoreError, ValueError) as e:
        print(f"artfs: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # before OSError, its base: `artfs ls | head` is no error
        return 0
    except sqlite3.Error as e:  # a manifest written on a full disk, or an unreadable one
        print(f"artfs: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"artfs: error: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
