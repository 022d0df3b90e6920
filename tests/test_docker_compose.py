"""docker-compose.yml cannot start here (no Docker engine): parse it and check what it promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def load(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def test_timescaledb_service_is_pinned_community_pg17_with_volume_and_healthcheck() -> None:
    compose = load("docker-compose.yml")
    db = compose["services"]["timescaledb"]
    image = db["image"]
    assert re.fullmatch(r"timescale/timescaledb:\d+\.\d+\.\d+-pg17", image), image  # pinned, community, PG 17
    assert "127.0.0.1:${POSTGRES_PORT:-5432}:5432" in db["ports"]
    volume, mount = db["volumes"][0].split(":")
    assert mount == "/var/lib/postgresql/data" and volume in compose["volumes"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert "shared_preload_libraries=timescaledb" in db["command"]
    # Credentials come from .env, never from the file itself.
    assert db["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")


def test_grafana_is_provisioned_with_the_datasource_and_dashboards() -> None:
    compose = load("docker-compose.yml")
    grafana = compose["services"]["grafana"]
    assert grafana["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    assert mounts["/var/lib/grafana/dashboards"] == "./deploy/grafana/dashboards"
    assert "grafana-data" in compose["volumes"]
    ds = load("deploy/grafana/provisioning/datasources/timescaledb.yml")["datasources"][0]
    assert ds["url"] == "timescaledb:5432" and ds["jsonData"]["timescaledb"] is True
    assert ds["secureJsonData"]["password"] == "${POSTGRES_PASSWORD}"
    provider = load("deploy/grafana/provisioning/dashboards/microstructure.yml")["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/ingest.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {ds["uid"]}


def test_env_example_defines_every_variable_compose_requires() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert required and required <= set(example)
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_background_workers_are_sized_for_the_jobs_the_schema_creates() -> None:
    from microstructure.db.tables import TIME_TABLES
    from microstructure.features_sql.stages import STAGES

    command = load("docker-compose.yml")["services"]["timescaledb"]["command"]
    settings = dict(a.split("=", 1) for a in command if "=" in a)
    workers = int(settings["timescaledb.max_background_workers"])
    processes = int(settings["max_worker_processes"])
    refresh_policies = len(STAGES)  # one per continuous aggregate, all due every minute
    assert workers >= refresh_policies + 1, (
        "every refresh policy can run in the same minute, plus the scheduler"
    )
    assert processes >= workers + 8 + 2, "job workers, 8 parallel-query workers, scheduler and launcher"
    # the jobs the comment counts
    comment = (ROOT / "docker-compose.yml").read_text()
    assert re.search(r"raw hypertable \((\d+)\)", comment).group(1) == str(len(TIME_TABLES))  # type: ignore[union-attr]
    assert re.search(r"of the (\d+) feature stages", comment).group(1) == str(len(STAGES))  # type: ignore[union-attr]
