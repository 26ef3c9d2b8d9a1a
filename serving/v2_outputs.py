"""Open Inference Protocol answers: the inference response's output tensors and the model
metadata (input tensors per signature column, outputs with their datatypes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from serving.codecs_v2 import (
    MATRIX_INPUT,
    METADATA_DATATYPE,
    PREDICTIONS,
    PROBABILITIES,
    V2Request,
    bad,
    has_proba,
    one_type,
)

if TYPE_CHECKING:
    from serving.runtime import ModelRuntime, Prediction


def datatype_of(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype (strings and objects are BYTES)."""
    kind = dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu" and dtype.itemsize in (1, 2, 4, 8):
        return f"{'U' if kind == 'u' else ''}INT{dtype.itemsize * 8}"
    if kind == "f" and dtype.itemsize in (2, 4, 8):
        return f"FP{dtype.itemsize * 8}"
    return "BYTES"


def output_tensor(name: str, values: Any) -> dict:
    """A response output: shape, datatype and row-major data of ``values``."""
    arr = values if isinstance(values, np.ndarray) else np.asarray(values)
    datatype = datatype_of(arr.dtype)
    if datatype == "BYTES":
        data: Any = [v if v is None or isinstance(v, str) else str(v) for v in arr.ravel().tolist()]
    else:
        data = np.ascontiguousarray(arr).ravel()
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data}


def response(runtime: ModelRuntime, req: V2Request, result: Prediction) -> dict:
    """The inference response for ``result`` (outputs in the order the model produces them)."""
    outputs = []
    if PREDICTIONS in req.outputs:
        outputs.append(output_tensor(PREDICTIONS, result.labels))
    if PROBABILITIES in req.outputs:
        if result.proba is None:
            raise bad(f"output '{PROBABILITIES}' is not available for this input")
        out = output_tensor(PROBABILITIES, np.asarray(result.proba, dtype=np.float64))
        out["parameters"] = {"classes": orjson.dumps(result.classes).decode()}
        outputs.append(out)
    payload: dict[str, Any] = {"model_name": runtime.name, "model_version": runtime.version}
    if req.request_id is not None:
        payload["id"] = req.request_id
    payload["outputs"] = outputs
    return payload


def metadata(runtime: ModelRuntime) -> dict:
    """Model metadata: one input tensor per signature column, the outputs with their datatypes."""
    spec = runtime.spec
    if spec is not None:
        inputs = [{"name": s.name, "datatype": METADATA_DATATYPE.get(s.type, "BYTES"), "shape": [-1]} for s in spec.specs]
    else:
        inputs = _tensor_inputs(runtime.loaded.signature)
    outputs = [{"name": PREDICTIONS, "datatype": _label_datatype(runtime), "shape": [-1]}]
    if has_proba(runtime):
        outputs.append({"name": PROBABILITIES, "datatype": "FP64", "shape": [-1, len(runtime.classes)],
                        "parameters": {"classes": orjson.dumps(runtime.classes).decode()}})
    flavor = "sklearn" if runtime.loaded.sklearn_model is not None else "pyfunc"
    doc: dict[str, Any] = {"name": runtime.name, "versions": [runtime.version], "platform": f"mlflow_{flavor}",
                           "inputs": inputs, "outputs": outputs}
    if spec is not None and one_type(spec):
        doc["parameters"] = {"matrix_input": orjson.dumps({
            "name": MATRIX_INPUT, "datatype": METADATA_DATATYPE.get(spec.specs[0].type, "BYTES"),
            "shape": [-1, len(spec.columns)]}).decode()}
    return doc


def _tensor_inputs(signature: Any) -> list[dict]:
    schema = getattr(signature, "inputs", None)
    if schema is None:
        return []
    out = []
    for i, s in enumerate(schema.inputs):
        name = getattr(s, "name", None) or (MATRIX_INPUT if i == 0 else f"input-{i}")
        if hasattr(s, "shape"):  # a TensorSpec
            out.append({"name": name, "datatype": datatype_of(np.dtype(s.type)), "shape": list(s.shape)})
        else:
            out.append({"name": name, "datatype": METADATA_DATATYPE.get(getattr(s.type, "name", ""), "BYTES"),
                        "shape": [-1]})
    return out


def _label_datatype(runtime: ModelRuntime) -> str:
    """The datatype of the predictions, from the signature's outputs (else the classes)."""
    outputs = getattr(runtime.loaded.signature, "outputs", None)
    if outputs is not None and outputs.inputs:
        first = outputs.inputs[0]
        if hasattr(first, "shape"):
            try:
                return datatype_of(np.dtype(first.type))
            except TypeError:
                return "BYTES"
        return METADATA_DATATYPE.get(getattr(first.type, "name", ""), "BYTES")
    if runtime.classes:
        return datatype_of(np.asarray(runtime.classes).dtype)
    return "FP64"
