"""What a backup archive may hold: the checks that make reading one safe.

Only regular files (and plain directories) with relative, normalised names that the manifest
lists are accepted; links, device files, absolute paths, ``..``, duplicates, extra or missing
files and checksum mismatches are refused.

Sizes and counts are bounded before anything is unpacked (:class:`Limits`, overridable through
``MLOPS_ARCHIVE_*`` environment variables, see :mod:`mlops.env`): files listed, total and
per-file bytes, the ratio of unpacked bytes to the archive's size, directory entries (only
parents of listed files, once each, and counted with the files), and deleted version numbers to
recreate per model. ``registry.json`` is checked too (:func:`check_registry`): every id and key
that becomes part of a path must match a strict pattern, every name, alias, tag, status,
timestamp and description must be one MLflow itself would accept, and every version's model
files must be in the manifest.
"""

from __future__ import annotations

import posixpath
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from mlops import env
from mlops.errors import Refused
from mlops.recovery import layout
from mlops.registry import RegistryError

MAX_NAME_CHARS = 1024
MAX_COMPONENT_BYTES = 255  # a file name's limit on Linux, macOS and Windows file systems
MAX_MODEL_NAME_CHARS = 256  # MLflow's column size for model names
MAX_DESCRIPTION_CHARS = 5000  # MLflow's column size for model and version descriptions
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Ids and keys that become part of a path inside the extracted archive.
# Matched whole (``fullmatch``): a trailing newline is not allowed.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MODEL_ID = re.compile(r"m-[0-9a-f]{1,64}")
SOURCE_KEY = re.compile(r"[0-9a-f]{16}")
EXPERIMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class ArchiveError(RegistryError, Refused):
    """The archive is missing, damaged, tampered with or unsafe; the message says which."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what an archive may unpack; the defaults fit any real registry backup.

    ``max_files`` counts the listed files and the folders that hold them (each one an inode and a
    write on restore). ``max_ratio`` applies once the listed bytes exceed ``ratio_floor_bytes``: an
    archive may unpack to at most that many times its own size (model files compress 2-10x; only
    a small archive, whose size says little, may unpack to more).
    """

    max_files: int = env.MLOPS_ARCHIVE_MAX_FILES.default
    max_bytes: int = env.MLOPS_ARCHIVE_MAX_BYTES.default
    max_ratio: float = env.MLOPS_ARCHIVE_MAX_RATIO.default
    ratio_floor_bytes: int = env.MLOPS_ARCHIVE_RATIO_FLOOR_BYTES.default
    max_deleted_versions: int = env.MLOPS_ARCHIVE_MAX_DELETED_VERSIONS.default

    @classmethod
    def from_env(cls) -> Limits:
        """Defaults, overridden by ``MLOPS_ARCHIVE_MAX_FILES``, ``MLOPS_ARCHIVE_MAX_BYTES``,
        ``MLOPS_ARCHIVE_MAX_RATIO``, ``MLOPS_ARCHIVE_RATIO_FLOOR_BYTES``,
        ``MLOPS_ARCHIVE_MAX_DELETED_VERSIONS``."""
        values = {}
        for f in fields(cls):
            var = env.VARIABLES[f"MLOPS_ARCHIVE_{f.name.upper()}"]
            try:
                values[f.name] = var.get()
            except env.EnvError:
                raise ArchiveError(f"{var.name} must be a number, not {var.raw()!r}") from None
        return cls(**values)


def _check_bounds(path: Path, files: dict, limits: Limits) -> None:
    """Refuse a manifest that lists more than the limits allow, before anything is unpacked."""
    if len(files) > limits.max_files:
        raise ArchiveError(
            f"{path}: the manifest lists {len(files)} files, more than the limit of {limits.max_files} "
            "(MLOPS_ARCHIVE_MAX_FILES)"
        )
    folders = len(_parents(files))
    if len(files) + folders > limits.max_files:
        raise ArchiveError(
            f"{path}: the manifest lists {len(files)} files in {folders} folders, more than the limit of "
            f"{limits.max_files} entries (MLOPS_ARCHIVE_MAX_FILES)"
        )
    total = sum(meta["size"] for meta in files.values())
    if total > limits.max_bytes:
        raise ArchiveError(
            f"{path}: the manifest lists {total} bytes, more than the limit of {limits.max_bytes} "
            "(MLOPS_ARCHIVE_MAX_BYTES)"
        )
    packed = max(1, path.stat().st_size)
    if total > limits.ratio_floor_bytes and total > limits.max_ratio * packed:
        raise ArchiveError(
            f"{path}: the manifest lists {total} bytes from a {packed}-byte archive, more than "
            f"{limits.max_ratio:g} times its size (MLOPS_ARCHIVE_MAX_RATIO); refused as a decompression bomb"
        )


def _parents(files: dict) -> set[str]:
    """Every folder that holds a listed file."""
    out: set[str] = set()
    for name in files:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


_UNSAFE = "absolute, '..', not normalised, a control character or a part over 255 bytes"


def _ident(pattern: re.Pattern, value: object, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ArchiveError(f"registry.json: {what} {str(value)[:80]!r} is not a valid id; refused as forged or damaged")
    return value


def _short(value: object) -> str:
    return repr(value if isinstance(value, (int, float, type(None))) else str(value)[:80])


def _mlflow_refuses(check: Callable, *args) -> str | None:
    """MLflow's own validator's message for ``args``, or None when it accepts them."""
    from mlflow.exceptions import MlflowException

    try:
        check(*args)
    except MlflowException as exc:
        return " ".join(str(exc.message).split())[:200]
    return None


def _check_fields(where: str, rec: dict) -> None:
    """Timestamps, description, tags and user of a model or version record, typed as backup writes them."""
    from mlflow.utils import validation

    for key in ("creation_timestamp", "last_updated_timestamp"):
        ts = rec.get(key)
        if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 2**63):
            raise ArchiveError(f"registry.json: {where}: {key} {_short(ts)} is not a timestamp in milliseconds")
    desc = rec.get("description")
    if desc is not None and not isinstance(desc, str):
        raise ArchiveError(f"registry.json: {where}: description is not text")
    if desc and len(desc) > MAX_DESCRIPTION_CHARS:
        raise ArchiveError(f"registry.json: {where}: description has {len(desc)} characters, more than MLflow's "
                           f"{MAX_DESCRIPTION_CHARS}")
    tags = rec.get("tags", {})
    if not isinstance(tags, dict):
        raise ArchiveError(f"registry.json: {where}: tags is not a table")
    for key, value in (tags or {}).items():
        if not isinstance(value, str):
            raise ArchiveError(f"registry.json: {where}: tag {_short(key)} has a value that is not text")
        if problem := _mlflow_refuses(validation._validate_registered_model_tag, key, value):
            raise ArchiveError(f"registry.json: {where}: tag {_short(key)}: {problem}")
    user = rec.get("user_id")
    if user is not None and not isinstance(user, str):
        raise ArchiveError(f"registry.json: {where}: user_id {_short(user)} is not text")


def _check_alias(name: str, alias: object) -> None:
    from mlflow.utils import validation

    if not isinstance(alias, str):
        raise ArchiveError(f"registry.json: model {name!r}: alias {_short(alias)} is not text")
    problem = (_mlflow_refuses(validation._validate_model_alias_name, alias)
               or _mlflow_refuses(validation._validate_model_alias_name_reserved, alias))
    if problem:
        raise ArchiveError(f"registry.json: model {name!r}: alias {alias[:80]!r} is refused by MLflow: {problem}")


def check_registry(reg: object, files: dict, limits: Limits | None = None) -> None:
    """Refuse a ``registry.json`` whose ids or keys are not safe path parts, whose names, aliases,
    tags, statuses, timestamps or descriptions MLflow would not accept, whose versions' model files
    are not all in the manifest, or whose version counters exceed the limits."""
    from mlflow.utils import validation

    limits = limits or Limits.from_env()
    if not isinstance(reg, dict) or not isinstance(reg.get("models"), list):
        raise ArchiveError("registry.json has no list of models")
    experiments = reg.get("experiments", {})
    if not isinstance(experiments, dict):
        raise ArchiveError("registry.json: 'experiments' is not a table")
    for eid, exp in experiments.items():
        _ident(EXPERIMENT_ID, eid, "experiment id")
        if not isinstance(exp, dict) or not isinstance(exp.get("name"), str) or not exp["name"].strip():
            raise ArchiveError(f"registry.json: experiment {eid} has no name")
        if len(exp["name"]) > validation.MAX_EXPERIMENT_NAME_LENGTH:
            raise ArchiveError(f"registry.json: experiment {eid}: its name is longer than MLflow's "
                               f"{validation.MAX_EXPERIMENT_NAME_LENGTH} characters")
        if not isinstance(exp.get("tags", {}), dict):
            raise ArchiveError(f"registry.json: experiment {eid}: tags is not a table")
    names = set()
    for m in reg["models"]:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m["name"]:
            raise ArchiveError("registry.json: a model has no name")
        name = m["name"]
        if problem := _mlflow_refuses(validation._validate_model_name, name):
            raise ArchiveError(f"registry.json: model {name[:80]!r} is refused by MLflow: {problem}")
        if len(name) > MAX_MODEL_NAME_CHARS or _CONTROL.search(name):
            raise ArchiveError(f"registry.json: model {name[:80]!r}: a name longer than {MAX_MODEL_NAME_CHARS} "
                               "characters or holding control characters is refused")
        if name in names:
            raise ArchiveError(f"registry.json: model {name!r} appears twice")
        names.add(name)
        _check_fields(f"model {name!r}", m)
        aliases = m.get("aliases")
        if aliases is not None and not isinstance(aliases, dict):
            raise ArchiveError(f"registry.json: model {name!r}: aliases is not a table of alias to version")
        versions = m.get("versions")
        top = m.get("max_version")
        if not isinstance(versions, list) or not isinstance(top, int) or isinstance(top, bool):
            raise ArchiveError(f"registry.json: model {name!r} needs a list of versions and an integer max_version")
        numbers = set()
        for v in versions:
            n = v.get("version") if isinstance(v, dict) else None
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= top or n in numbers:
                raise ArchiveError(f"registry.json: model {name!r} has a version numbered {n!r} (1..{top}, once each)")
            numbers.add(n)
            _check_version(name, v, files)
        deleted = top - len(numbers)
        if deleted > limits.max_deleted_versions:
            raise ArchiveError(
                f"registry.json: model {name!r} would need {deleted} deleted version numbers recreated "
                f"(max_version {top}, {len(numbers)} versions), more than the limit of "
                f"{limits.max_deleted_versions} (MLOPS_ARCHIVE_MAX_DELETED_VERSIONS)"
            )
        listed = m.get("deleted_versions")
        if listed is not None and listed != [n for n in range(1, top + 1) if n not in numbers]:
            raise ArchiveError(f"registry.json: model {name!r}: deleted_versions does not match its versions")
        for alias, ver in (aliases or {}).items():
            _check_alias(name, alias)
            if isinstance(ver, bool) or not isinstance(ver, (int, str)) or str(ver) not in {str(n) for n in numbers}:
                raise ArchiveError(f"registry.json: model {name!r}: alias {alias!r} points at v{ver}, not in the archive")


def _check_version(name: str, v: dict, files: dict) -> None:
    from mlflow.entities.model_registry.model_version_stages import ALL_STAGES
    from mlflow.entities.model_registry.model_version_status import ModelVersionStatus

    label = f"{name} v{v['version']}"
    _check_fields(label, v)
    status = v.get("status")
    statuses = [ModelVersionStatus.to_string(s) for s in ModelVersionStatus.all_status()]
    if status is not None and status not in statuses:
        raise ArchiveError(f"registry.json: {label}: status {_short(status)} is not one of MLflow's "
                           f"({', '.join(statuses)})")
    stage = v.get("stage")
    if stage is not None and stage not in ALL_STAGES:
        raise ArchiveError(f"registry.json: {label}: stage {_short(stage)} is not one of {', '.join(ALL_STAGES)}")
    for key in ("status_message", "run_link", "source"):
        if v.get(key) is not None and not isinstance(v[key], str):
            raise ArchiveError(f"registry.json: {label}: {key} is not text")
    valias = v.get("aliases")
    if valias is not None and (not isinstance(valias, list) or not all(isinstance(a, str) for a in valias)):
        raise ArchiveError(f"registry.json: {label}: aliases is not a list of names")
    src = v.get("source_info")
    if not isinstance(src, dict):
        raise ArchiveError(f"registry.json: {label} has no source_info")
    if v.get("run_id") is not None:
        _ident(RUN_ID, v["run_id"], f"{label}: run id")
        if layout.run_json(v['run_id']) not in files:
            raise ArchiveError(f"{label}: its run {v['run_id']} is not in the archive")
    kind = src.get("kind")
    if kind == "logged_model":
        mid = _ident(MODEL_ID, src.get("model_id"), f"{label}: logged model id")
        if layout.logged_model_json(mid) not in files:
            raise ArchiveError(f"{label}: its logged model {mid} is not in the archive")
    elif kind == "run":
        path = src.get("path")
        if v.get("run_id") is None or not isinstance(path, str) or (path and not safe_name(path)):
            raise ArchiveError(f"registry.json: {label}: run artifact path {str(path)[:80]!r} is unsafe or has no run")
    elif kind == "files":
        _ident(SOURCE_KEY, src.get("key"), f"{label}: source key")
    else:
        raise ArchiveError(f"registry.json: {label}: unknown source kind {str(kind)[:40]!r}")
    base = layout.model_dir(v)
    expected = v.get("model_files")
    if expected is not None and not isinstance(expected, dict):
        raise ArchiveError(f"registry.json: {label}: model_files is not a table")
    for rel, digest in (expected or {}).items():
        meta = files.get(f"{base}/{rel}") if isinstance(rel, str) and safe_name(rel) else None
        if meta is None or meta["sha256"] != digest:
            raise ArchiveError(f"{label}: model file {rel!r} is missing from the archive or differs from the backup")
    if expected == {}:
        return  # the source version had no files; backup said so
    if f"{base}/MLmodel" in files:
        return
    legacy = layout.legacy_source_dir(files, base) if kind == "files" else None
    if legacy is None or f"{legacy}/MLmodel" not in files:
        raise ArchiveError(f"{label}: its model files (MLmodel under {base}) are missing from the archive")


def safe_name(name: str) -> bool:
    """True for a relative, normalised POSIX path without ``..``, ``.``, backslashes, control
    characters (NUL, newline, ...) or a part longer than a file system allows."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or "\\" in name or _CONTROL.search(name):
        return False
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return False
    parts = name.split("/")
    if any(p in ("", ".", "..") or len(p.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES for p in parts):
        return False
    return posixpath.normpath(name) == name


def _check_member(member: tarfile.TarInfo, files: dict) -> None:
    """Refuse anything but a listed regular file or a plain directory with a safe name."""
    name = member.name
    if not safe_name(name.rstrip("/") if member.isdir() else name):
        raise ArchiveError(f"unsafe path in archive: {name[:300]!r} ({_UNSAFE})")
    if member.issym() or member.islnk():
        raise ArchiveError(f"archive member {name!r} is a link ({member.linkname!r}); links are refused")
    if member.isdir():
        return
    if not member.isreg() or member.issparse() or member.type == tarfile.CONTTYPE:
        raise ArchiveError(f"archive member {name!r} is not a regular file (type {member.type!r})")
    if name not in files:
        raise ArchiveError(f"archive member {name!r} is not listed in the manifest")
    if member.size != files[name]["size"]:
        raise ArchiveError(
            f"size mismatch for {name!r}: {member.size} bytes in the archive, {files[name]['size']} in the manifest"
        )
