#!/usr/bin/env python3
"""Dependency audit (`make audit`): which installed packages have known vulnerabilities.

Two sources, both reported:
1. pip-audit against PyPI's vulnerability data (needs PyPI's JSON API; says so when unreachable);
2. security/advisories.json, checked offline against every package installed in this environment.
Exit 1 if any installed package is below a fixed version; 0 otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from importlib.metadata import distributions
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def installed() -> dict[str, str]:
    """Installed distributions of this interpreter, by normalised name."""
    return {d.metadata["Name"].lower().replace("_", "-"): d.version for d in distributions()}


def offline_check(pkgs: dict[str, str]) -> list[str]:
    """Rows for installed packages below an advisory's fixed version."""
    data = json.loads((ROOT / "security" / "advisories.json").read_text())
    findings = []
    for adv in data["advisories"]:
        have = pkgs.get(adv["package"])
        if have is None:
            continue
        if adv["fixed"] is None:
            print(f"  note  {adv['package']}=={have}: {adv['id']} has no fix ({adv['summary']})")
        elif Version(have) < Version(adv["fixed"]):
            findings.append(f"  VULNERABLE  {adv['package']}=={have} < {adv['fixed']}: {adv['id']} {adv['summary']}")
    return findings


def pip_audit(pkgs: dict[str, str]) -> tuple[str, list[str]]:
    """Run pip-audit on the installed pins; returns (what it could reach, findings)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        for name, ver in sorted(pkgs.items()):
            if name not in ("ml-devops-app",):
                f.write(f"{name}=={ver}\n")
        req = f.name
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip_audit", "-r", req, "--no-deps", "--disable-pip", "-s", "pypi",
             "--format", "json", "--progress-spinner", "off", "--timeout", "20"],
            capture_output=True, text=True, timeout=600,
        )
    except FileNotFoundError:
        return "pip-audit not installed", []
    except subprocess.TimeoutExpired:
        return "pip-audit timed out", []
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        return f"pip-audit failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}", []
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    if deps and len(skipped) == len(deps):
        return (f"PyPI's vulnerability data was NOT reachable: all {len(deps)} packages skipped "
                f"({skipped[0]['skip_reason']})"), []
    findings = [
        f"  VULNERABLE  {d['name']}=={d['version']}: {v['id']} (fixed in {', '.join(v.get('fix_versions') or ['?'])})"
        for d in deps for v in d.get("vulns", [])
    ]
    return f"PyPI vulnerability data reached: {len(deps) - len(skipped)} packages audited", findings


def main() -> int:
    pkgs = installed()
    print(f"auditing {len(pkgs)} installed packages ({sys.prefix})")
    print("\n[1] pip-audit (PyPI vulnerability data)")
    reached, found_online = pip_audit(pkgs)
    print(f"  {reached}")
    print(*found_online, sep="\n") if found_online else None
    print("\n[2] security/advisories.json (offline)")
    found_offline = offline_check(pkgs)
    print(*found_offline, sep="\n") if found_offline else print("  no installed package is below a fixed version")
    bad = len(found_online) + len(found_offline)
    print(f"\n{bad} known-vulnerable package version(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
