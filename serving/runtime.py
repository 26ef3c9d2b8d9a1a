"""The model runtime: load, predict and unload one model version (no HTTP, no registry here).

Two prediction paths:

* **native** (scikit-learn flavor with a column signature of one numeric type): the request is
  validated into a numpy array and handed straight to the scikit-learn estimator, skipping pyfunc's
  per-request DataFrame. Feature names are stripped from shallow copies of the pipeline steps so
  scikit-learn neither warns nor re-checks column names on a bare array (the order is guaranteed
  by the validation). At load time the native path must reproduce pyfunc's predictions on the
  model's input example bit for bit, or it is not used.
* **frame** (scikit-learn flavor with a mixed-type column signature: strings, integers, booleans,
  optional columns): the request is validated into a DataFrame with the signature's column types
  and handed to the pipeline directly, skipping pyfunc's schema enforcement (which would only
  re-check what the validation already did). At load time it must reproduce pyfunc's predictions
  bit for bit on the input example and on variants of it (each optional column missing, each text
  column an unseen category, numbers changed), or it is not used.
* **pyfunc** for everything else (other flavors, tensor signatures, no signature, params).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlops.model_io import LoadedModel, ModelLoadError, load_local, smoke_test
from mlops.util import first_line
from serving import batching, inputs
from serving.compat import parse_with_mlflow
from serving.compiled import CompiledPipeline, Unsupported
from serving.errors import InputError
from serving.predictors import (
    FramePredictor,
    NativePredictor,
    generated_rows,
    jsonable,
    same_bits,
    sklearn_checks_on,
)
from serving.schema import InputSpec, ParsedInput

log = logging.getLogger("serving.runtime")


@dataclass
class VersionMeta:
    """What the registry said about a version (kept next to the cached files)."""

    name: str
    version: str
    selector: str
    stage: str | None = None
    aliases: list[str] = field(default_factory=list)
    run_id: str | None = None
    source: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    description: str | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name, "version": self.version, "selector": self.selector, "stage": self.stage,
            "aliases": self.aliases, "run_id": self.run_id, "source": self.source, "metrics": self.metrics,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: dict) -> VersionMeta:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Prediction:
    """The result of one request."""

    labels: Any
    proba: np.ndarray | None
    classes: list | None
    rows: int


def preimport(tracking_uri: str | None = None) -> None:
    """Import what loading a model needs (MLflow pyfunc, scikit-learn, skops, the SQL store).

    gunicorn calls this in the master (preloaded app) so forked workers share the imported code
    and a worker's first load takes well under a second instead of several. Starts no thread.
    """
    if tracking_uri and tracking_uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import mlflow.pyfunc  # noqa: F401
    import mlflow.pyfunc.scoring_server  # noqa: F401
    import mlflow.sklearn  # noqa: F401
    import pandas  # noqa: F401
    import sklearn.pipeline  # noqa: F401

    try:
        import skops.io  # noqa: F401
    except ImportError:  # models saved with pickle/cloudpickle do not need it
        pass


class ModelRuntime:
    """One loaded and smoke-tested model version."""

    def __init__(self, loaded: LoadedModel, meta: VersionMeta, loaded_from: str):
        self.loaded = loaded
        self.meta = meta
        self.name = meta.name
        self.version = str(meta.version)
        self.loaded_from = loaded_from
        self.loaded_at = time.time()
        self.spec = InputSpec.from_signature(loaded.signature)
        self.native: NativePredictor | None = None
        self.frame_native: FramePredictor | CompiledPipeline | None = None
        self.native_reason = "not a scikit-learn model"
        self.classes: list | None = None
        self.flavors = sorted(loaded.mlmodel.flavors)
        #: why concurrent requests on this version are not merged into one call (None: they are)
        self.batch_reason: str | None = "not checked"
        #: the serving.batching.Batcher of this version (set by the routes on first use)
        self.batcher: Any = None

    # -- lifecycle --------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path, meta: VersionMeta, loaded_from: str = "registry") -> ModelRuntime:
        """Load from a local folder and smoke-test; raise ModelLoadError (never half-loaded)."""
        try:
            loaded = load_local(Path(path))
        except ModelLoadError as exc:
            exc.phase = "load"
            raise
        try:
            expected = smoke_test(loaded)  # also builds a synthetic example for models logged without one
            rt = cls(loaded, meta, loaded_from)
            rt._setup_native(expected)
            rt._smoke_own_paths()
            rt.batch_reason = rt._batch_exactness()
        except ModelLoadError as exc:
            exc.phase = "smoke_test"
            raise
        return rt

    def unload(self) -> None:
        """Retire this version (the swap calls it on the version it replaced).

        Nothing is torn down here: requests still running on this version hold their own reference
        and finish on it; the objects are freed when the last of them returns.
        """
        self.retired_at = time.time()

    # -- prediction -------------------------------------------------------------------------------

    @property
    def fast(self) -> bool:
        return self.native is not None or self.frame_native is not None

    @property
    def fast_path(self) -> str:
        """Which path predicts: ``native`` (one numpy array), ``compiled`` (the pipeline compiled to
        numpy, see serving.compiled), ``frame`` (a typed DataFrame straight to scikit-learn) or
        ``pyfunc``."""
        if self.native is not None:
            return "native"
        if self.frame_native is None:
            return "pyfunc"
        return "compiled" if isinstance(self.frame_native, CompiledPipeline) else "frame"

    def parse(self, body: bytes, kind: str) -> ParsedInput:
        """Validate a request body (``kind`` = json|csv) for this model's signature."""
        if self.spec is None:
            return parse_with_mlflow(body, kind, self.loaded)
        return inputs.parse(body, kind, self.spec, build_frame=self.native is None)

    def predict(self, parsed: ParsedInput, with_proba: bool = False) -> Prediction:
        """Predict; InputError for inputs the model itself rejects."""
        if self.native is not None and parsed.array is not None:
            labels, proba = self.native(parsed.array, with_proba)
            return Prediction(labels, proba, self.native.classes, parsed.rows)
        if self.frame_native is not None and parsed.tabular and not parsed.params:
            # the compiled pipeline reads the typed columns; a DataFrame only where it is needed
            table = parsed.columns if parsed.columns is not None and isinstance(self.frame_native, CompiledPipeline) \
                else parsed.frame
            try:
                labels, proba = self.frame_native(table, with_proba)
            except (ValueError, TypeError, KeyError) as exc:
                raise InputError("INVALID_INPUT", f"the model rejected the input: {first_line(str(exc))}") from None
            return Prediction(labels, proba, self.classes, parsed.rows)
        return self._predict_pyfunc(parsed, with_proba)

    def _predict_pyfunc(self, parsed: ParsedInput, with_proba: bool) -> Prediction:
        from mlflow.exceptions import MlflowException

        data = parsed.frame if parsed.frame is not None else parsed.array
        params = parsed.params if (self.spec is None or self.spec.has_params) else None
        try:
            with warnings.catch_warnings(), sklearn_checks_on():
                warnings.simplefilter("ignore")
                labels = self.loaded.pyfunc.predict(data, params=params) if params else self.loaded.pyfunc.predict(data)
        except MlflowException as exc:
            raise InputError("INVALID_INPUT", first_line(exc.message)) from None
        except (ValueError, TypeError, KeyError) as exc:
            raise InputError("INVALID_INPUT", f"the model rejected the input: {first_line(str(exc))}") from None
        proba = None
        sk = self.loaded.sklearn_model
        if with_proba and sk is not None and hasattr(sk, "predict_proba") and parsed.frame is not None:
            try:
                with warnings.catch_warnings(), sklearn_checks_on():
                    warnings.simplefilter("ignore")
                    proba = sk.predict_proba(parsed.frame)
            except Exception:  # noqa: BLE001 - probabilities are optional
                proba = None
        return Prediction(labels, proba, self.classes, parsed.rows)

    # -- native path set-up -----------------------------------------------------------------------

    def _setup_native(self, expected: Any) -> None:
        sk = self.loaded.sklearn_model
        self.classes = jsonable(getattr(sk, "classes_", None)) if sk is not None else None
        if sk is None:
            return
        if self.spec is None:
            self.native_reason = "no column signature"
            return
        if self.spec.has_params:
            self.native_reason = "signature has params"
            return
        if not self.spec.uniform:
            self._setup_frame()
            return
        try:
            native = NativePredictor(sk, assume_finite=self.spec.all_required)
            X = self._example_array()
            if native.forest is not None:
                self._check_compiled(native, X)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                labels, proba = native(X, with_proba=True)
                ref_proba = sk.predict_proba(self._example_frame()) if native.has_proba else None
        except Exception as exc:  # noqa: BLE001 - any failure means: use pyfunc
            self.native_reason = f"native call failed on the input example: {first_line(str(exc))}"
            log.warning("%s v%s: using the pyfunc path (%s)", self.name, self.version, self.native_reason)
            return
        noisy = [str(w.message) for w in caught if "feature names" in str(w.message)]
        if noisy:
            self.native_reason = f"native call warns: {noisy[0]}"
        elif not same_bits(labels, np.asarray(expected)):
            self.native_reason = "native predictions differ from pyfunc on the input example"
        elif ref_proba is not None and not same_bits(proba, ref_proba):
            self.native_reason = "native probabilities differ from scikit-learn's on the input example"
        else:
            self.native = native
            self.native_reason = "ok" if native.forest is None else f"ok (compiled {native.forest.kind})"
            return
        log.warning("%s v%s: using the pyfunc path (%s)", self.name, self.version, self.native_reason)

    def _check_compiled(self, native: NativePredictor, example: np.ndarray, n: int = 256) -> None:
        """Keep the compiled final step (forest or linear model, with the scaler/imputer as float
        operations) only if it equals the pipeline on the example and ``n`` rows spread around it."""
        from serving.predictors import same_bits

        sk = self.loaded.sklearn_model
        rng = np.random.default_rng(int(self.version or 0))
        X = (example[rng.integers(0, len(example), n)] * rng.normal(1.0, 0.3, (n, example.shape[1])))
        X = X.astype(example.dtype)  # the dtype requests arrive in (float32 signatures scale in float32)
        if not self.spec.all_required and X.dtype.kind == "f":  # missing values reach the model
            X[rng.random(X.shape) < 0.05] = np.nan
        X = np.vstack([example, X])
        try:
            with warnings.catch_warnings(), sklearn_checks_on():
                warnings.simplefilter("ignore")
                ref_labels = sk.predict(X)
                ref_proba = sk.predict_proba(X) if native.has_proba else None
                labels, proba = native(X, with_proba=True)
            why = None
            if not same_bits(labels, ref_labels):
                why = "predictions differ from scikit-learn"
            elif ref_proba is not None and not same_bits(proba, ref_proba):
                why = "probabilities differ from scikit-learn"
        except Exception as exc:  # noqa: BLE001 - any failure means: scikit-learn's own calls
            why = f"failed: {first_line(str(exc))}"
        if why is not None:
            log.warning("%s v%s: scikit-learn's own calls are kept (compiled %s %s)", self.name, self.version,
                        native.forest.kind, why)
            native.forest = native.ops = None

    def _setup_frame(self) -> None:
        """The compiled path if it equals scikit-learn bit for bit on the example, its variants and
        generated rows; else the frame path if it equals pyfunc on the example and its variants."""
        sk = self.loaded.sklearn_model
        try:
            bodies = self._variant_bodies()
        except Exception as exc:  # noqa: BLE001 - any failure means: use pyfunc
            self.native_reason = f"cannot build rows from the input example: {first_line(str(exc))}"
            log.warning("%s v%s: using the pyfunc path (%s)", self.name, self.version, self.native_reason)
            return
        candidates: list[tuple[str, Any]] = []
        compiled_why = ""
        try:
            types = {s.name: s.type for s in self.spec.specs}
            candidates.append(("compiled", CompiledPipeline.build(sk, types, self._example_frame())))
        except Unsupported as exc:
            compiled_why = f"not compiled: {exc}"
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next path
            compiled_why = f"not compiled: {first_line(str(exc))}"
        candidates.append(("frame", FramePredictor(sk)))
        for kind, predictor in candidates:
            why = next((w for w in (self._frame_differs(predictor, b) for b in bodies) if w), None)
            if why is None and kind == "compiled":
                why = self._generated_differs(predictor)
            if why is None:
                self.frame_native = predictor
                self.native_reason = "ok (compiled)" if kind == "compiled" else f"ok (frame; {compiled_why})"
                log.info("%s v%s: prediction path %s", self.name, self.version, self.native_reason)
                return
            if kind == "compiled":
                compiled_why = f"compiled path not exact: {why}"
                log.info("%s v%s: %s", self.name, self.version, compiled_why)
        self.native_reason = why
        log.warning("%s v%s: using the pyfunc path (%s)", self.name, self.version, why)

    def _generated_differs(self, predictor: Any, n: int = 256) -> str | None:
        """Compare with the pipeline itself on ``n`` generated rows: every known category, missing
        and unseen values, numbers around the example's."""
        rows = generated_rows(self.spec, self._example_frame(), predictor, n, seed=int(self.version or 0))
        body = _orjson_dumps({"dataframe_split": {"columns": list(self.spec.columns), "data": rows}})
        try:
            frame = inputs.parse(body, "json", self.spec, build_frame=True).frame
        except InputError as exc:
            return f"generated rows refused: {exc.message}"
        sk = self.loaded.sklearn_model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with sklearn_checks_on():
                ref_labels = sk.predict(frame.copy())
                ref_proba = sk.predict_proba(frame.copy()) if hasattr(sk, "predict_proba") else None
            labels, proba = predictor(frame.copy(), with_proba=True)
        if not same_bits(labels, ref_labels):
            return "predictions differ from scikit-learn on generated rows"
        if ref_proba is not None and not same_bits(proba, ref_proba):
            return "probabilities differ from scikit-learn on generated rows"
        return None

    def _frame_differs(self, frame_native: Any, body: bytes) -> str | None:
        """Why the frame path is not exact on ``body`` (None: equal to pyfunc, or both refuse it)."""
        try:
            frame = inputs.parse(body, "json", self.spec, build_frame=True).frame
        except InputError:
            return None  # the validation refuses it before any path would run
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with sklearn_checks_on():
                    expected = np.asarray(self.loaded.pyfunc.predict(frame.copy()))
            except Exception:  # noqa: BLE001 - pyfunc refuses: the frame path must refuse too
                expected = None
            try:
                labels, proba = frame_native(frame.copy(), with_proba=True)
            except Exception as exc:  # noqa: BLE001
                return None if expected is None else f"frame call failed: {first_line(str(exc))}"
        if expected is None:
            return "the frame path accepts rows pyfunc refuses"
        if not same_bits(labels, expected):
            return "frame predictions differ from pyfunc"
        sk = self.loaded.sklearn_model
        if proba is not None and hasattr(sk, "predict_proba"):
            with warnings.catch_warnings(), sklearn_checks_on():
                warnings.simplefilter("ignore")
                if not same_bits(proba, sk.predict_proba(frame.copy())):
                    return "probabilities differ from scikit-learn"
        return None

    def _variant_bodies(self) -> list[bytes]:
        """The input example, and rows derived from it that reach the code a client's rows reach:
        every optional column missing (each alone and all at once), every text column an unseen
        category, every number changed."""
        frame = self._example_frame()
        rows = frame.astype(object).where(frame.notna(), None).to_numpy().tolist()
        base = rows[0]
        variants = [list(r) for r in rows]
        optional = [i for i, s in enumerate(self.spec.specs) if not s.required]
        for i in optional:
            variants.append([None if j == i else v for j, v in enumerate(base)])
        if optional:
            variants.append([None if j in optional else v for j, v in enumerate(base)])
        for i, s in enumerate(self.spec.specs):
            if s.type == "string":
                variants.append([f"unseen-{self.version}-category" if j == i else v for j, v in enumerate(base)])
        bumped = list(base)
        for i, s in enumerate(self.spec.specs):
            v = bumped[i]
            if s.type in ("double", "float") and isinstance(v, (int, float)) and not isinstance(v, bool):
                bumped[i] = float(v) * 1.5 + 1.0
            elif s.type in ("long", "integer") and isinstance(v, int) and not isinstance(v, bool):
                bumped[i] = v + 1
        variants.append(bumped)
        columns = list(self.spec.columns)
        return [_orjson_dumps({"dataframe_split": {"columns": columns, "data": [r]}}) for r in variants] + \
            [_orjson_dumps({"dataframe_split": {"columns": columns, "data": variants}})]

    def _example_frame(self):
        import pandas as pd

        ex = self.loaded.input_example
        if isinstance(ex, pd.DataFrame):
            return ex[list(self.spec.columns)]
        return pd.DataFrame(ex, columns=list(self.spec.columns))

    def _example_array(self) -> np.ndarray:
        """The input example through the same request validation as a client's rows."""
        frame = self._example_frame()
        body = _orjson_dumps({"dataframe_split": {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}})
        parsed = inputs.parse(body, "json", self.spec)
        return parsed.array

    def _smoke_own_paths(self) -> None:
        """Run the serving path itself once (parse + predict), so a swap never brings surprises."""
        if self.loaded.input_example is None or self.spec is None:
            return
        try:
            frame = self._example_frame()
            try:
                body = _orjson_dumps({"dataframe_split": {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}})
            except TypeError:  # values JSON cannot carry (bytes): requests for it reach MLflow's parser
                log.info("%s v%s: the input example has no JSON form; serving path not smoke-tested", self.name, self.version)
                return
            self.predict(self.parse(body, "json"), with_proba=True)
        except InputError as exc:
            raise ModelLoadError(f"the input example fails the serving path: {exc.message}") from None
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"the input example fails the serving path: {first_line(str(exc))}") from None

    def _batch_exactness(self, n: int = 48) -> str | None:
        """Whether a merged call of this version equals one-by-one calls bit for bit
        (``serving.batching.exactness``), on generated rows validated as requests are."""
        if not self.fast or self.spec is None:
            return "pyfunc path: custom models may not predict row by row"
        try:
            rows = generated_rows(self.spec, self._example_frame(), self.frame_native, n,
                                  seed=int(self.version or 0) + 1)
            columns = list(self.spec.columns)
            parts = []
            for i, row in enumerate(rows):
                chunk = [row] if i % 3 else rows[i:i + 2]  # mostly 1-row requests, some of 2
                body = _orjson_dumps({"dataframe_split": {"columns": columns, "data": chunk}})
                try:
                    parts.append(self.parse(body, "json"))
                except InputError:
                    continue
            why = batching.exactness(parts, self.predict, self.fast_path)
        except Exception as exc:  # noqa: BLE001 - any failure means: predict each request alone
            why = f"merging check failed: {first_line(str(exc))}"
        if why is None:
            log.info("%s v%s: concurrent requests are merged (checked bit for bit on %d rows)", self.name, self.version, n)
        else:
            log.info("%s v%s: concurrent requests are predicted one by one (%s)", self.name, self.version, why)
        return why

    # -- description ------------------------------------------------------------------------------

    def signature_dict(self) -> dict | None:
        sig = self.loaded.signature if self.loaded is not None else None
        if sig is None:
            return None
        d = sig.to_dict()
        out = {}
        for key in ("inputs", "outputs", "params"):
            raw = d.get(key)
            if raw:
                try:
                    import json

                    out[key] = json.loads(raw)
                except (TypeError, ValueError):
                    out[key] = raw
        return out


def _orjson_dumps(obj: Any) -> bytes:
    import orjson

    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
