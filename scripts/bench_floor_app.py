"""The floor of this stack for the serving benchmark: Flask + gunicorn, JSON straight into numpy,
sklearn ``predict``, no validation, no logging, no metrics.

Run it as ``FLOOR_MODEL_PATH=<local MLflow model folder> gunicorn scripts.bench_floor_app:app``.
It answers ``POST /invocations`` with a ``dataframe_split`` body (columns in training order) and
``GET /ping``. Not part of the product: only ``scripts/bench_serving.py`` starts it.
"""

from __future__ import annotations

import os
import warnings

import mlflow.sklearn
import numpy as np
from flask import Flask, jsonify, request

warnings.simplefilter("ignore")  # sklearn warns on every call that numpy input has no feature names

model = mlflow.sklearn.load_model(os.environ["FLOOR_MODEL_PATH"])
app = Flask(__name__)


@app.get("/ping")
def ping():
    return "ok"


@app.post("/invocations")
def invocations():
    body = request.get_json(force=True)
    X = np.asarray(body["dataframe_split"]["data"], dtype=np.float64)
    return jsonify(predictions=model.predict(X).tolist())
