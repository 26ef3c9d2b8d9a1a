"""A candidate model for the rollout tests (an MLflow "model from code"): Production's own
scikit-learn pipeline, optionally slower (``sleep_ms``) or raising on real inputs whose
``raise_column`` exceeds ``raise_above`` (both from the logged ``model_config``)."""

from __future__ import annotations

import time

import mlflow
from mlflow.pyfunc import PythonModel


class Candidate(PythonModel):
    def load_context(self, context):
        import mlflow.sklearn

        self.model = mlflow.sklearn.load_model(context.artifacts["base"])
        cfg = context.model_config or {}
        self.sleep_s = float(cfg.get("sleep_ms", 0)) / 1000.0
        self.column = cfg.get("raise_column")
        self.limit = cfg.get("raise_above")
        self.flip = bool(cfg.get("flip", False))

    def predict(self, context, model_input, params=None):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.column is not None and (model_input[self.column] > self.limit).any():
            raise RuntimeError(f"candidate cannot score {self.column} above {self.limit}")
        out = self.model.predict(model_input)
        return 1 - out if self.flip else out


mlflow.models.set_model(Candidate())
