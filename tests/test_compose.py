"""docker-compose.yml and the files it mounts stay consistent with the local stack (no Docker here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from qkdops.config import load_config
from qkdops.stack import COMPOSE_ALERTMANAGER_CONFIG, COMPOSE_PROMETHEUS_CONFIG, COMPOSE_SECRETS, render_compose_prometheus_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_committed_prometheus_config_is_the_rendered_one():
    assert COMPOSE_PROMETHEUS_CONFIG.read_text() == render_compose_prometheus_config()


def test_every_bind_mounted_file_exists_and_every_image_is_pinned():
    for name, service in COMPOSE["services"].items():
        image = service.get("image", "")
        assert "build" in service or (":" in image and not image.endswith(":latest")), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in COMPOSE["volumes"], f"{name} uses undeclared volume {source}"


def test_every_scrape_target_is_a_service_port_and_published_ports_are_unique():
    prom = yaml.safe_load(COMPOSE_PROMETHEUS_CONFIG.read_text())
    config = load_config(ROOT / "links.yaml")
    expected = {f"qkdops:{config.runtime.device_exporter_port}", f"qkdops:{config.runtime.postprocessing_exporter_port}"}
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == expected
    for target in targets | {t for am in prom["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]}:
        assert target.split(":")[0] in COMPOSE["services"]
    published = [p.split(":")[-2] for s in COMPOSE["services"].values() for p in s.get("ports", [])]
    assert len(published) == len(set(published))
    assert all(p.startswith("127.0.0.1:") for s in COMPOSE["services"].values() for p in s.get("ports", []))


def test_the_runtime_image_runs_the_same_fleet_without_its_own_prometheus():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert '"--no-prometheus"' in dockerfile and '"/app/links.yaml"' in dockerfile
    assert "COPY links.yaml" in dockerfile and "COPY runbooks" in dockerfile  # served at /runbooks/<AlertName>


def test_alertmanager_reaches_the_pager_sink_and_finds_its_key_files_in_the_mounted_directory():
    am = yaml.safe_load(COMPOSE_ALERTMANAGER_CONFIG.read_text())
    config = load_config(ROOT / "links.yaml")
    urls = {c["url"] for r in am["receivers"] for c in r.get("webhook_configs", [])}
    assert {u.split("/")[2] for u in urls} == {f"qkdops:{config.runtime.pager_sink_port}"}
    assert f"127.0.0.1:{config.runtime.pager_sink_port}:{config.runtime.pager_sink_port}" in COMPOSE["services"]["qkdops"]["ports"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in COMPOSE["services"]["alertmanager"]["volumes"] if v.endswith(":ro"))
    secrets_dir = mounts["./alertmanager/secrets"]
    assert all(str(Path(path).parent) == secrets_dir for path in vars(COMPOSE_SECRETS).values())
    tracked = {p.name for p in (ROOT / "alertmanager" / "secrets").iterdir()} & {".gitignore", "README.md"}
    assert tracked == {".gitignore", "README.md"}  # the mount source exists in a fresh clone, keys stay ignored
    assert "*" in (ROOT / "alertmanager" / "secrets" / ".gitignore").read_text().split()
