"""The lineage graph: runs and versions, walked from either side to a depth.

Bipartite and directed, as W&B's artifact graph: a version points to the
runs that used it, a run to the versions it logged. Walking "up" follows the
edges backwards (who made this, from what), "down" forwards (what was made
from this). A run or version whose record is gone is a node without fields,
never an error: lineage is read from many writers' records.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from artfs.repo import runs
from artfs.repo.records import RepoError, Version
from artfs.repo.registry import Repo


@dataclass
class Graph:
    root: str
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> fields
    edges: set[tuple[str, str]] = field(default_factory=set)  # (from, to), in data-flow order

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "nodes": [{"id": k, **v} for k, v in sorted(self.nodes.items())],
            "edges": [{"from": a, "to": b} for a, b in sorted(self.edges)],
        }

    def to_dot(self) -> str:
        """Graphviz source: versions as boxes, runs as ellipses, data flowing down."""
        lines = ["digraph lineage {", "  rankdir=TB;", '  node [fontname="Helvetica"];']
        for node_id, f in sorted(self.nodes.items()):
            if f["kind"] == "version":
                label, shape = [node_id, f.get("type") or ""], "box"
            else:
                label, shape = [f"run {f['run']}", " ".join(f.get("command") or [])[:40]], "ellipse"
            text = "\\n".join(_q(line) for line in label)  # dot's own line break
            style = ', style="bold"' if node_id == self.root else ""
            lines.append(f'  "{_q(node_id)}" [label="{text}", shape={shape}{style}];')
        for a, b in sorted(self.edges):
            lines.append(f'  "{_q(a)}" -> "{_q(b)}";')
        lines.append("}")
        return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def run_node(run_id: str) -> str:
    return f"run:{run_id}"


def walk(
    repo: Repo,
    *,
    version: Version | None = None,
    run_id: str | None = None,
    up: bool = True,
    down: bool = True,
    depth: int | None = None,
) -> Graph:
    """The graph around one version or one run, ``depth`` edges each way (None: all)."""
    types: dict[tuple[str, str], str] = {}

    def vnode(v: Version) -> str:
        key = (v.project, v.artifact)
        if key not in types:
            try:
                types[key] = repo.artifact(*key).type
            except RepoError:
                types[key] = ""
        graph.nodes.setdefault(v.ref, {"kind": "version", "type": types[key], "ref": v.ref})
        return v.ref

    def rnode(rid: str, run: runs.Run | None = None) -> str:
        node = run_node(rid)
        if node not in graph.nodes:
            if run is None:
                try:
                    run = runs.get_run(repo, rid)
                except RepoError:
                    run = None
            fields: dict[str, Any] = {"kind": "run", "run": rid}
            if run is not None:
                rec = run.to_record()
                fields.update(command=rec["command"], exit_code=rec["exit_code"])
            graph.nodes[node] = fields
        return node

    if version is not None:
        graph = Graph(version.ref)
        start: tuple[str, Any] = ("version", version)
        vnode(version)
    elif run_id is not None:
        graph = Graph(run_node(run_id))
        start = ("run", run_id)
        rnode(run_id)
    else:
        raise ValueError("walk needs a version or a run")

    for direction in ("up", "down"):
        if (direction == "up" and not up) or (direction == "down" and not down):
            continue
        queue = deque([(start, 0)])
        seen = {graph.root}
        while queue:
            (kind, item), dist = queue.popleft()
            if depth is not None and dist >= depth:
                continue
            nxt: list[tuple[str, Any]] = []
            if kind == "version" and direction == "up":
                producer = runs.logged_by(repo, item)
                rid = producer.id if producer else item.logged_by
                if rid:
                    graph.edges.add((rnode(rid, producer), vnode(item)))
                    nxt.append(("run", rid))
            elif kind == "version":
                for r in runs.used_by(repo, item):
                    graph.edges.add((vnode(item), rnode(r.id, r)))
                    nxt.append(("run", r.id))
            elif direction == "up":
                for v in runs.used_artifacts(repo, item):
                    graph.edges.add((vnode(v), rnode(item)))
                    nxt.append(("version", v))
            else:
                for v in runs.logged_artifacts(repo, item):
                    graph.edges.add((rnode(item), vnode(v)))
                    nxt.append(("version", v))
            for k, it in nxt:
                node = it.ref if k == "version" else run_node(it)
                if node not in seen:
                    seen.add(node)
                    queue.append(((k, it), dist + 1))
    return graph
