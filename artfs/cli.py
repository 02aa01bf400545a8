"""The ``artfs`` command line. Errors are one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from artfs import names
from artfs.api import Api
from artfs.config import ConfigError, load_settings, parse_duration, parse_size
from artfs.config import format_size as _fmt_size
from artfs.objects import StoreError
from artfs.repo import RepoError

EXIT_BAD_INPUT = 2
EXIT_PROBLEMS = 1  # check and verify: the store is not what it should be


class CliError(Exception):
    pass


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
    metadata = _load_metadata(args.metadata)
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
        )
    v = result.version
    if not result.created:
        print(f"{v.ref} (unchanged: identical to latest, no new version)", file=sys.stderr)
    else:
        print(
            f"stored {v.file_count} files, {_fmt_size(v.size)}; "
            f"{result.new_blobs} new {'blob' if result.new_blobs == 1 else 'blobs'} "
            f"({_fmt_size(result.new_bytes)})",
            file=sys.stderr,
        )
    print(v.ref)


def cmd_get(args: argparse.Namespace) -> None:
    api = _api(args)
    art = api.artifact(args.ref)
    with _progress_bars() as bars:
        path = art.download(args.root, bars("get", art.version.size), link=args.link)
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
            print(f"{r['name']}\t{r['type']}\t{r['versions']} versions")
        return
    art = repo.artifact(project, artifact)
    versions = repo.versions(project, artifact)
    if args.json:
        _print_json([v.to_json(art.type) for v in versions])
        return
    for v in versions:
        aliases = ",".join(v.aliases)
        print(
            f"v{v.number}\t{_fmt_time(v.created)}\t{v.file_count} files\t"
            f"{_fmt_size(v.size)}\t{aliases}"
        )


def cmd_show(args: argparse.Namespace) -> None:
    api = _api(args)
    art = api.artifact(args.ref)
    v = art.version
    out = v.to_json(art.type)
    if args.files:
        out["files"] = [{"path": p, "size": s, "digest": d} for p, s, d in art.files()]
    if args.json:
        _print_json(out)
        return
    print(f"ref:         {v.ref}")
    print(f"type:        {art.type}")
    print(f"aliases:     {', '.join(v.aliases) or '-'}")
    print(f"created:     {_fmt_time(v.created)}")
    print(f"files:       {v.file_count}")
    print(f"size:        {_fmt_size(v.size)} ({v.size} bytes)")
    print(f"manifest:    {v.manifest}")
    print(f"description: {v.description or '-'}")
    print(f"metadata:    {json.dumps(v.metadata, sort_keys=True)}")
    if v.logged_by:
        print(f"logged by:   {v.logged_by}")
    if args.files:
        for f in out["files"]:
            print(f"  {f['size']:>12}  {f['path']}")


def cmd_alias_set(args: argparse.Namespace) -> None:
    api = _api(args)
    v = api.artifact(args.ref).version
    api.repo.set_alias(v, args.alias)
    print(f"{v.project}/{v.artifact}:{args.alias} -> v{v.number}")


def cmd_alias_rm(args: argparse.Namespace) -> None:
    api = _api(args)
    ref = names.Ref.parse(args.name)
    api.repo.remove_alias(ref.project, ref.artifact, args.alias)


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
    api.repo.update_version(api.artifact(args.ref).version, metadata=metadata)


def cmd_delete(args: argparse.Namespace) -> None:
    api = _api(args)
    ref = names.Ref.parse(args.ref)
    if ref.selector is None:
        raise CliError(f"bad ref {args.ref!r}: name the version to delete, e.g. {ref.name}:v0")
    art = api.artifact(args.ref)
    removed = api.repo.delete_version(art.version, delete_aliases=args.delete_aliases)
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
        f"removed {r.removed} blobs, freed {_fmt_size(r.freed)}; cache now "
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
    from artfs.fs.daemon import MountError, mount_command

    try:
        mount_command(args)
    except MountError as e:
        raise CliError(str(e)) from None


def cmd_umount(args: argparse.Namespace) -> None:
    from artfs.fs.daemon import MountError, umount_command

    try:
        umount_command(args)
    except MountError as e:
        raise CliError(str(e)) from None


def cmd_gc(args: argparse.Namespace) -> None:
    from artfs.repo.gc import collect_garbage

    grace = parse_duration(args.grace)

    def waiting(holders: list[Any]) -> None:
        print(
            f"artfs: gc waits for {len(holders)} commit(s) to finish: "
            + "; ".join(h.describe() for h in holders[:3]),
            file=sys.stderr,
            flush=True,
        )

    r = collect_garbage(
        _api(args).repo, grace=grace, dry_run=args.dry_run, force=args.force, on_wait=waiting
    )
    verb = "would sweep" if r.dry_run else "swept"
    kept = [f"{r.live_blobs} blobs in {r.live_versions} live versions kept"]
    if r.deleted_kept:
        kept.append(f"{r.deleted_kept} of versions deleted less than the grace period ago kept")
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
    report = verify_version(api.repo, art.version, from_cache=args.from_cache)
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
        runs.finish_run(api.repo, run, 127)
        raise CliError(f"cannot run {command[0]}: {e.strerror}") from None
    runs.finish_run(api.repo, run, code)
    raise SystemExit(code)


def cmd_lineage(args: argparse.Namespace) -> None:
    from artfs.repo import runs

    api = _api(args)
    repo = api.repo
    if args.run:
        run = runs.get_run(repo, args.target)
        used = runs.used_artifacts(repo, run.id)
        logged = runs.logged_artifacts(repo, run.id)
        if args.json:
            _print_json(
                {
                    "run": run.to_record(),
                    "used": [v.ref for v in used],
                    "logged": [v.ref for v in logged],
                }
            )
            return
        print(f"run {run.id}: {' '.join(run.command)} (exit {run.exit_code})")
        for v in used:
            print(f"  used    {v.ref}")
        for v in logged:
            print(f"  logged  {v.ref}")
        return
    version = api.artifact(args.target).version
    producer = runs.logged_by(repo, version)
    consumers = runs.used_by(repo, version)
    if args.json:
        _print_json(
            {
                "ref": version.ref,
                "logged_by": producer
                and {
                    **producer.to_record(),
                    "used": [v.ref for v in runs.used_artifacts(repo, producer.id)],
                },
                "used_by": [
                    {**r.to_record(), "logged": [v.ref for v in runs.logged_artifacts(repo, r.id)]}
                    for r in consumers
                ],
            }
        )
        return
    print(version.ref)
    if producer:
        print(f"  logged by run {producer.id}: {' '.join(producer.command)}")
        for v in runs.used_artifacts(repo, producer.id):
            print(f"    which used {v.ref}")
    for r in consumers:
        print(f"  used by run {r.id}: {' '.join(r.command)}")
        for v in runs.logged_artifacts(repo, r.id):
            print(f"    which logged {v.ref}")


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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Any, help: str, parents: list | None = None
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, parents=parents or [common])
        p.set_defaults(func=func)
        return p

    p = add("put", cmd_put, "store files or directories as a new version")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-n", "--name", required=True, help="project/artifact")
    p.add_argument(
        "-t", "--type", help="artifact type (default: the artifact's, or dataset for a new one)"
    )
    p.add_argument("-a", "--alias", action="append", default=[])
    p.add_argument("-d", "--description")
    p.add_argument("-m", "--metadata", help="a JSON object, or a file holding one")

    p = add("get", cmd_get, "download a version into a directory")
    p.add_argument("ref")
    p.add_argument("--root", help="directory to write (default ./artifacts/NAME:vN)")
    p.add_argument(
        "--link",
        action="store_true",
        help="hard-link files to the cache (read-only, no copy) instead of reflink or copy",
    )

    p = add("ls", cmd_ls, "list projects, artifacts or versions")
    p.add_argument("target", nargs="?", metavar="PROJECT[/ARTIFACT]")
    p.add_argument("--json", action="store_true")

    p = add("show", cmd_show, "show one version")
    p.add_argument("ref")
    p.add_argument("--files", action="store_true")
    p.add_argument("--json", action="store_true")

    alias = sub.add_parser("alias", help="set or remove aliases")
    alias_sub = alias.add_subparsers(dest="alias_command", required=True)
    p = alias_sub.add_parser("set", parents=[common], help="point ALIAS at REF")
    p.set_defaults(func=cmd_alias_set)
    p.add_argument("ref")
    p.add_argument("alias")
    p = alias_sub.add_parser("rm", parents=[common], help="remove ALIAS")
    p.set_defaults(func=cmd_alias_rm)
    p.add_argument("name", metavar="PROJECT/ARTIFACT")
    p.add_argument("alias")

    p = add("describe", cmd_describe, "set a version's description")
    p.add_argument("ref")
    p.add_argument("text")

    meta = sub.add_parser("meta", help="edit a version's metadata")
    meta_sub = meta.add_subparsers(dest="meta_command", required=True)
    p = meta_sub.add_parser("set", parents=[common], help="set keys (values parsed as JSON)")
    p.set_defaults(func=cmd_meta_set)
    p.add_argument("ref")
    p.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    p = meta_sub.add_parser("replace", parents=[common], help="replace all metadata")
    p.set_defaults(func=cmd_meta_replace)
    p.add_argument("ref")
    p.add_argument("json_value", metavar="JSON")

    p = add("delete", cmd_delete, "delete a version (its blobs go at gc)")
    p.add_argument("ref")
    p.add_argument("--delete-aliases", action="store_true")

    cache = sub.add_parser("cache", help="manage the local cache")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    p = cache_sub.add_parser("cleanup", parents=[common], help="prune the cache to SIZE")
    p.set_defaults(func=cmd_cache_cleanup)
    p.add_argument("size", metavar="SIZE", help="e.g. 1GB")
    p.add_argument("--json", action="store_true")
    p = cache_sub.add_parser(
        "info", parents=[common], help="size, limit, blobs, pinned bytes and hit rate"
    )
    p.set_defaults(func=cmd_cache_info)
    p.add_argument("--json", action="store_true")

    p = add("gc", cmd_gc, "delete blobs that no live version needs")
    p.add_argument(
        "--grace",
        default="6h",
        help="keep blobs of versions deleted less than this ago, and unreferenced blobs "
        "uploaded less than this ago (default 6h, at least 1h)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would be freed")
    p.add_argument("--force", action="store_true", help="allow a grace period under the 1h floor")

    p = add("check", cmd_check, "check that the store is consistent (exit 1 if not)")
    p.add_argument("--read-data", action="store_true", help="also re-hash every needed blob")
    p.add_argument(
        "--repair", action="store_true", help="fix latest, stale locks and orphan temp files"
    )
    p.add_argument("--json", action="store_true")

    # Its --cache means "from the cache": the cache directory goes before the command.
    store_only = argparse.ArgumentParser(add_help=False)
    store_only.add_argument("--store", default=argparse.SUPPRESS, help="store URL or directory")
    p = add(
        "verify",
        cmd_verify,
        "re-hash one version's files and name every mismatch",
        parents=[store_only],
    )
    p.add_argument("ref")
    p.add_argument(
        "--cache",
        dest="from_cache",
        action="store_true",
        help="re-hash the local cache's copies (give a cache directory before the command)",
    )

    p = add("run", cmd_run, "run a command, recording what it uses and logs")
    p.add_argument("run_command", nargs=argparse.REMAINDER, metavar="-- COMMAND")

    p = add("lineage", cmd_lineage, "show the runs and versions around a version or run")
    p.add_argument("target", metavar="REF|RUN_ID")
    p.add_argument("--run", action="store_true", help="TARGET is a run id")
    p.add_argument("--json", action="store_true")

    p = add("mount", cmd_mount, "mount the store as a filesystem")
    p.add_argument("mountpoint")
    p.add_argument("--foreground", "-f", action="store_true")
    p.add_argument(
        "-o", dest="options", action="append", default=[], help="mount options, e.g. allow_other"
    )
    p.add_argument("--state", help="state directory (logs, staging)")
    p.add_argument("--ttl", type=float, default=None, help="seconds to cache listings")
    p.add_argument("--debug", action="store_true")
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
    p.add_argument("mountpoint")
    p.add_argument("--state", help="state directory the mount was started with")
    p.add_argument("-z", "--lazy", action="store_true", help="detach now even if files are open")
    return parser


def _one_line(e: Exception) -> str:
    return str(e).replace("\n", " ") or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
