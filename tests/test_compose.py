"""docker-compose.yml and the files it mounts stay consistent with the local stack (no Docker here)."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path, PurePosixPath

import yaml

from qkdops import credentials
from qkdops.config import DEFAULT_CONFIG, load_config, parse_config
from control_api.server import TOKEN_FILE_ENV, TOKEN_FILE_NAME
from monitoring.alertmanager import COMPOSE_ALERTMANAGER_CONFIG, COMPOSE_SECRETS
from monitoring.config import load_monitoring_config
from monitoring.prometheus import (
    COMPOSE_PROMETHEUS_CONFIG,
    COMPOSE_WORKERS,
    COMPOSE_PROMETHEUS_CONFIGS,
    COMPOSE_SECRET_FILES,
    render_compose_prometheus_config,
)
from qkdops_cli.stack import CONTAINER_BIND, CONTAINER_CONFIG, container_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
IMAGE_SERVICES = ("api-token", "qkdops", "calibration")  # built from the Dockerfile
WORKER_SERVICES = tuple(f"qkdops-worker-{i}" for i in range(COMPOSE_WORKERS))   # the same image, as the qkdops service builds it


def test_no_service_exposes_an_http_lifecycle_api():
    """/-/quit and /-/reload would let anyone who reaches the port stop Prometheus; reload with SIGHUP instead."""
    for name, service in SERVICES.items():
        assert "--web.enable-lifecycle" not in service.get("command", []), name


def test_committed_prometheus_config_is_the_rendered_one():
    for replica, path in COMPOSE_PROMETHEUS_CONFIGS.items():
        assert path.read_text() == render_compose_prometheus_config(load_monitoring_config(), replica), replica


PROMETHEUS_PAIR = {"prometheus": "a", "prometheus-b": "b"}
ALERTMANAGER_CLUSTER = ("alertmanager", "alertmanager-b", "alertmanager-c")


def test_compose_runs_a_prometheus_pair_alerting_to_every_peer_of_an_alertmanager_cluster_of_three():
    """HA the standard way: the replicas differ only in the ``replica`` label, which they drop from alerts
    so the cluster sees one alert; the peers gossip with each other and keep their own state."""
    configs = {}
    for service, replica in PROMETHEUS_PAIR.items():
        mounts = _mounts(service)
        source, read_only = mounts["/etc/prometheus/prometheus.yml"]
        assert ROOT / source == COMPOSE_PROMETHEUS_CONFIGS[replica] and read_only, service
        assert mounts["/prometheus"][0] == f"{service}-data", service  # its own TSDB
        assert SERVICES[service]["command"] == SERVICES["prometheus"]["command"]
        configs[replica] = yaml.safe_load(COMPOSE_PROMETHEUS_CONFIGS[replica].read_text())
        assert configs[replica]["global"]["external_labels"] == {"stack": "qkdops", "replica": replica}
        assert configs[replica]["alerting"]["alert_relabel_configs"] == [{"action": "labeldrop", "regex": "replica"}]
        targets = [t for am in configs[replica]["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
        assert targets == [f"{peer}:9093" for peer in ALERTMANAGER_CLUSTER]
    a, b = configs["a"], configs["b"]
    assert a["scrape_configs"] == b["scrape_configs"] and a["rule_files"] == b["rule_files"]
    assert {**a, "global": None} == {**b, "global": None}   # nothing else differs
    for peer in ALERTMANAGER_CLUSTER:
        command = SERVICES[peer]["command"]
        assert "--cluster.listen-address=0.0.0.0:9094" in command, peer
        assert sorted(c.removeprefix("--cluster.peer=") for c in command if c.startswith("--cluster.peer=")) == \
            sorted(f"{other}:9094" for other in ALERTMANAGER_CLUSTER if other != peer), peer
        assert _mounts(peer)["/alertmanager"][0] == f"{peer}-data", peer
        assert _mounts(peer)["/etc/alertmanager/alertmanager.yml"] == _mounts("alertmanager")["/etc/alertmanager/alertmanager.yml"]
        assert SERVICES[peer]["secrets"] == SERVICES["alertmanager"]["secrets"], peer
    assert not any(p.split(":")[-2] == "9094" for s in SERVICES.values() for p in s.get("ports", []))  # gossip stays inside


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
    rt = config.runtime
    expected = {f"qkdops:{rt.postprocessing_exporter_port}", f"calibration:{rt.calibration_exporter_port}", f"kme-probe:{rt.kme_probe_port}",
                *(f"qkdops-worker-{i}:{port}" for i in range(COMPOSE_WORKERS) for port in (rt.device_exporter_port, rt.postprocessing_exporter_port))}
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == expected
    jobs = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in prom["scrape_configs"]}
    assert jobs[load_monitoring_config().jobs.calibration] == [f"calibration:{config.runtime.calibration_exporter_port}"]
    assert jobs[load_monitoring_config().jobs.kme_probe] == [f"kme-probe:{config.runtime.kme_probe_port}"]
    for target in targets | {t for am in prom["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]}:
        assert target.split(":")[0] in COMPOSE["services"]
    published = [p.split(":")[-2] for s in COMPOSE["services"].values() for p in s.get("ports", [])]
    assert len(published) == len(set(published))
    assert all(p.startswith("127.0.0.1:") for s in COMPOSE["services"].values() for p in s.get("ports", []))


def test_the_fleet_is_sharded_over_worker_services_the_supervisor_routes_to():
    """One qkdops-worker-i service per shard (distinct indices, --workers their count), each on the
    usual ports inside its container and on the supervisor's state volume; the supervisor's
    --worker-api list names them in shard order; Prometheus labels their targets worker-i."""
    rt = load_config(ROOT / "links.yaml").runtime
    workers = sorted(name for name in SERVICES if name.startswith("qkdops-worker-"))
    assert workers == list(WORKER_SERVICES)
    for i, name in enumerate(workers):
        service = SERVICES[name]
        assert service["image"] == SERVICES["qkdops"]["image"] and service["restart"] == "unless-stopped"
        assert service["command"] == ["worker", "--config", CONTAINER_CONFIG, "--shard", str(i), "--workers", str(COMPOSE_WORKERS),
                                      "--control-port", str(rt.control_port), "--device-port", str(rt.device_exporter_port),
                                      "--postprocessing-port", str(rt.postprocessing_exporter_port)]
        assert _mounts(name)["/app/var"] == _mounts("qkdops")["/app/var"]   # one state dir: archive, buffer, KME store
        assert service["environment"][TOKEN_FILE_ENV] == SERVICES["qkdops"]["environment"][TOKEN_FILE_ENV]
    command = SERVICES["qkdops"]["command"]
    routed = [command[i + 1] for i, arg in enumerate(command) if arg == "--worker-api"]
    assert routed == [f"http://{name}:{rt.control_port}" for name in workers] and "--no-prometheus" in command
    prom = yaml.safe_load(COMPOSE_PROMETHEUS_CONFIG.read_text())
    labelled = {sc["labels"]["worker"]: sc["targets"] for job in prom["scrape_configs"] for sc in job.get("static_configs", [])
                if "labels" in sc}
    assert sorted(labelled) == [f"worker-{i}" for i in range(COMPOSE_WORKERS)]


def test_the_runtime_image_runs_the_same_fleet_without_its_own_prometheus_or_scheduler():
    cmd = next(line for line in DOCKERFILE.splitlines() if line.startswith("CMD "))
    assert yaml.safe_load(cmd.removeprefix("CMD ")) == ["up", "--config", CONTAINER_CONFIG, "--no-prometheus", "--no-calibration"]
    assert "COPY runbooks" in DOCKERFILE  # served at /runbooks/<AlertName>
    assert "COPY links.yaml monitoring.yaml" in DOCKERFILE   # `qkdops up` loads both
    # every top-level package (the CLI imports them all: cli → dashboards_cmd → dashboards, …)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]
    assert {p.parent.name for p in ROOT.glob("*/__init__.py")} == set(packages)
    for package in packages:
        assert f"COPY {package} ./{package}" in DOCKERFILE, package
    # the container config is derived from the copied links.yaml at build time
    assert f"write_container_config('/app/links.yaml', '{CONTAINER_CONFIG}')" in DOCKERFILE
    assert DOCKERFILE.index("COPY links.yaml") < DOCKERFILE.index("write_container_config")
    exposed = {int(p) for line in DOCKERFILE.splitlines() if line.startswith("EXPOSE ") for p in line.split()[1:]}
    config = load_config(ROOT / "links.yaml")
    runtime = config.runtime
    assert exposed == {runtime.control_port, runtime.device_exporter_port, runtime.postprocessing_exporter_port,
                       runtime.calibration_exporter_port, runtime.kme_probe_port, runtime.pager_sink_port, *config.key_delivery.ports()}


def test_the_container_config_is_links_yaml_listening_on_the_compose_network(tmp_path: Path):
    shutil.copy(ROOT / "links.yaml", tmp_path / "links.yaml")  # as /app/links.yaml in the image
    derived = container_config(tmp_path / "links.yaml")
    original = load_config(ROOT / "links.yaml")
    config = parse_config(yaml.safe_load(derived), Path(CONTAINER_CONFIG))
    assert config.links == original.links
    assert config.runtime.bind == CONTAINER_BIND
    assert config.runtime.state_dir == tmp_path / original.runtime.state_dir.relative_to(ROOT)  # absolute, as before
    for name in ("control_port", "device_exporter_port", "postprocessing_exporter_port", "pager_sink_port",
                 "calibration_exporter_port", "prometheus_port"):
        assert getattr(config.runtime, name) == getattr(original.runtime, name), name


def _mounts(service: str) -> dict[str, tuple[str, bool]]:
    """container path → (source, read-only) of a service's volumes."""
    out = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target, *mode = volume.split(":")
        out[target] = (source, mode == ["ro"])
    return out


def _state_dir_in_image() -> PurePosixPath:
    """Where the services of the qkdops image keep state: links.yaml's state_dir under WORKDIR /app."""
    return PurePosixPath("/app") / load_config(ROOT / "links.yaml").runtime.state_dir.relative_to(ROOT)


def test_the_calibration_service_runs_the_scheduler_against_the_compose_services():
    service, runtime = SERVICES["calibration"], load_config(ROOT / "links.yaml").runtime
    for name in IMAGE_SERVICES:  # one image, built from the Dockerfile
        assert SERVICES[name]["image"] == SERVICES["qkdops"]["image"] and SERVICES[name]["build"] == ".", name
    assert service["command"] == ["scheduler", "--config", CONTAINER_CONFIG, "--api", f"http://qkdops:{runtime.control_port}",
                                  "--prometheus", f"http://prometheus:{runtime.prometheus_port}"]
    assert f"127.0.0.1:{runtime.prometheus_port}:{runtime.prometheus_port}" in SERVICES["prometheus"]["ports"]
    assert f"127.0.0.1:{runtime.control_port}:{runtime.control_port}" in SERVICES["qkdops"]["ports"]
    port = runtime.calibration_exporter_port
    assert service["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(service["healthcheck"]["test"])
    assert service["depends_on"] == {"api-token": {"condition": "service_completed_successfully"},
                                     "qkdops": {"condition": "service_healthy"},
                                     "prometheus": {"condition": "service_healthy"}}
    assert service["restart"] == "unless-stopped"
    # its own persistent state (calibration.sqlite, calibration.lock) in a named volume of its own
    mounts = _mounts("calibration")
    state = next((target, source) for target, (source, ro) in mounts.items() if _state_dir_in_image().is_relative_to(target))
    assert state[1] == "calibration-state" and not mounts[state[0]][1]
    assert all(source != "calibration-state" for name in SERVICES if name != "calibration" for source, _ in _mounts(name).values())


def test_the_api_token_is_shared_read_only_through_a_volume_that_holds_only_the_token():
    token_file = SERVICES["calibration"]["environment"][TOKEN_FILE_ENV]
    assert SERVICES["qkdops"]["environment"][TOKEN_FILE_ENV] == token_file  # the API and its client agree
    directory = str(PurePosixPath(token_file).parent)
    assert PurePosixPath(token_file).name == TOKEN_FILE_NAME
    writer = _mounts("api-token")
    assert writer[directory] == ("api-token", False)
    entrypoint = " ".join(SERVICES["api-token"]["entrypoint"])
    assert f"load_token(Path('{directory}'), create=True)" in entrypoint  # creates <dir>/api-token 0600 if absent
    for name in ("qkdops", "calibration"):
        assert _mounts(name)[directory] == ("api-token", True), name
        assert SERVICES[name]["depends_on"]["api-token"] == {"condition": "service_completed_successfully"}
    # nothing else sees it, and the scheduler does not see the qkdops state (key store, archive)
    token_readers = {name for name in SERVICES for source, _ in _mounts(name).values() if source == "api-token"}
    assert token_readers == {"api-token", *IMAGE_SERVICES, *WORKER_SERVICES}
    assert all(source != "qkdops-state" for source, _ in _mounts("calibration").values())
    assert "chmod 0700 /app/secrets" in DOCKERFILE and "chown qkdops /app/var /app/secrets" in DOCKERFILE


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


def test_every_kme_and_skip_key_provider_is_published_on_loopback_and_its_certificate_names_the_service():
    from qkdops.kme.pki import SERVER_NAMES

    config = load_config(DEFAULT_CONFIG)
    ports = COMPOSE["services"]["qkdops"]["ports"]
    assert all(f"127.0.0.1:{port}:{port}" in ports for port in config.key_delivery.ports())
    assert len(config.key_delivery.ports()) == 2 * len(config.key_delivery.kmes)
    assert "qkdops" in SERVER_NAMES  # SAEs on the compose network reach https://qkdops:PORT with hostname checks on


# ---- authentication: compose secrets ----------------------------------------------------------------
SECRETS_DIR = ROOT / "compose-secrets"


def _secrets(service: str) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in SERVICES[service].get("secrets", [])}


def test_every_generated_credential_is_a_compose_secret_in_the_ignored_directory(tmp_path: Path):
    declared = COMPOSE["secrets"]
    assert set(declared) == set(COMPOSE_SECRET_FILES)   # names as the rendered configs and the services see them
    for name, spec in declared.items():
        assert spec == {"file": f"./compose-secrets/{name}"} and COMPOSE_SECRET_FILES[name] == f"/run/secrets/{name}", name
    # what `qkdops credentials --compose-dir` writes is exactly what compose mounts
    assert {p.name for p in credentials.write_compose_secrets(tmp_path / "s")} == set(declared)
    assert {p.name for p in SECRETS_DIR.iterdir()} & {".gitignore", "README.md"} == {".gitignore", "README.md"}
    ignore = (SECRETS_DIR / ".gitignore").read_text().split()
    assert "*" in ignore and "!.gitignore" in ignore and "!README.md" in ignore
    assert all(s in {*declared} for name in SERVICES for s in _secrets(name))


def test_prometheus_and_alertmanager_run_with_basic_auth_and_health_checks_that_log_in():
    for name, web, password in (*((name, "prometheus-web.yml", "prometheus-password") for name in PROMETHEUS_PAIR),
                                *((name, "alertmanager-web.yml", "alertmanager-password") for name in ALERTMANAGER_CLUSTER)):
        service = SERVICES[name]
        assert f"--web.config.file={COMPOSE_SECRET_FILES[web]}" in service["command"], name
        assert {web, password} <= _secrets(name), name
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL" and f"qkdops:$$(cat {COMPOSE_SECRET_FILES[password]})@127.0.0.1" in test[1], name


def test_each_client_gets_the_credential_file_its_rendered_config_or_environment_names():
    prom = yaml.safe_load(COMPOSE_PROMETHEUS_CONFIG.read_text())
    (alerting,) = prom["alerting"]["alertmanagers"]
    assert alerting["basic_auth"] == {"username": credentials.USER, "password_file": COMPOSE_SECRET_FILES["alertmanager-password"]}
    assert "alertmanager-password" in _secrets("prometheus")
    am = yaml.safe_load(COMPOSE_ALERTMANAGER_CONFIG.read_text())
    files = {w["http_config"]["authorization"]["credentials_file"] for r in am["receivers"] for w in r.get("webhook_configs", [])}
    assert files == {COMPOSE_SECRET_FILES["pager-sink-token"]} and "pager-sink-token" in _secrets("alertmanager")
    # the pager sink (qkdops) and the scheduler read theirs through the variables qkdops.credentials honours
    assert SERVICES["qkdops"]["environment"][credentials.PAGER_SINK_TOKEN.file_env] == COMPOSE_SECRET_FILES["pager-sink-token"]
    assert _secrets("qkdops") == {"pager-sink-token"}
    assert SERVICES["calibration"]["environment"][credentials.PROMETHEUS_PASSWORD.file_env] == COMPOSE_SECRET_FILES["prometheus-password"]
    assert _secrets("calibration") == {"prometheus-password"}
    # nobody gets a secret it does not use: the web configs only to their server
    assert {name for name in SERVICES if "prometheus-web.yml" in _secrets(name)} == set(PROMETHEUS_PAIR)
    assert {name for name in SERVICES if "alertmanager-web.yml" in _secrets(name)} == set(ALERTMANAGER_CLUSTER)


def test_grafana_queries_prometheus_and_the_long_term_store_with_basic_auth_from_the_secrets():
    prometheus, victoria = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    for datasource, secret in ((prometheus, "prometheus-password"), (victoria, "victoria-metrics-password")):
        assert datasource["basicAuth"] is True and datasource["basicAuthUser"] == credentials.USER
        assert datasource["secureJsonData"] == {"basicAuthPassword": f"$__file{{{COMPOSE_SECRET_FILES[secret]}}}"}
        assert secret in _secrets("grafana")
    assert prometheus["isDefault"] and victoria["url"] == "http://vmauth:8427"


def test_the_long_term_store_is_reached_only_through_vmauth_with_the_password():
    prom = yaml.safe_load(COMPOSE_PROMETHEUS_CONFIG.read_text())
    (remote,) = prom["remote_write"]
    assert remote == {"url": "http://vmauth:8427/api/v1/write",
                      "basic_auth": {"username": credentials.USER, "password_file": COMPOSE_SECRET_FILES["victoria-metrics-password"]},
                      "write_relabel_configs": [{"action": "labeldrop", "regex": "replica"}]}   # the pair writes one series
    assert "victoria-metrics-password" in _secrets("prometheus")
    assert _secrets("vmauth") == {"vmauth-config.yml"} and SERVICES["vmauth"]["ports"] == ["127.0.0.1:8427:8427"]
    for name in ("vmstorage", "vminsert", "vmselect"):
        assert "ports" not in SERVICES[name], f"{name} must be reachable only through vmauth"
    # both tiers deduplicate at the scrape interval (replicas writing the same series keep one sample)
    interval = f"-dedup.minScrapeInterval={load_monitoring_config().scrape_interval_s:g}s"
    assert interval in SERVICES["vmstorage"]["command"] and interval in SERVICES["vmselect"]["command"]
