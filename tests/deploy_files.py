"""The files under deploy/, read as the tests need them: the Dockerfiles' instructions, the
PromQL of the alert rules and of the dashboard, and the metric names those queries use."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
REPO = DEPLOY.parent
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "anomaly.json"
# Grafana's interval variables, as a query sent to Prometheus by hand spells them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/NAME, continuation lines joined, comments left out."""
    out, current = [], ""
    for line in (DEPLOY / name).read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        continued = stripped.endswith("\\")
        current = f"{current} {stripped.removesuffix(chr(92)).strip()}".strip()
        if not continued:
            keyword, _, args = current.partition(" ")
            out.append((keyword.upper(), args.strip()))
            current = ""
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def build_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Default values of the ARGs."""
    pairs = (args.split("=", 1) for keyword, args in instructions if keyword == "ARG")
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


def healthcheck_command(name: str) -> list[str]:
    """The exec-form command of the image's HEALTHCHECK."""
    (args,) = [args for keyword, args in dockerfile(name) if keyword == "HEALTHCHECK"]
    return json.loads(args[args.index("CMD") + 3 :])


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> dict[str, list[str]]:
    """PromQL of each dashboard panel, by title, with Grafana's variables given values."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {
        panel["title"]: [_fill(target.get("expr", "")) for target in panel.get("targets", [])]
        for panel in panels
    }


def _fill(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """The service's metric names (anomaly_...) that a PromQL expression reads."""
    return set(re.findall(r"\banomaly_[a-z0-9_]+\b", expr))


def all_queries() -> list[str]:
    return [rule["expr"] for rule in alert_rules()] + [
        expr for exprs in dashboard_queries().values() for expr in exprs
    ]
