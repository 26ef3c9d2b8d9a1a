"""Atomic output: the Parquet folder is written beside the target under a hidden name and renamed
when it is complete, with a manifest (``_mlops_scoring.json``) written last before the rename.

An interrupted job leaves at most a hidden ``.NAME.partial-*`` folder (no ``_SUCCESS``, no
manifest, not the target's name); an existing target is replaced only with ``overwrite``, and then
only once the new folder is complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mlops.scoring import BadInput
from mlops.scoring.inputs import local_path
from mlops.util import atomic_write

log = logging.getLogger(__name__)

MANIFEST = "_mlops_scoring.json"


@dataclass
class Output:
    """The target folder and the hidden folder the job writes first."""

    target: Path
    partial: Path
    overwrite: bool

    def commit(self, manifest: dict) -> None:
        """Write the manifest into the partial folder, then move it to the target (old one last)."""
        atomic_write(self.partial / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        old = None
        if self.target.exists() or self.target.is_symlink():
            if not self.overwrite:  # appeared while the job ran
                raise BadInput(f"output {self.target} appeared during the job; kept, new result discarded")
            old = self.target.with_name(f".{self.target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.target, old)
        os.replace(self.partial, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        log.info("output %s complete", self.target)

    def discard(self) -> None:
        """Remove the partial folder (a failed or interrupted job), again if a task still finishing
        writes into it meanwhile."""
        for _ in range(5):
            shutil.rmtree(self.partial, ignore_errors=True)
            time.sleep(0.2)
            if not self.partial.exists():
                return
        log.warning("could not remove %s: remove it by hand", self.partial)


def prepare(path: str, overwrite: bool) -> Output:
    """Refuse an existing target without ``overwrite`` and a parent that cannot be written."""
    target = local_path(path).absolute()
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise BadInput(f"output {target} already exists (pass --overwrite to replace it)")
    if target.exists() and not target.is_dir():
        raise BadInput(f"output {target} is a file, not a folder")
    parent = target.parent
    if not parent.is_dir():
        raise BadInput(f"the folder of output {target} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write into {parent}: permission denied")
    partial = parent / f".{target.name}.partial-{uuid.uuid4().hex[:12]}"
    return Output(target=target, partial=partial, overwrite=overwrite)


def rows_in(folder: Path) -> int:
    """Rows of the Parquet files in ``folder``, from their footers (nothing else is read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in sorted(folder.glob("part-*.parquet")))


def read_manifest(folder: Path) -> dict:
    """The manifest of a complete output folder."""
    return json.loads((Path(folder) / MANIFEST).read_text())


__all__ = ["MANIFEST", "Output", "prepare", "read_manifest", "rows_in"]
