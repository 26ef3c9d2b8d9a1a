"""Direct access to a tracking server's artifact store, bypassing its ``mlflow-artifacts`` proxy.

A tracking server started with ``--artifacts-destination D`` hands out artifact URIs such as
``mlflow-artifacts:/1/<run_id>/artifacts`` and keeps the files at ``D/1/<run_id>/artifacts``. Every
file sent through the proxy costs the server one request; an operator who holds the store's own
credentials (the S3 keys, or the folder) can give ``D`` to ``mlops backup`` / ``mlops restore``
(``--artifacts-destination`` or ``MLOPS_ARTIFACTS_DESTINATION``) and the files move between the
archive and ``D`` directly, in parallel, while only metadata goes through the server.

:func:`check` proves that ``D`` really is the server's store before anything is read or written.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import re
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from mlops.errors import MlopsError
from mlops.util import first_line

log = logging.getLogger(__name__)

PROXY_PATH = "/api/2.0/mlflow-artifacts/artifacts"
PROBE_DIR = "mlops-probe"


class ArtifactStoreError(MlopsError, RuntimeError):
    """The artifact destination cannot be used (one readable line)."""


def proxied_path(uri: str) -> str | None:
    """The path inside the server's artifact destination that a proxied URI names, else None."""
    parts = urlsplit(uri)
    if parts.scheme == "mlflow-artifacts":
        path = parts.path
    elif parts.scheme in ("http", "https") and PROXY_PATH in parts.path:
        path = parts.path.split(PROXY_PATH, 1)[1]
    else:
        return None
    path = path.strip("/")
    clean = posixpath.normpath(path) if path else ""
    if clean in (".", ""):
        return ""
    if clean.startswith("../") or clean == ".." or "/../" in f"/{clean}/":
        raise ArtifactStoreError(f"artifact URI {uri!r} points outside the artifact store")
    return clean


def normalize_destination(dest: str) -> str:
    """``dest`` as an artifact-repository URI: S3/GCS/... URIs as given, folders made absolute."""
    dest = dest.strip()
    if not dest:
        raise ArtifactStoreError("the artifact destination is empty")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", dest):
        if dest.startswith("file://"):
            return str(Path(urlsplit(dest).path).resolve())
        return dest.rstrip("/")
    return str(Path(dest).expanduser().resolve())


class DirectStore:
    """Maps proxied artifact URIs onto the destination and hands out repositories for them."""

    def __init__(self, destination: str):
        self.destination = normalize_destination(destination)

    def __repr__(self) -> str:
        return f"DirectStore({self.destination})"

    def uri_for(self, proxied_uri: str) -> str | None:
        """The direct location of ``proxied_uri``, or None when it is not a proxied URI."""
        path = proxied_path(proxied_uri)
        if path is None:
            return None
        if not path:
            return self.destination
        return f"{self.destination.rstrip('/')}/{path}"

    def repo(self, proxied_uri: str):
        """An artifact repository on the direct location of ``proxied_uri`` (None if not proxied)."""
        direct = self.uri_for(proxied_uri)
        return None if direct is None else repository(direct)

    def check(self, tracking_uri: str, samples: list[str] | None = None) -> bool:
        """Prove that the tracking server serves files from this destination.

        With ``samples`` (a backup, which only reads): the first of them (at most five) that lists
        any file through the server must list the same files directly; False when none does (the
        caller then reads through the server). Without (a restore, which writes): a probe file is
        written here directly and must read back, identical, through the server's proxy; then it
        is deleted. Raises ArtifactStoreError naming the destination when they differ.
        """
        if samples is not None:
            same = None
            for uri in samples[:5]:
                same = self._same_listing(tracking_uri, uri)
                if same is not None:
                    break
            if same is None:
                return False
        else:
            same = self._probe(tracking_uri)
        if not same:
            raise ArtifactStoreError(
                f"the tracking server at {tracking_uri} does not serve files from {self.destination}: "
                "give the server's --artifacts-destination (and that store's credentials)"
            )
        log.info("artifacts go directly to %s (checked through the server)", self.destination)
        return True

    def _same_listing(self, tracking_uri: str, sample_uri: str) -> bool | None:
        try:
            through = sorted(f.path for f in repository(sample_uri, tracking_uri).list_artifacts())
        except Exception as exc:  # noqa: BLE001
            raise ArtifactStoreError(f"cannot list {sample_uri} through the server: {first_line(exc)}") from None
        if not through:
            return None
        try:
            direct = sorted(f.path for f in self.repo(sample_uri).list_artifacts())
        except Exception as exc:  # noqa: BLE001 - credentials, missing bucket, permissions
            raise ArtifactStoreError(
                f"cannot read the artifact destination {self.destination}: {first_line(exc)}"
            ) from None
        return through == direct

    def _probe(self, tracking_uri: str) -> bool:
        token = uuid.uuid4().hex
        rel = f"{PROBE_DIR}/{token}"
        with tempfile.TemporaryDirectory(prefix="mlops-probe-") as tmp:
            probe = Path(tmp) / "probe.txt"
            probe.write_text(f"mlops artifact-store probe {token}\n")
            try:
                repository(f"{self.destination.rstrip('/')}/{rel}").log_artifact(str(probe))
            except Exception as exc:  # noqa: BLE001 - credentials, missing bucket, permissions
                raise ArtifactStoreError(
                    f"cannot write to the artifact destination {self.destination}: {first_line(exc)}"
                ) from None
            try:
                proxied = repository(f"mlflow-artifacts:/{rel}", tracking_uri)
                back = Path(tmp) / "back"
                back.mkdir()
                got = Path(proxied.download_artifacts("probe.txt", dst_path=str(back)))
                return got.read_bytes() == probe.read_bytes()
            except Exception as exc:  # noqa: BLE001 - not found through the server, or no proxy at all
                log.debug("probe read through the server failed: %s", exc)
                return False
            finally:
                self._remove_probe(rel)

    def _remove_probe(self, rel: str) -> None:
        try:
            repository(f"{self.destination.rstrip('/')}/{rel}").delete_artifacts()
        except Exception as exc:  # noqa: BLE001 - a left-over probe file is harmless
            log.warning("could not remove the probe %s/%s: %s", self.destination, rel, first_line(exc))
        if "://" not in self.destination:  # a folder: its now empty probe folder goes too
            with contextlib.suppress(OSError):
                (Path(self.destination) / PROBE_DIR).rmdir()


def repository(uri: str, tracking_uri: str | None = None, direct: DirectStore | None = None):
    """MLflow's artifact repository for ``uri``; with ``direct``, a proxied URI is opened in the
    store itself instead of through the tracking server."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = direct.repo(uri) if direct is not None else None
    return repo if repo is not None else get_artifact_repository(uri, tracking_uri=tracking_uri)
