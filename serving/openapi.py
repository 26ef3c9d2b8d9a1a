"""The OpenAPI 3 document of the service (``GET /openapi.json``).

Column schemas come from the signature of the version being served, so the document tells a
client exactly which columns and types the current model accepts.
"""

from __future__ import annotations

from typing import Any

_JSON_TYPES = {
    "double": {"type": "number"},
    "float": {"type": "number"},
    "long": {"type": "integer"},
    "integer": {"type": "integer"},
    "boolean": {"type": "boolean"},
    "string": {"type": "string"},
    "binary": {"type": "string", "description": "base64"},
    "datetime": {"type": "string", "format": "date-time"},
}


def _value_schema(spec) -> dict:
    base = dict(_JSON_TYPES.get(spec.type, {}))
    if not spec.required:
        base["nullable"] = True
    return base


def _row_schemas(runtime) -> tuple[dict, dict, list[str]]:
    """(record schema, value schema, column names) for the served signature (generic if none)."""
    spec = getattr(runtime, "spec", None) if runtime is not None else None
    if spec is None:
        return {"type": "object", "additionalProperties": True}, {}, []
    props = {s.name: _value_schema(s) for s in spec.specs}
    record = {
        "type": "object",
        "properties": props,
        "required": [s.name for s in spec.specs if s.required],
        "additionalProperties": False,
    }
    value_types = {tuple(sorted(_value_schema(s).items())) for s in spec.specs}
    value = dict(value_types.pop()) if len(value_types) == 1 else {}
    return record, value, list(spec.columns)


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def build(runtime, settings) -> dict[str, Any]:
    """The OpenAPI document for the current model (``runtime`` may be None before a load)."""
    record, value, columns = _row_schemas(runtime)
    n = len(columns)
    row_array = {"type": "array", "items": value}
    if n:
        row_array.update(minItems=n, maxItems=n)
    col_list = {"type": "array", "items": value}
    version = getattr(runtime, "version", None)
    split = {
        "type": "object",
        "required": ["columns", "data"],
        "additionalProperties": False,
        "properties": {
            "columns": {"type": "array", "items": {"type": "string"}, **({"example": columns} if columns else {})},
            "data": {"type": "array", "minItems": 1, "items": row_array},
            "index": {"type": "array", "items": {}},
        },
    }
    records = {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Record"}}
    columnar = {"type": "object", "properties": dict.fromkeys(columns, col_list), "required": columns} if n else {"type": "object"}
    params = {"type": "object", "description": "MLflow inference params (used when the signature declares them)"}

    def one(key: str, schema: dict) -> dict:
        return {"type": "object", "required": [key], "additionalProperties": False,
                "properties": {key: schema, "params": params}}

    request_body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ScoringRequest"}},
            "text/csv": {"schema": {"type": "string"}, **({"example": ",".join(columns) + "\n"} if columns else {})},
        },
    }
    prediction_errors = {
        "400": _error("Malformed JSON/CSV, wrong format key, missing/extra/mistyped columns, missing values, empty input"),
        "401": _error("API_TOKEN is set and the bearer token is missing or wrong"),
        "413": _error("Body larger than MAX_BODY_BYTES"),
        "415": _error("Content-Type is not application/json or text/csv"),
        "503": _error("No model loaded yet"),
    }
    invocations_body = {
        "required": True,
        "content": {**request_body["content"],
                    "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}}},
    }
    invocations_errors = {
        **prediction_errors,
        "400": _error("Refused as `mlflow models serve` refuses it, with its error_code (BAD_REQUEST or "
                      "INVALID_PARAMETER_VALUE) and a message naming the field; with STRICT_INPUT=true, also "
                      "unknown columns and top-level keys (this service's own codes)"),
        "415": _error("Content-Type is not application/json, text/csv or application/vnd.apache.parquet, "
                      "or a charset other than UTF-8"),
    }
    version_header = {"X-Model-Version": {"schema": {"type": "string"}, "description": "Model version that answered"}}
    security_predict = [{"bearerAuth": []}] if settings.api_token else []
    unauthorized = {"401": _error("API_TOKEN is set and the bearer token is missing or wrong")} if settings.api_token else {}
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "ML DevOps App prediction service",
            "version": "1.0.0",
            "description": (
                f"Serves registered model `{settings.model_name}` ({settings.selector_label}) and follows the "
                f"registry without restarts. Currently serving version {version or 'none'}."
            ),
        },
        "paths": {
            "/health": {"get": {
                "summary": "Liveness and model/registry state (200 while the process answers)",
                "responses": {"200": {"description": "State", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}},
            }},
            "/ready": {"get": {
                "summary": "Readiness: 200 once a model is loaded and passed its smoke prediction",
                "responses": {"200": {"description": "Ready", "content": {"application/json": {"schema": {"type": "object"}}}},
                              "503": _error("No model loaded yet")},
            }},
            "/api/model/info": {"get": {
                "summary": "The served version: name, version, stage, run id, signature, holdout metrics, times",
                "security": security_predict,
                "responses": {"200": {"description": "Model info", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ModelInfo"}}}},
                              **unauthorized,
                              "503": _error("No model loaded yet")},
            }},
            "/api/predict": {"post": {
                "summary": "Predict, with model name/version and class probabilities",
                "security": security_predict,
                "requestBody": request_body,
                "responses": {"200": {"description": "Predictions", "headers": version_header,
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}}},
                              **prediction_errors},
            }},
            "/invocations": {"post": {
                "summary": "MLflow scoring protocol (same answers as `mlflow models serve`)",
                "security": security_predict,
                "requestBody": invocations_body,
                "responses": {"200": {"description": "Predictions", "headers": version_header,
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Predictions"}}}},
                              **invocations_errors},
            }},
            "/ping": {"get": {
                "summary": "Health check of `mlflow models serve`: 200 with its body (a newline) once a model is loaded",
                "responses": {"200": {"description": "Ready", "content": {"application/json": {"schema": {"type": "string"}}}},
                              "503": _error("No model loaded yet")},
            }},
            "/version": {"get": {
                "summary": "The MLflow version, as `mlflow models serve` answers it (MLflow's client reads it)",
                "responses": {"200": {"description": "MLflow version (text)",
                                      "content": {"application/json": {"schema": {"type": "string"}}}}},
            }},
            "/api/model/reload": {"post": {
                "summary": "Check the registry now and swap if the selection changed (admin)",
                "security": [{"bearerAuth": []}],
                "responses": {"200": {"description": "Serving the registry's selection", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReloadResult"}}}},
                              "401": _error("Missing or wrong ADMIN_TOKEN"),
                              "403": _error("ADMIN_TOKEN is not configured: reload is disabled"),
                              "503": _error("Registry unreachable or the selected version was refused")},
            }},
            "/metrics": {"get": {
                "summary": "Prometheus exposition (summed over all workers)",
                "security": security_predict,
                "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                              **unauthorized},
            }},
            "/openapi.json": {"get": {
                "summary": "This document",
                "security": security_predict,
                "responses": {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {"schema": {"type": "object"}}}},
                              **unauthorized},
            }},
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Record": record,
                "ScoringRequest": {"oneOf": [
                    one("dataframe_split", split),
                    one("dataframe_records", records),
                    one("instances", {"oneOf": [records, {"type": "array", "minItems": 1, "items": row_array}]}),
                    one("inputs", {"oneOf": [columnar, records, {"type": "array", "minItems": 1, "items": row_array}]}),
                ]},
                "Predictions": {"type": "object", "required": ["predictions"],
                                "properties": {"predictions": {"type": "array", "items": {}}}},
                "PredictResponse": {"type": "object", "required": ["predictions", "model_name", "model_version"],
                                    "properties": {
                                        "predictions": {"type": "array", "items": {}},
                                        "model_name": {"type": "string"},
                                        "model_version": {"type": "string"},
                                        "classes": {"type": "array", "items": {}, "nullable": True},
                                        "probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}, "nullable": True},
                                    }},
                "Error": {"type": "object", "required": ["error_code", "message"],
                          "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}}},
                "Health": {"type": "object", "required": ["status"], "properties": {
                    "status": {"type": "string", "enum": ["ok", "degraded", "starting", "unavailable"]},
                    "reason": {"type": "string", "nullable": True},
                    "model_name": {"type": "string"}, "model_version": {"type": "string", "nullable": True},
                    "model_stage": {"type": "string", "nullable": True}, "loaded_at": {"type": "string", "nullable": True},
                    "started_from_cache": {"type": "boolean"}, "registry": {"type": "object"},
                    "last_swap_error": {"type": "object", "nullable": True},
                }},
                "ModelInfo": {"type": "object", "required": ["model_name", "model_version"], "properties": {
                    "model_name": {"type": "string"}, "model_version": {"type": "string"},
                    "stage": {"type": "string", "nullable": True}, "aliases": {"type": "array", "items": {"type": "string"}},
                    "run_id": {"type": "string", "nullable": True}, "signature": {"type": "object", "nullable": True},
                    "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
                    "loaded_at": {"type": "string"}, "last_registry_check": {"type": "string", "nullable": True},
                }},
                "ReloadResult": {"type": "object", "properties": {
                    "model_name": {"type": "string"}, "previous_version": {"type": "string", "nullable": True},
                    "model_version": {"type": "string", "nullable": True}, "registry_version": {"type": "string", "nullable": True},
                    "swapped": {"type": "boolean"}, "error": {"type": "string", "nullable": True},
                }},
            },
        },
    }
    v2_paths, v2_schemas = _v2(runtime, settings, security_predict, unauthorized)
    doc["paths"].update(v2_paths)
    doc["components"]["schemas"].update(v2_schemas)
    return doc


# ------------------------------------------------------------------------------------------------
# Open Inference Protocol (KServe V2, REST): serving/v2.py
# ------------------------------------------------------------------------------------------------

def _v2_error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V2Error"}}}}


def _v2_json(description: str, schema: str, headers: dict | None = None) -> dict:
    out = {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}
    if headers:
        out["headers"] = headers
    return out


def _v2(runtime, settings, security: list, unauthorized: dict) -> tuple[dict, dict]:
    """The V2 paths and their schemas: model name (and version) from what is served."""
    from serving import codecs_v2, v2_tensors

    spec = getattr(runtime, "spec", None) if runtime is not None else None
    version = getattr(runtime, "version", None)
    name_param = {"name": "name", "in": "path", "required": True, "description": "The served model's name",
                  "schema": {"type": "string", "enum": [settings.model_name]}}
    version_param = {"name": "version", "in": "path", "required": True,
                     "description": "The served version (another one is a 404 naming the served one)",
                     "schema": {"type": "string", **({"enum": [version]} if version else {})}}
    unauth = {"401": _v2_error("API_TOKEN is set and the bearer token is missing or wrong")} if unauthorized else {}
    not_ready = {"503": _v2_error("No model loaded yet")}
    not_found = {"404": _v2_error("Unknown model name, or a version that is not the served one")}
    infer_errors = {
        "400": _v2_error("Malformed request: bad JSON, not an object, unknown or missing tensors, unknown datatype, "
                         "shape and data length disagree, element types that do not fit the datatype or the signature"),
        **unauth, **not_found,
        "413": _v2_error("Body larger than MAX_BODY_BYTES"),
        "415": _v2_error("Content-Type is not application/json"),
        **not_ready,
    }
    version_header = {"X-Model-Version": {"schema": {"type": "string"}, "description": "Model version that answered"}}
    paths: dict[str, Any] = {
        "/v2": {"get": {
            "summary": "V2 server metadata: name, version, extensions",
            "responses": {"200": _v2_json("Server metadata", "V2ServerMetadata")},
        }},
        "/v2/health/live": {"get": {
            "summary": "V2 server liveness (200 while the process answers)",
            "responses": {"200": _v2_json("Live", "V2Live")},
        }},
        "/v2/health/ready": {"get": {
            "summary": "V2 server readiness: 200 once the model is loaded",
            "responses": {"200": _v2_json("Ready", "V2Ready"), "503": _v2_json("No model loaded yet", "V2Ready")},
        }},
    }
    for prefix, params in (("/v2/models/{name}", [name_param]),
                           ("/v2/models/{name}/versions/{version}", [name_param, version_param])):
        paths[prefix] = {"get": {
            "parameters": params,
            "summary": "V2 model metadata: one input tensor per signature column, the outputs, datatypes and shapes",
            "security": security,
            "responses": {"200": _v2_json("Model metadata", "V2ModelMetadata"), **unauth, **not_found, **not_ready},
        }}
        paths[prefix + "/ready"] = {"get": {
            "parameters": params,
            "summary": "V2 model readiness",
            "responses": {"200": _v2_json("Ready", "V2ModelReady"), **not_found,
                          "503": _v2_json("No model loaded yet", "V2ModelReady")},
        }}
        paths[prefix + "/infer"] = {"post": {
            "parameters": params,
            "summary": ("V2 inference: a tensor per column (or one 2-D tensor); outputs predictions and probabilities; "
                        "errors answer `{\"error\": \"...\"}` (every V2 route)"),
            "security": security,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/V2InferenceRequest"}}}},
            "responses": {"200": _v2_json("Inference response", "V2InferenceResponse", version_header), **infer_errors},
        }}
    names = [*spec.columns, codecs_v2.MATRIX_INPUT] if spec is not None else []
    example = _v2_example(runtime)
    parameters = {"type": "object", "description": "Key/value pairs; MLflow params where the signature declares them",
                  "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}}
    tensor_data = {"type": "array", "description": "Elements in row-major order, flat or nested as the shape; null: a "
                                                   "missing value", "items": {}}
    shape = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
    metadata_tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
        "parameters": {"type": "object"}}}
    schemas = {
        "V2Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "V2ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "V2Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
        "V2Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"},
                                                                              "error": {"type": "string"}}},
        "V2ModelReady": {"type": "object", "required": ["name", "ready"], "properties": {
            "name": {"type": "string"}, "ready": {"type": "boolean"}, "error": {"type": "string"}}},
        "V2ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
            "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"}, "inputs": {"type": "array", "items": metadata_tensor},
            "outputs": {"type": "array", "items": metadata_tensor}, "parameters": {"type": "object"}}},
        "V2InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"},
            "parameters": parameters,
            "inputs": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
                    "name": {"type": "string", **({"enum": names} if names else {})},
                    "shape": shape,
                    "datatype": {"type": "string", "enum": list(v2_tensors.DATATYPES)},
                    "parameters": parameters,
                    "data": tensor_data}}},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string", "enum": [codecs_v2.PREDICTIONS, codecs_v2.PROBABILITIES]},
                "parameters": parameters}}},
        }, **({"example": example} if example else {})},
        "V2InferenceResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name", "shape", "datatype", "data"],
                                                   "properties": {"name": {"type": "string"}, "shape": shape,
                                                                  "datatype": {"type": "string"},
                                                                  "parameters": {"type": "object"},
                                                                  "data": tensor_data}}}}},
    }
    return paths, schemas


def _v2_example(runtime) -> dict | None:
    """A valid V2 request: the first row of the served model's input example, a tensor per column."""
    spec = getattr(runtime, "spec", None) if runtime is not None else None
    example = getattr(getattr(runtime, "loaded", None), "input_example", None)
    if spec is None or example is None or not hasattr(example, "columns"):
        return None
    from serving import codecs_v2

    try:
        row = example[list(spec.columns)].head(1).astype(object)
        row = row.where(row.notna(), None).to_numpy().tolist()[0]
    except (KeyError, ValueError, TypeError):
        return None
    return {"inputs": [{"name": s.name, "shape": [1], "datatype": codecs_v2.METADATA_DATATYPE.get(s.type, "BYTES"),
                        "data": [v.item() if hasattr(v, "item") else v]} for s, v in zip(spec.specs, row, strict=True)]}
