"""The ``artfs`` command line. Errors are one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from artfs import names
from artfs.api import Api
from artfs.config import ConfigError, load_settings, parse_size
from artfs.objects import StoreError
from artfs.repo import RepoError

EXIT_BAD_INPUT = 2


class CliError(Exception):
    pass


def _fmt_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _fmt_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


@contextlib.contextmanager
def _progress(desc: str, total: int) -> Iterator[Any]:
    """A tqdm bar on a terminal, else a no-op callback."""
    if not sys.stderr.isatty() or total == 0:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False) as bar:
        yield bar.update


def _api(args: argparse.Namespace) -> Api:
    return Api(settings=load_settings(args.store, args.cache))


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _load_metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    source = text
    if not text.lstrip().startswith("{") and Path(text).is_file():
        source = Path(text).read_text()
    try:
        value = json.loads(source)
    except ValueError as e:
        raise CliError(f"bad metadata {text!r}: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise CliError(f"bad metadata {text!r}: must be a JSON object")
    return value


# -- commands ----------------------------------------------------------------


def cmd_put(args: argparse.Namespace) -> None:
    api = _api(args)
    metadata = _load_metadata(args.metadata)
    total = sum(
        f.stat().st_size
        for p in map(Path, args.paths)
        if p.exists()
        for f in ([p] if p.is_file() else p.rglob("*"))
        if f.is_file()
    )
    with _progress("put", total) as progress:
        result = api.put(
            args.paths,
            args.name,
            type=args.type,
            aliases=args.alias,
            description=args.description or "",
            metadata=metadata,
            progress=progress,
        )
    v = result.version
    if not result.created:
        print(f"{v.ref} (unchanged: identical to latest, no new version)", file=sys.stderr)
    else:
        print(
            f"stored {v.file_count} files, {_fmt_size(v.size)}; "
            f"{result.new_blobs} new blobs ({_fmt_size(result.new_bytes)})",
            file=sys.stderr,
        )
    print(v.ref)


def cmd_get(args: argparse.Namespace) -> None:
    api = _api(args)
    art = api.artifact(args.ref)
    with _progress("get", art.version.size) as progress:
        path = art.download(args.root, progress)
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
    art = _api(args).artifact(args.ref)
    art.metadata = _load_metadata(args.json_value) or {}
    art.save()


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
    api = _api(args)
    try:
        size = parse_size(args.size)
    except ConfigError as e:
        raise CliError(str(e)) from None
    assert size is not None
    r = api.cache_cleanup(size)
    print(
        f"removed {r.removed} blobs, freed {_fmt_size(r.freed)}; cache now "
        f"{_fmt_size(r.kept_bytes)}" + (f"; {r.pinned} in use kept" if r.pinned else "")
    )


def cmd_mount(args: argparse.Namespace) -> None:
    from artfs.fs.daemon import mount_command

    mount_command(args)


def cmd_umount(args: argparse.Namespace) -> None:
    from artfs.fs.daemon import umount_command

    umount_command(args)


# -- parser ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="store URL or directory (else $ARTFS_STORE, config)")
    common.add_argument("--cache", help="cache directory (else $ARTFS_CACHE, config)")

    parser = argparse.ArgumentParser(
        prog="artfs",
        parents=[common],
        description="Versioned ML artifacts in a plain store, shown as directories.",
    )
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
    p.add_argument("-t", "--type", default="dataset")
    p.add_argument("-a", "--alias", action="append", default=[])
    p.add_argument("-d", "--description")
    p.add_argument("-m", "--metadata", help="a JSON object, or a file holding one")

    p = add("get", cmd_get, "download a version into a directory")
    p.add_argument("ref")
    p.add_argument("--root", help="directory to write (default ./artifacts/NAME:vN)")

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

    p = add("umount", cmd_umount, "unmount and wait for the daemon to exit")
    p.add_argument("mountpoint")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CliError, RepoError, names.BadName, ConfigError, StoreError, ValueError) as e:
        print(f"artfs: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
