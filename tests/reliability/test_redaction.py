"""Every place that shows or stores a tracking or database URI hides its password, whatever
characters the password holds (``#``, ``@``, ``/`` and ``:`` unencoded included).

Serving's settings, the SQL restore's refusal and the backup's archive record each used a
redaction of their own before, and the first two showed part of such a password.
"""

from __future__ import annotations

import re

import pytest

from mlops.recovery import backup, source, sql_rows
from serving.settings import Settings

PASSWORD = "Xq7#Zk9@Wm4/Pt8:Rv2"
PIECES = [p for p in re.split(r"[@#/:]", PASSWORD)]  # each distinctive


def leaked(text: str) -> list[str]:
    return [p for p in PIECES if p in text]


def test_serving_settings_hide_the_tracking_password():
    uri = f"postgresql://mlflow:{PASSWORD}@db.internal:5432/mlflow"
    shown = repr(Settings.from_env({"MLFLOW_TRACKING_URI": uri}))
    assert "mlflow:***@db.internal:5432/mlflow" in shown and not leaked(shown), shown


def test_the_sql_restore_refusal_hides_the_database_password():
    uri = f"postgresql://mlflow:{PASSWORD}@127.0.0.1:1/mlflow"
    with pytest.raises(sql_rows.DatabaseTargetError) as err:
        sql_rows.open_engine(uri)
    assert "***" in str(err.value) and not leaked(str(err.value)), str(err.value)
    assert "URL-encode" in str(err.value) and "\n" not in str(err.value)


def test_an_encoded_password_reaches_the_driver_and_is_still_hidden():
    from urllib.parse import quote

    uri = f"postgresql://mlflow:{quote(PASSWORD, safe='')}@127.0.0.1:1/mlflow"
    with pytest.raises(sql_rows.DatabaseTargetError) as err:
        sql_rows.open_engine(uri)
    message = str(err.value)
    assert "cannot open the database" in message and "127.0.0.1" in message, message
    assert not leaked(message) and quote(PASSWORD, safe="") not in message, message


def test_the_backup_version_counter_error_hides_the_database_password():
    uri = f"postgresql://mlflow:{PASSWORD}@127.0.0.1:1/mlflow"
    with pytest.raises(backup.BackupError) as err:
        source.db_max_versions(uri)
    assert "***" in str(err.value) and not leaked(str(err.value)), str(err.value)
