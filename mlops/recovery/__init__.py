"""Backup and restore of the registry.

- :mod:`~mlops.recovery.layout`: where each record lives in an archive and what it holds;
- :mod:`~mlops.recovery.backup`: the registry to an archive;
- :mod:`~mlops.recovery.archive`: the ``.tar.gz`` with its manifest, written and verified;
- :mod:`~mlops.recovery.safety`: what an archive may hold (limits, ids, names MLflow accepts);
- :mod:`~mlops.recovery.plan`: options, result, target state and dependencies of a restore;
- :mod:`~mlops.recovery.restore`: the entry point, through
  :mod:`~mlops.recovery.restore_api` (MLflow's API, resumable) or
  :mod:`~mlops.recovery.restore_sql` (one database transaction, rows from
  :mod:`~mlops.recovery.sql_rows`);
- :mod:`~mlops.recovery.artifacts`: direct access to a server's artifact store;
- :mod:`~mlops.recovery.compare`: field-by-field snapshots that prove a restore lost nothing.
"""
