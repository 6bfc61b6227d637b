"""The qkdops workloads on Kubernetes (``deploy/kubernetes/workloads.yaml``, by ``qkdops generate``):
the sharded fleet as the orchestrator runs it, with the CLI forms ``qkdops up --workers N`` uses
locally.

* ``StatefulSet qkdops-worker``: ``WORKERS`` pods, ``qkdops worker --shard I --workers N`` with I the
  pod's ordinal (parsed from its hostname, ``qkdops-worker-I``: a StatefulSet's pod name is stable,
  so a restarted pod runs the same links), reached through the headless Service ``qkdops-worker``
  as ``qkdops-worker-I.qkdops-worker:9800``.
* ``Deployment qkdops``: the supervisor, ``qkdops up --no-prometheus --worker-api URL…`` (one URL per
  worker, in shard order): the sites' KMEs, the pager sink, its post-processing exporter (the KMEs'
  request series) and the control API routing each link to its worker.
* ``Deployment qkdops-calibration``: the calibration scheduler, acting through the supervisor's
  control API on signals from the operator's Prometheus.
* The state volume: the workers and the supervisor share one state directory (archive, key buffer,
  KME key store: SQLite files written by several processes). SQLite's locking needs one kernel, so
  this is a ReadWriteOnce PersistentVolumeClaim on ONE node, and the workers require pod affinity to
  the supervisor's node: **the whole fleet runs on one node** — the current limit of this layout,
  not something a ReadWriteMany (NFS) volume lifts (SQLite locks are unreliable over network file
  systems and the key store would corrupt).

Secrets are referenced, never rendered: ``qkdops-api-token`` (the control API's bearer token,
mounted as a file, ``QKDOPS_API_TOKEN_FILE``), ``qkdops-pager-sink-token`` (the pager sink's, also
mounted into Alertmanager) and ``qkdops-prometheus-password`` (the scheduler wants a Prometheus
password file; the operator's Prometheus does not ask for one inside the cluster).

Probes: liveness on the control API's ``/healthz`` — never on an exporter, because the control API
stops and starts exporters on purpose (the "exporter crash" game day) and a liveness probe there
would restart the pod mid-scenario; readiness on what each pod serves to others (a worker's control
API, which the supervisor routes to; the supervisor's pager sink, which Alertmanager posts to; the
scheduler's metrics port). CPU has requests but no limits: a throttled fleet thread falls behind
wall-clock time and its frames come late, which the alerts would read as a link fault.
"""

from __future__ import annotations

from typing import Any

from qkdops.config import DEFAULT_CONFIG, FleetConfig, RuntimeSettings, load_config

PART_OF = {"app.kubernetes.io/part-of": "qkdops"}
IMAGE = "qkdops:local"          # docker-compose.yml's name for the Dockerfile's image
CONFIG = "/etc/qkdops/links.yaml"  # the fleet config inside the image (qkdops_cli.stack.CONTAINER_CONFIG)
STATE_MOUNT = "/app/var"        # the image's state dir lives under it (state_dir made absolute at build)
SECRETS_MOUNT = "/run/secrets/qkdops"
UID = 10001                     # the image's user (Dockerfile)
WORKERS = 2                     # replicas of the worker StatefulSet = every worker's --workers
WORKER = "qkdops-worker"        # StatefulSet, its headless Service and its pods' name prefix
SUPERVISOR = "qkdops"
SCHEDULER = "qkdops-calibration"
WORKER_LABEL_PREFIX = "worker-"  # a worker's `worker` label, as the local stack's file SD gives it (stack.WORKER_PREFIX)
STATE_CLAIM = "qkdops-state"
CALIBRATION_CLAIM = "qkdops-calibration-state"
# Secret name → its one key (= the file name qkdops reads) and the env naming that file
SECRETS = {"qkdops-api-token": ("api-token", "QKDOPS_API_TOKEN_FILE"),
           "qkdops-pager-sink-token": ("pager-sink-token", "QKDOPS_PAGER_SINK_TOKEN_FILE"),
           "qkdops-prometheus-password": ("prometheus-password", "QKDOPS_PROMETHEUS_PASSWORD_FILE")}
PROMETHEUS_SERVICE = "prometheus-operated"   # the operator's governing Service of every Prometheus
_RT = RuntimeSettings()   # the image's ports are links.yaml's defaults, as in compose
WORKER_PORTS = {"control-api": _RT.control_port, "device-metrics": _RT.device_exporter_port,
                "pp-metrics": _RT.postprocessing_exporter_port}
SCHEDULER_PORTS = {"calibration-metrics": _RT.calibration_exporter_port}


def fleet() -> FleetConfig:
    """The fleet the image runs (the shipped links.yaml): its KMEs' ports, how many links to shard."""
    return load_config(DEFAULT_CONFIG)


def supervisor_ports(config: FleetConfig) -> dict[str, int]:
    """The supervisor's named ports: control API, its post-processing exporter, pager sink, and one
    KME and one SKIP key provider per site (``kme-<i>``, ``skip-<i>`` in key_delivery order: a port
    name has at most 15 characters)."""
    return {"control-api": _RT.control_port, "pp-metrics": _RT.postprocessing_exporter_port, "pager-sink": _RT.pager_sink_port,
            **{f"kme-{i}": kme.port for i, kme in enumerate(config.key_delivery.kmes)},
            **{f"skip-{i}": kme.skip_port for i, kme in enumerate(config.key_delivery.kmes)}}


def labels(name: str, component: str) -> dict[str, str]:
    return {**PART_OF, "app.kubernetes.io/name": name, "app.kubernetes.io/component": component}


def worker_urls() -> list[str]:
    """The supervisor's ``--worker-api`` list: each worker pod's control API by its stable DNS name
    (``<pod>.<headless service>``), in shard order."""
    return [f"http://{WORKER}-{i}.{WORKER}:{_RT.control_port}" for i in range(WORKERS)]


def worker_command() -> list[str]:
    """``qkdops worker`` with the shard index taken from the pod's ordinal: a StatefulSet pod's
    hostname is ``qkdops-worker-<ordinal>`` (the ``apps.kubernetes.io/pod-index`` label needs
    Kubernetes 1.28; the hostname works everywhere)."""
    ports = " ".join(f"--{flag}-port {WORKER_PORTS[port]}"
                     for flag, port in (("control", "control-api"), ("device", "device-metrics"), ("postprocessing", "pp-metrics")))
    return ["sh", "-c", f'exec qkdops worker --config {CONFIG} --shard "${{HOSTNAME##*-}}" --workers {WORKERS} {ports}']


def _env(*secrets: str) -> list[dict[str, str]]:
    return [{"name": SECRETS[s][1], "value": f"{SECRETS_MOUNT}/{s}/{SECRETS[s][0]}"} for s in secrets]


def _secret_volumes(*secrets: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts): each Secret read-only at ``SECRETS_MOUNT/<secret>/<key>``, owner-readable only."""
    return ([{"name": s, "secret": {"secretName": s, "defaultMode": 0o400}} for s in secrets],
            [{"name": s, "mountPath": f"{SECRETS_MOUNT}/{s}", "readOnly": True} for s in secrets])


def _probe(port: str, initial_delay_s: int = 0) -> dict[str, Any]:
    return {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3,
            **({"initialDelaySeconds": initial_delay_s} if initial_delay_s else {})}


def _pod(name: str, component: str, container: dict[str, Any], claim: str, secrets: tuple[str, ...],
         affinity: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pod template of the qkdops image: its state claim at ``STATE_MOUNT``, its secrets as files,
    the image's unprivileged user (``fsGroup`` so a fresh volume is writable by it)."""
    volumes, mounts = _secret_volumes(*secrets)
    return {"metadata": {"labels": labels(name, component)},
            "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID},
                     **({"affinity": affinity} if affinity else {}),
                     "containers": [{"name": name, "image": IMAGE, "imagePullPolicy": "IfNotPresent", **container,
                                     "env": _env(*secrets),
                                     "volumeMounts": [{"name": "state", "mountPath": STATE_MOUNT}, *mounts],
                                     "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
                     "volumes": [{"name": "state", "persistentVolumeClaim": {"claimName": claim}}, *volumes]}}


def _ports(ports: dict[str, int]) -> list[dict[str, Any]]:
    return [{"name": name, "containerPort": port} for name, port in ports.items()]


def _resources(cpu: str, memory: str, memory_limit: str) -> dict[str, Any]:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory_limit}}


def worker_statefulset() -> dict[str, Any]:
    """The workers, all on the supervisor's node (the shared state volume: see the module docstring)."""
    same_node = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app.kubernetes.io/name": SUPERVISOR}}, "topologyKey": "kubernetes.io/hostname"}]}}
    container = {"command": worker_command(), "ports": _ports(WORKER_PORTS),
                 "readinessProbe": _probe("control-api"), "livenessProbe": _probe("control-api", 10),
                 "resources": _resources("250m", "256Mi", "1Gi")}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": WORKER, "labels": labels(WORKER, "worker")},
            "spec": {"replicas": WORKERS, "serviceName": WORKER, "podManagementPolicy": "Parallel",
                     "selector": {"matchLabels": {"app.kubernetes.io/name": WORKER}},
                     "template": _pod(WORKER, "worker", container, STATE_CLAIM, ("qkdops-api-token",), same_node)}}


def supervisor_deployment(config: FleetConfig) -> dict[str, Any]:
    """One supervisor, replaced by stopping the old one first (``Recreate``): two would serve the
    same KME store and pager sink from two processes, and the new one could land on another node."""
    args = ["up", "--config", CONFIG, "--no-prometheus", *(arg for url in worker_urls() for arg in ("--worker-api", url))]
    container = {"args": args, "ports": _ports(supervisor_ports(config)),
                 "readinessProbe": _probe("pager-sink"), "livenessProbe": _probe("control-api", 10),
                 "resources": _resources("250m", "256Mi", "1Gi")}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": SUPERVISOR, "labels": labels(SUPERVISOR, "runtime")},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": {"app.kubernetes.io/name": SUPERVISOR}},
                     "template": _pod(SUPERVISOR, "runtime", container, STATE_CLAIM, ("qkdops-api-token", "qkdops-pager-sink-token"))}}


def scheduler_deployment() -> dict[str, Any]:
    """The calibration scheduler: one at a time (it holds ``calibration.lock`` in its own volume, which
    also keeps its run history across restarts); it gets neither the fleet's state nor its KME store."""
    args = ["scheduler", "--config", CONFIG, "--api", f"http://{SUPERVISOR}:{_RT.control_port}",
            "--prometheus", f"http://{PROMETHEUS_SERVICE}:{_RT.prometheus_port}"]
    container = {"args": args, "ports": _ports(SCHEDULER_PORTS),
                 "readinessProbe": _probe("calibration-metrics"), "livenessProbe": _probe("calibration-metrics", 10),
                 "resources": _resources("100m", "128Mi", "512Mi")}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": SCHEDULER, "labels": labels(SCHEDULER, "calibration")},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": {"app.kubernetes.io/name": SCHEDULER}},
                     "template": _pod(SCHEDULER, "calibration", container, CALIBRATION_CLAIM,
                                      ("qkdops-api-token", "qkdops-prometheus-password"))}}


def claims() -> list[dict[str, Any]]:
    """The fleet's state (ReadWriteOnce: one node, see the module docstring) and the scheduler's."""
    return [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "labels": dict(PART_OF)},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}
            for name, size in ((STATE_CLAIM, "10Gi"), (CALIBRATION_CLAIM, "1Gi"))]


def services(config: FleetConfig) -> list[dict[str, Any]]:
    """The supervisor's and the scheduler's Services (the ServiceMonitors select them by component)
    and the workers' headless one (stable per-pod DNS names; the PodMonitor scrapes the pods)."""
    def service(name: str, component: str, ports: dict[str, int], headless: bool = False) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels(name, component)},
                "spec": {**({"clusterIP": "None"} if headless else {}), "selector": {"app.kubernetes.io/name": name},
                         "ports": [{"name": port_name, "port": port, "targetPort": port_name} for port_name, port in ports.items()]}}
    return [service(SUPERVISOR, "runtime", supervisor_ports(config)), service(WORKER, "worker", WORKER_PORTS, headless=True),
            service(SCHEDULER, "calibration", SCHEDULER_PORTS)]


def workloads() -> list[dict[str, Any]]:
    """Every object of ``workloads.yaml``, in the order ``kubectl apply`` creates them."""
    config = fleet()
    if WORKERS > len(config.links):
        raise ValueError(f"WORKERS = {WORKERS}: more workers than the {len(config.links)} link(s) of {config.source}")
    return [*claims(), *services(config), supervisor_deployment(config), worker_statefulset(), scheduler_deployment()]
