"""docs/operations.md is executed: every `bash` block runs, in order, against a real local stack.

Blocks share one shell environment (exports carry over). A block must exit 0 and print the text of
each `<!-- expect: … -->` line just above it. `compose` blocks cannot run here (no Docker engine):
they must name only services, profiles and sub-commands that docker-compose.yml / Compose have.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.helpers import BIN, ROOT, clean_env

DOC = ROOT / "docs" / "operations.md"
FENCE = re.compile(r"^```(\w+)\s*$")
EXPECT = re.compile(r"^<!-- expect: (.+?) -->$")


@dataclass
class Block:
    lang: str
    line: int
    code: str
    expects: list[str] = field(default_factory=list)


def parse(text: str) -> list[Block]:
    """Fenced blocks with the expectations written just above them."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j, expects = i - 1, []
        while j >= 0 and (EXPECT.match(lines[j]) or not lines[j].strip()):
            if EXPECT.match(lines[j]):
                expects.insert(0, EXPECT.match(lines[j]).group(1))
            j -= 1
        end = lines.index("```", i + 1)
        blocks.append(Block(m.group(1), i + 1, "\n".join(lines[i + 1:end]), expects))
        i = end + 1
    return blocks


BLOCKS = parse(DOC.read_text())
COMPOSE_SUBCOMMANDS = {"up", "down", "ps", "logs", "restart", "exec", "run", "build", "pull", "stop", "start", "config"}
VALUE_OPTIONS = {"--profile", "--since", "--tail", "--scale", "--entrypoint", "-f", "--file", "-e", "--env", "-u", "--user"}


def test_guide_covers_every_operation_of_the_old_guide():
    text = DOC.read_text().lower()
    for topic in ("health", "logs", "resource usage", "restart", "retrain", "backup", "restore", "high memory",
                  "slow responses", "maintenance", "security checklist", "escalation", "morning check",
                  "evening check", "disaster-recovery drill", "promote", "roll back", "history", "/metrics",
                  "scaling out", "rotating credentials", "cache"):
        assert topic in text, topic
    assert sum(b.lang == "bash" for b in BLOCKS) >= 15
    assert all(b.lang in ("bash", "compose") for b in BLOCKS)


def test_compose_blocks_name_existing_services_and_profiles():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = set(compose["services"])
    profiles = {p for s in compose["services"].values() for p in s.get("profiles", [])}
    checked = 0
    for block in (b for b in BLOCKS if b.lang == "compose"):
        for line in block.code.splitlines():
            words = line.split()
            if words[:2] == ["docker", "stats"] or words[:1] == ["curl"]:
                continue
            assert words[:2] == ["docker", "compose"], f"line {block.line}: {line}"
            rest, sub = words[2:], None
            while rest:
                w = rest.pop(0)
                if w == "--profile":
                    assert rest.pop(0) in profiles, f"line {block.line}: unknown profile in {line}"
                elif w.startswith("-"):
                    if w in VALUE_OPTIONS:
                        value = rest.pop(0)
                        if w == "--scale":
                            assert value.split("=")[0] in services, f"line {block.line}: {line}"
                elif sub is None:
                    sub = w
                    assert sub in COMPOSE_SUBCOMMANDS, f"line {block.line}: unknown sub-command {sub}"
                    if sub in ("run", "exec", "logs", "restart") and not any(x in services for x in rest):
                        raise AssertionError(f"line {block.line}: no service named in {line}")
                else:
                    if sub in ("run", "exec"):
                        assert w in services, f"line {block.line}: unknown service {w}"
                        break  # the rest is the command run in the container
                    if w in (">", "|", "&&") or w.startswith(">"):
                        break  # redirection or a pipe into a local command
                    assert w in services, f"line {block.line}: unknown service {w}"
            checked += 1
    assert checked >= 20


@pytest.mark.slow
@pytest.mark.stack
@pytest.mark.timeout(1500)
def test_every_bash_block_runs_against_a_local_stack():
    # PostgreSQL runs as the `postgres` user and must enter the stack folder (pytest's tmp is 0700).
    tmp_path = Path(tempfile.mkdtemp(prefix="mlops-opsdoc-"))
    tmp_path.chmod(0o711)
    stack_dir = tmp_path / "stack"
    env_file = tmp_path / "env.sh"
    env = clean_env(
        MLOPS_STACK_DIR=stack_dir, BACKUP_DIR=tmp_path / "backups", KEEP="3",
        MLOPS_STACK_PG_PORT="0", MLOPS_STACK_S3_PORT="0", MLOPS_STACK_MLFLOW_PORT="0", MLOPS_STACK_SERVING_PORT="0",
        POLL_INTERVAL_S="0.5",
    )
    env = {k: v for k, v in env.items() if k not in ("ADMIN_TOKEN", "API_TOKEN")}
    env_file.write_text("")
    ran = []
    try:
        for block in (b for b in BLOCKS if b.lang == "bash"):
            script = f"set -eo pipefail\nsource {env_file}\n{block.code}\nexport -p > {env_file}\n"
            proc = subprocess.run(["bash", "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
            out = proc.stdout + proc.stderr
            where = f"docs/operations.md line {block.line}"
            assert proc.returncode == 0, f"{where} exited {proc.returncode}:\n{block.code}\n--- output\n{out[-4000:]}"
            for text in block.expects:
                assert text in out, f"{where}: expected {text!r} in the output:\n{out[-4000:]}"
            ran.append(block.line)
        assert len(ran) == sum(b.lang == "bash" for b in BLOCKS)
    finally:
        subprocess.run([str(BIN / "mlops"), "stack", "down", "--dir", str(stack_dir), "--purge"],
                       env=env, cwd=ROOT, capture_output=True, timeout=180)
        shutil.rmtree(tmp_path, ignore_errors=True)
