"""Resolve the registered version once and pin it: its files are downloaded before the job starts.

The Spark UDF is built from that local folder, never from ``models:/NAME/Production``, so the
executors score with the version resolved here even if the registry moves during the job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from mlops import model_io, registry
from mlops.scoring import BadInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PinnedModel:
    """One registered version, resolved and downloaded to ``path``."""

    name: str
    version: str
    selector: str  # how it was chosen: "stage Production", "alias champion", "version 3"
    run_id: str | None
    path: Path
    mlmodel: Any

    @property
    def uri(self) -> str:
        """The registry URI of exactly this version."""
        return f"models:/{self.name}/{self.version}"

    @property
    def signature(self) -> Any:
        """The model's signature (None when it was logged without one)."""
        return self.mlmodel.signature


def select(client: MlflowClient, name: str, stage: str | None, alias: str | None,
           version: str | None) -> tuple[Any, str]:
    """The ModelVersion named by at most one of stage, alias or version (default: stage Production)."""
    given = [x for x in (stage, alias, version) if x]
    if len(given) > 1:
        raise BadInput("give at most one of --stage, --alias and --version")
    registry.get_model(client, name)  # "registered model 'x' does not exist", whatever selects the version
    if version:
        return registry.get_version(client, name, version), f"version {version}"
    if alias:
        return registry.resolve(client, name, alias=alias), f"alias {alias}"
    stage = registry.normalize_stage(stage or registry.PRODUCTION)
    return registry.resolve(client, name, stage=stage), f"stage {stage}"


def pin(client: MlflowClient, name: str, dest: Path, stage: str | None = None, alias: str | None = None,
        version: str | None = None) -> PinnedModel:
    """Resolve the version once and download its files into ``dest``."""
    from mlflow.models import Model

    mv, selector = select(client, name, stage, alias, version)
    log.debug("model %s: %s is v%s; pinned for the whole job", name, selector, mv.version)
    path = model_io.download_version(name, mv.version, Path(dest), client.tracking_uri)
    mlmodel = Model.load(str(path / "MLmodel"))
    if "python_function" not in mlmodel.flavors:
        raise BadInput(f"{name} v{mv.version} has no python_function flavor: spark_udf cannot score it")
    return PinnedModel(name=name, version=str(mv.version), selector=selector, run_id=mv.run_id,
                       path=path, mlmodel=mlmodel)


_TENSOR_TYPES = {"b": "boolean", "i": "long", "u": "long", "f": "double", "O": "string", "U": "string",
                 "S": "string"}
_COLUMN_TYPES = {"boolean": "boolean", "integer": "long", "long": "long", "float": "double",
                 "double": "double", "string": "string"}


def result_type(pinned: PinnedModel) -> str:
    """The Spark type of the prediction column, from the output signature (``double`` without one).

    MLflow's own inference refuses an ``object`` tensor (string labels); here it is ``string``.
    """
    outputs = pinned.signature.outputs if pinned.signature is not None else None
    if outputs is None:
        log.warning("%s v%s has no output signature: predictions are written as double", pinned.name,
                    pinned.version)
        return "double"
    specs = outputs.inputs
    if len(specs) != 1:
        raise BadInput(f"{pinned.name} v{pinned.version} returns {len(specs)} outputs; mlops score writes one "
                       "prediction column")
    spec = specs[0]
    if outputs.is_tensor_spec():
        kind = _TENSOR_TYPES.get(spec.type.kind)
    else:
        kind = _COLUMN_TYPES.get(getattr(spec.type, "name", ""))
    if kind is None:
        raise BadInput(f"{pinned.name} v{pinned.version}: output type {spec.type} cannot be written as a column")
    return kind


__all__ = ["PinnedModel", "pin", "result_type", "select"]
