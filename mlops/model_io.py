"""Download, load and smoke-test one registered model version (shared by promote and serving)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops.errors import MlopsError
from mlops.util import first_line

log = logging.getLogger(__name__)


class ModelLoadError(MlopsError, RuntimeError):
    """A model version could not be downloaded, loaded or smoke-tested."""


@dataclass
class LoadedModel:
    """A model loaded from a local folder, with what the fast path needs."""

    path: Path
    pyfunc: Any
    mlmodel: Any
    input_example: Any | None
    sklearn_model: Any | None = None
    extras: dict = field(default_factory=dict)

    @property
    def signature(self):
        return self.mlmodel.signature


def download_version(name: str, version: str | int, dest: Path, tracking_uri: str | None = None) -> Path:
    """Download ``models:/name/version`` into ``dest`` atomically (temp folder, then rename)."""
    import mlflow

    dest = Path(dest)
    if (dest / "MLmodel").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp)
        )
        local = Path(local)
        if not (local / "MLmodel").is_file():
            raise ModelLoadError(f"{name} v{version}: downloaded files have no MLmodel")
        if local != tmp:
            # download_artifacts may nest the files one level down; flatten.
            for child in local.iterdir():
                shutil.move(str(child), tmp / child.name)
        try:
            os.replace(tmp, dest)
        except OSError:
            # Another process finished the same download first: keep theirs.
            if not (dest / "MLmodel").is_file():
                raise
        return dest
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any download failure is reported the same way
        raise ModelLoadError(f"{name} v{version}: download failed: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_local(path: Path) -> LoadedModel:
    """Load a model folder as pyfunc (plus the native sklearn object when there is one)."""
    import mlflow.pyfunc
    from mlflow.models import Model

    path = Path(path)
    try:
        mlmodel = Model.load(str(path / "MLmodel"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pyfunc = mlflow.pyfunc.load_model(str(path), suppress_warnings=True)
        try:
            example = mlmodel.load_input_example(str(path))
        except Exception:  # noqa: BLE001 - a missing/unreadable example means no smoke test data
            example = None
        sk = None
        if "sklearn" in mlmodel.flavors:
            try:
                sk = pyfunc.get_raw_model()
            except Exception:  # noqa: BLE001 - fall back to pyfunc
                sk = None
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load model at {path}: {exc}") from exc
    return LoadedModel(path=path, pyfunc=pyfunc, mlmodel=mlmodel, input_example=example, sklearn_model=sk)


def smoke_test(model: LoadedModel) -> Any:
    """Predict on the model's input example; raise ModelLoadError if that fails.

    A model logged without an input example (MLflow's default) is tested on one row built from its
    column signature (0, "", False), which then becomes its ``input_example``. One with neither an
    example nor a column signature gives nothing to predict on: it is only loaded (a warning says
    so) and None is returned. An example the MLmodel declares but that cannot be read is refused.
    """
    if model.input_example is None:
        if getattr(model.mlmodel, "saved_input_example_info", None):
            raise ModelLoadError(f"the input example of the model at {model.path} cannot be read")
        model.input_example = synthetic_example(model)
        if model.input_example is None:
            log.warning("model at %s has no input example and no column signature: loaded, not smoke-tested",
                        model.path)
            return None
        log.warning("model at %s has no input example: smoke-testing it on one synthetic row", model.path)
    try:
        preds = model.pyfunc.predict(model.input_example)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"smoke prediction failed: {first_line(str(exc)) if str(exc).strip() else type(exc).__name__}") from exc
    if preds is None or len(preds) == 0:
        raise ModelLoadError("smoke prediction returned nothing")
    return preds


_ZERO = {"double": 0.0, "float": 0.0, "long": 0, "integer": 0, "boolean": False, "string": "", "binary": b""}


def synthetic_example(model: LoadedModel):
    """One row from a column signature of scalar types (0, "", False, epoch); None without one."""
    import numpy as np
    import pandas as pd
    from mlflow.types.schema import ColSpec, DataType

    sig = model.signature
    inputs = sig.inputs if sig is not None else None
    if inputs is None or inputs.is_tensor_spec() or not inputs.has_input_names():
        return None
    specs = inputs.inputs
    if not all(isinstance(c, ColSpec) and isinstance(c.type, DataType) for c in specs):
        return None
    row = {}
    for c in specs:
        if c.type.name == "datetime":
            row[c.name] = pd.Series([pd.Timestamp(0)])
        elif c.type.name in _ZERO:
            value = _ZERO[c.type.name]
            dtype = None if c.type.name in ("string", "binary") else np.dtype(c.type.to_numpy())
            row[c.name] = pd.Series([value], dtype=dtype if dtype is not None else object)
        else:
            return None
    return pd.DataFrame(row)


def preflight(name: str, version: str | int, tracking_uri: str | None = None) -> LoadedModel:
    """Download, load and smoke-test a version in a throwaway folder (used before promoting)."""
    tmp = Path(tempfile.mkdtemp(prefix="mlops-preflight-"))
    try:
        path = download_version(name, version, tmp / "model", tracking_uri)
        model = load_local(path)
        smoke_test(model)
        return model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
