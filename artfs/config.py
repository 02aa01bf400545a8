"""Where the store, the cache and the state live.

Each setting comes from the first of: a command-line flag, an environment
variable, the TOML config file, the default. The config file is the user's
(platformdirs) or, for the system service, ``/etc/artfs/config.toml``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP = "artfs"
SYSTEM_CONFIG = Path("/etc/artfs/config.toml")
SYSTEM_CACHE = Path("/var/cache/artfs")
SYSTEM_STATE = Path("/var/lib/artfs")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    store: str
    cache_dir: Path
    state_dir: Path
    cache_size: int | None
    config_file: Path | None
    raw: dict


def config_path(system: bool = False) -> Path:
    env = os.environ.get("ARTFS_CONFIG")
    if env:
        return Path(env)
    if system:
        return SYSTEM_CONFIG
    return Path(platformdirs.user_config_dir(APP)) / "config.toml"


def _parse_with_unit(text: str, units: dict[str, int], what: str, hint: str) -> float:
    """A non-negative number with an optional one-letter unit suffix."""
    mult = 1
    if text and text[-1] in units:
        mult = units[text[-1]]
        text = text[:-1]
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"bad {what}: use a number with {hint}") from None
    if value < 0:
        raise ConfigError(f"bad {what}: negative")
    return value * mult


def parse_size(text: str | int | None) -> int | None:
    """'1GB', '500M', '2GiB', '1024' -> bytes."""
    if text is None or isinstance(text, int):
        return text
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(_parse_with_unit(t, units, f"size {text!r}", "K, M, G or T"))


def parse_duration(text: str | float) -> float:
    """'6h', '30m', '90s', '2d', '0' -> seconds."""
    if isinstance(text, int | float):
        return float(text)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return _parse_with_unit(text.strip().lower(), units, f"duration {text!r}", "s, m, h or d")


def format_size(n: float) -> str:
    """Bytes for people: '1.2 GB' (powers of 1000, as ``du --si``)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


# Keys of the config file's [object_store] table that hold a secret.
SECRET_KEYS = frozenset(
    {
        "secret_access_key",
        "aws_secret_access_key",
        "session_token",
        "aws_session_token",
        "token",
        "access_key",
        "account_key",
        "azure_storage_account_key",
        "sas_key",
        "azure_storage_sas_key",
        "client_secret",
        "azure_client_secret",
        "service_account_key",
        "google_service_account_key",
        "password",
    }
)


def credentials_warning(settings: Settings) -> str | None:
    """A warning if the config file holds store credentials and others can read it.

    The daemon keeps the credentials; users of a shared mount get access
    through it, by project, not the keys to the whole bucket.
    """
    path = settings.config_file
    table = settings.raw.get("object_store")
    if path is None or not isinstance(table, dict):
        return None
    keys = [k for k in table if isinstance(k, str)]
    for service in ("s3", "gs", "az"):  # a service's own table (objects/cloud.py)
        sub = table.get(service)
        if isinstance(sub, dict):
            keys += [k for k in sub if isinstance(k, str)]
    secrets = sorted({k for k in keys if k.lower() in SECRET_KEYS})
    if not secrets:
        return None
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (
        f"config {path} holds store credentials ({', '.join(secrets)}) and is readable "
        f"by others (mode {mode:04o}); chmod 600 {path}"
    )


def load_settings(
    store: str | None = None,
    cache: str | None = None,
    state: str | None = None,
    *,
    system: bool = False,
) -> Settings:
    path = config_path(system)
    raw: dict = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None

    def pick(flag: str | None, env: str, key: str, default: str) -> str:
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"config {path}: {key} must be a string, not {value!r}")
        return flag or os.environ.get(env) or value or default

    data_dir = Path(platformdirs.user_data_dir(APP))
    store_url = pick(store, "ARTFS_STORE", "store", str(data_dir / "store"))
    cache_dir = pick(
        cache,
        "ARTFS_CACHE",
        "cache",
        str(SYSTEM_CACHE if system else platformdirs.user_cache_dir(APP)),
    )
    state_dir = pick(
        state,
        "ARTFS_STATE",
        "state",
        str(SYSTEM_STATE if system else platformdirs.user_state_dir(APP)),
    )
    cache_size = parse_size(os.environ.get("ARTFS_CACHE_SIZE") or raw.get("cache_size"))
    return Settings(
        store_url,
        Path(cache_dir),
        Path(state_dir),
        cache_size,
        path if path.exists() else None,
        raw,
    )
