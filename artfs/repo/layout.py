"""The store's key layout (doc/FORMAT.md, section 1.1). No other module builds keys."""

from __future__ import annotations

CONFIG = "config.json"


def blob_key(digest: str) -> str:
    _algo, _, hexpart = digest.partition(":")
    return f"blobs/{hexpart[:2]}/{digest}"


def projects_prefix() -> str:
    return "projects/"


def project_prefix(project: str) -> str:
    return f"projects/{project}/"


def project_key(project: str) -> str:
    return f"projects/{project}/project.json"


def artifact_key(project: str, artifact: str) -> str:
    return f"projects/{project}/{artifact}/artifact.json"


def versions_prefix(project: str, artifact: str) -> str:
    return f"projects/{project}/{artifact}/versions/"


def version_key(project: str, artifact: str, number: int) -> str:
    return f"projects/{project}/{artifact}/versions/{number}.json"


def aliases_prefix(project: str, artifact: str) -> str:
    return f"projects/{project}/{artifact}/aliases/"


def alias_key(project: str, artifact: str, alias: str) -> str:
    return f"projects/{project}/{artifact}/aliases/{alias}.json"


def run_key(run_id: str) -> str:
    return f"runs/{run_id}.json"


def run_used_prefix(run_id: str) -> str:
    return f"runs/{run_id}/used/"


def run_used_key(run_id: str, project: str, artifact: str, number: int) -> str:
    return f"runs/{run_id}/used/{project}/{artifact}/{number}"


def run_logged_prefix(run_id: str) -> str:
    return f"runs/{run_id}/logged/"


def run_logged_key(run_id: str, project: str, artifact: str, number: int) -> str:
    return f"runs/{run_id}/logged/{project}/{artifact}/{number}"


def key_basename(key: str) -> str:
    return key.rstrip("/").rpartition("/")[2]


def locks_prefix() -> str:
    return "locks/"


def lock_key(lock_id: str) -> str:
    return f"locks/{lock_id}.json"


def blobs_prefix() -> str:
    return "blobs/"


def drafts_prefix(project: str, artifact: str) -> str:
    return f"projects/{project}/{artifact}/drafts/"


def draft_prefix(project: str, artifact: str, group: str) -> str:
    return f"projects/{project}/{artifact}/drafts/{group}/"


def draft_key(project: str, artifact: str, group: str) -> str:
    return f"projects/{project}/{artifact}/drafts/{group}/draft.json"


def draft_closed_key(project: str, artifact: str, group: str) -> str:
    return f"projects/{project}/{artifact}/drafts/{group}/closed.json"


def draft_parts_prefix(project: str, artifact: str, group: str) -> str:
    return f"projects/{project}/{artifact}/drafts/{group}/parts/"


def draft_part_key(project: str, artifact: str, group: str, writer: str) -> str:
    return f"projects/{project}/{artifact}/drafts/{group}/parts/{writer}.json"
