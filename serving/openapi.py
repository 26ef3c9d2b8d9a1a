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
                "requestBody": request_body,
                "responses": {"200": {"description": "Predictions", "headers": version_header,
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Predictions"}}}},
                              **prediction_errors},
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
    return doc
