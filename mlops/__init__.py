"""ML DevOps App operator package: registry logic and the `mlops` CLI."""
