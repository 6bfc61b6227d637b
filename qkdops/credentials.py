"""Generated credentials of the stack: one implementation for every secret the stack makes for itself.

Each secret (``Secret``) is a file of one line; where it is found, first found:

1. env ``<value_env>`` holding the value itself (only the control API token has one, ``QKDOPS_API_TOKEN``);
2. the file named by env ``<file_env>`` (docker-compose points these at ``/run/secrets/…``);
3. ``<state_dir>/<file_name>``, which the server side creates on first start (``create=True``: mode
   0600 before any byte is written, ``O_EXCL`` so two starting processes cannot both write, 256 random
   bits from ``secrets.token_urlsafe``). A client never invents one (``create=False``): a missing file
   is a ``CredentialError`` naming it and saying what creates it.

========================  =================================  ======================================================
secret                    file (state dir) / env naming one  used by
========================  =================================  ======================================================
control API token         ``api-token``                      the control API (bearer) and its clients
                          ``QKDOPS_API_TOKEN_FILE``
pager sink token          ``pager-sink-token``               the pager sink (bearer); Alertmanager's webhooks read
                          ``QKDOPS_PAGER_SINK_TOKEN_FILE``   it as ``http_config.authorization.credentials_file``
Prometheus password       ``prometheus-password``            basic auth, user ``qkdops``, hashed into
                          ``QKDOPS_PROMETHEUS_PASSWORD_FILE`` ``prometheus-web.yml`` (``--web.config.file``)
Alertmanager password     ``alertmanager-password``          basic auth, user ``qkdops``, hashed into
                          ``QKDOPS_ALERTMANAGER_PASSWORD_FILE`` ``alertmanager-web.yml``; Prometheus sends it as
                                                             ``basic_auth.password_file``
========================  =================================  ======================================================

The web config files (Prometheus exporter-toolkit format, ``basic_auth_users: {user: bcrypt hash}``)
are derived from the passwords (``write_web_config``) and rewritten whenever their hash no longer
matches the password, so rotating is: delete the password file (or run ``qkdops credentials
--rotate``) and restart ``qkdops up``.

Values are never logged or echoed: ``SecretValue``'s repr leaves the value out, and errors name the
file or variable, never what it holds. A file readable by group or others is warned about.
Clients attach them with ``qkdops.http_client`` (``StackAuth``), never by hand.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

log = logging.getLogger("qkdops.credentials")

USER = "qkdops"  # the basic-auth user of Prometheus and Alertmanager
BCRYPT_ROUNDS = 10  # Go's bcrypt.DefaultCost; Prometheus caches a verified hash, so the cost is paid once
# RFC 6750 b64token: what can travel in an Authorization header unchanged (token_urlsafe's alphabet is a subset).
TOKEN_SYNTAX = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


class CredentialError(ValueError):
    """No usable secret; the message names where it looked (file or variable), never a value."""


@dataclass(frozen=True)
class Secret:
    """Where one kind of secret lives: its file in the state dir and the variables that override it."""

    what: str        # for messages: "control API token"
    file_name: str   # in the state dir
    file_env: str    # env naming a file that holds it
    value_env: str | None = None  # env holding the value itself (the control API token only)

    def path(self, state_dir: Path, environ: Mapping[str, str] | None = None) -> Path:
        """The file this secret is read from: env ``file_env``'s, else ``state_dir/file_name``."""
        environ = os.environ if environ is None else environ
        named = environ.get(self.file_env)
        if named is not None:
            if not named.strip():
                raise CredentialError(f"environment variable {self.file_env} is set but empty")
            return Path(named)
        return Path(state_dir) / self.file_name


API_TOKEN = Secret("control API token", "api-token", "QKDOPS_API_TOKEN_FILE", "QKDOPS_API_TOKEN")
PAGER_SINK_TOKEN = Secret("pager sink token", "pager-sink-token", "QKDOPS_PAGER_SINK_TOKEN_FILE")
PROMETHEUS_PASSWORD = Secret("Prometheus password", "prometheus-password", "QKDOPS_PROMETHEUS_PASSWORD_FILE")
ALERTMANAGER_PASSWORD = Secret("Alertmanager password", "alertmanager-password", "QKDOPS_ALERTMANAGER_PASSWORD_FILE")
VICTORIA_METRICS_PASSWORD = Secret("VictoriaMetrics password", "victoria-metrics-password", "QKDOPS_VICTORIA_METRICS_PASSWORD_FILE")
# What `qkdops up` creates for its servers and their clients (the control API token has its own path).
STACK_SECRETS = (PAGER_SINK_TOKEN, PROMETHEUS_PASSWORD, ALERTMANAGER_PASSWORD, VICTORIA_METRICS_PASSWORD)
GENERATED = (API_TOKEN, *STACK_SECRETS)
PROMETHEUS_WEB_CONFIG = "prometheus-web.yml"
COMPOSE_SECRETS_DIR = "/run/secrets/"
ALERTMANAGER_WEB_CONFIG = "alertmanager-web.yml"


@dataclass(frozen=True)
class SecretValue:
    """A secret and where it came from (for messages); ``repr`` leaves the value out."""

    value: str = field(repr=False)
    source: str


def from_environment(secret: Secret, environ: Mapping[str, str] | None = None) -> SecretValue | None:
    """The value env ``value_env`` holds or env ``file_env`` names; None if neither is set."""
    environ = os.environ if environ is None else environ
    if secret.value_env is not None and (value := environ.get(secret.value_env)) is not None:
        where = f"environment variable {secret.value_env}"
        return SecretValue(checked(secret, value, where), where)
    if environ.get(secret.file_env) is not None:
        path = secret.path(Path("."), environ)
        return read_secret(secret, path, f"file {path} (from {secret.file_env})")
    return None


def load_secret(secret: Secret, state_dir: Path, create: bool, environ: Mapping[str, str] | None = None) -> SecretValue:
    """From the environment, else ``state_dir/file_name`` (created there when ``create``)."""
    if (found := from_environment(secret, environ)) is not None:
        return found
    path = Path(state_dir) / secret.file_name
    if create:
        create_secret_file(path, secret)
    elif not path.exists():
        hint = f"{secret.value_env} or {secret.file_env}" if secret.value_env else secret.file_env
        raise CredentialError(f"no {secret.what}: set {hint}, or start `qkdops up`, which creates {path}")
    return read_secret(secret, path, f"file {path}")


def create_secret_file(path: Path, secret: Secret, replace: bool = False) -> bool:
    """Write a fresh random value to ``path`` (mode 0600) unless it exists; True when written.

    ``replace``: rotate — a new value is written beside it and renamed over it, so a reader sees the
    old value or the new one, never a partial file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.with_name(path.name + ".new") if replace else path
    if replace:
        target.unlink(missing_ok=True)
    try:
        # O_EXCL: two starting processes cannot both write; 0600 before any byte is written.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    if replace:
        os.replace(target, path)
    log.info("%s %s file %s (mode 0600)", "rotated" if replace else "created", secret.what, path)
    return True


def read_secret(secret: Secret, path: Path, where: str | None = None) -> SecretValue:
    where = where or f"file {path}"
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except OSError as exc:
        raise CredentialError(f"cannot read the {secret.what} from {where}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CredentialError(f"{secret.what} {where} is not text") from None
    if mode & 0o077 and not str(path).startswith(COMPOSE_SECRETS_DIR):  # compose bind-mounts its secrets as they are
        log.warning("%s %s is readable by group or others (mode %o): chmod 600 it", secret.what, where, mode & 0o777)
    return SecretValue(checked(secret, text.strip(), where), where)


def checked(secret: Secret, value: str, where: str) -> str:
    if not value:
        raise CredentialError(f"{secret.what} from {where} is empty")
    if not TOKEN_SYNTAX.match(value):
        raise CredentialError(f"{secret.what} from {where} has characters a bearer token cannot carry "
                              "(allowed: letters, digits and -._~+/ with trailing =)")
    return value


# ---- headers -------------------------------------------------------------------------------------
def bearer(token: str) -> str:
    """The ``Authorization`` header value for a bearer token."""
    return f"Bearer {token}"


def basic(user: str, password: str) -> str:
    """The ``Authorization`` header value for HTTP basic auth (RFC 7617)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


# ---- web config (Prometheus exporter-toolkit) ----------------------------------------------------
def web_config(password: str, user: str = USER) -> dict[str, dict[str, str]]:
    """``--web.config.file`` contents: basic auth for ``user`` with a bcrypt hash of ``password``."""
    import bcrypt  # a dependency of the servers' side only

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode("ascii")
    return {"basic_auth_users": {user: hashed}}


def web_config_matches(path: Path, password: str, user: str = USER) -> bool:
    """Whether ``path`` is a web config letting ``user`` in with ``password`` (and nobody else)."""
    import bcrypt

    try:
        users = yaml.safe_load(path.read_text(encoding="utf-8"))["basic_auth_users"]
        return set(users) == {user} and bcrypt.checkpw(password.encode(), users[user].encode("ascii"))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError):
        return False


def write_web_config(path: Path, password: str, user: str = USER) -> bool:
    """Write ``path`` (mode 0600, atomically) unless it already matches ``password``; True when written."""
    if web_config_matches(path, password, user):
        return False
    header = (f"# --web.config.file: basic auth for user {user!r}, generated by qkdops.credentials from the\n"
              "# password file beside it. Rewritten when the password changes; do not edit.\n")
    _write_private(path, header + yaml.safe_dump(web_config(password, user), sort_keys=False))
    log.info("wrote web config %s (basic auth for %s)", path, user)
    return True


def _write_private(path: Path, text: str) -> None:
    """``text`` into ``path`` atomically, created 0600 (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


# The compose long-term store: a VictoriaMetrics cluster whose vminsert (writes) and vmselect (reads)
# are reached only through vmauth, the one published and authenticated entry (docker-compose.yml).
VMAUTH_CONFIG = "vmauth-config.yml"
VM_WRITE_PATHS = ("/api/v1/write",)
VM_READ_PATHS = ("/api/v1/query", "/api/v1/query_range", "/api/v1/series", "/api/v1/labels", "/api/v1/label/[^/]+/values",
                 "/api/v1/metadata", "/api/v1/status/buildinfo")


def vmauth_config(password: str, user: str = USER) -> str:
    """vmauth's ``-auth.config``: ``user`` with ``password`` may remote-write (to vminsert) and query
    the Prometheus API (vmselect), tenant 0; any other request or caller gets 401 or 404."""
    return ("# vmauth -auth.config, generated by `qkdops credentials --compose-dir` from victoria-metrics-password.\n"
            "# Rewritten when the password changes; do not edit.\n"
            + yaml.safe_dump({"users": [{"username": user, "password": password, "url_map": [
                {"src_paths": list(VM_WRITE_PATHS), "url_prefix": "http://vminsert:8480/insert/0/prometheus"},
                {"src_paths": list(VM_READ_PATHS), "url_prefix": "http://vmselect:8481/select/0/prometheus"}]}]}, sort_keys=False))


def write_vmauth_config(path: Path, password: str) -> bool:
    """Write ``path`` unless it already holds ``vmauth_config(password)``; True when written."""
    text = vmauth_config(password)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    _write_private(path, text)
    return True


@dataclass(frozen=True)
class ServerCredentials:
    """What ``qkdops up`` gives Prometheus and Alertmanager: their web configs and the files they read."""

    prometheus_web_config: Path
    alertmanager_web_config: Path
    alertmanager_password_file: Path   # Prometheus → Alertmanager basic auth
    pager_sink_token_file: Path        # Alertmanager → pager sink bearer
    victoria_metrics_password_file: Path   # Prometheus → VictoriaMetrics (remote_write) basic auth


def prepare_server_credentials(state_dir: Path, environ: Mapping[str, str] | None = None) -> ServerCredentials:
    """Create what is missing (passwords, pager sink token) and (re)write the web configs."""
    state_dir = Path(state_dir)
    paths = {}
    for secret in STACK_SECRETS:
        value = load_secret(secret, state_dir, create=True, environ=environ)
        paths[secret] = (secret.path(state_dir, environ).resolve(), value)
    write_web_config(state_dir / PROMETHEUS_WEB_CONFIG, paths[PROMETHEUS_PASSWORD][1].value)
    write_web_config(state_dir / ALERTMANAGER_WEB_CONFIG, paths[ALERTMANAGER_PASSWORD][1].value)
    return ServerCredentials(state_dir / PROMETHEUS_WEB_CONFIG, state_dir / ALERTMANAGER_WEB_CONFIG,
                             paths[ALERTMANAGER_PASSWORD][0], paths[PAGER_SINK_TOKEN][0], paths[VICTORIA_METRICS_PASSWORD][0])


def client_environment(state_dir: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Env naming each stack secret's file, for a child process (the calibration scheduler) so it reads
    exactly the files this process uses whatever its own config's state dir."""
    environ = os.environ if environ is None else environ
    return {secret.file_env: str(secret.path(Path(state_dir), environ).resolve())
            for secret in STACK_SECRETS}


def write_compose_secrets(directory: Path, rotate: bool = False) -> list[Path]:
    """The docker-compose secrets (``docker-compose.yml``'s ``secrets:``) in ``directory``: the generated
    secrets (``STACK_SECRETS``), both web configs and vmauth's config. Existing values are kept unless
    ``rotate``; the configs always follow their passwords. Returns the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)  # the files themselves must be readable by the containers' users (below)
    written = []
    for secret in STACK_SECRETS:
        path = directory / secret.file_name
        if create_secret_file(path, secret, replace=rotate and path.exists()):
            written.append(path)
    for secret, name in ((PROMETHEUS_PASSWORD, PROMETHEUS_WEB_CONFIG), (ALERTMANAGER_PASSWORD, ALERTMANAGER_WEB_CONFIG)):
        if write_web_config(directory / name, read_secret(secret, directory / secret.file_name).value):
            written.append(directory / name)
    vm_password = read_secret(VICTORIA_METRICS_PASSWORD, directory / VICTORIA_METRICS_PASSWORD.file_name).value
    if write_vmauth_config(directory / VMAUTH_CONFIG, vm_password):
        written.append(directory / VMAUTH_CONFIG)
    # Compose bind-mounts file secrets with the host's owner and mode (its uid/gid/mode settings are
    # swarm-only), and Prometheus, Alertmanager and Grafana run as users of their own: 0644 inside
    # the 0700 directory, so only this user reaches them on the host.
    for path in directory.iterdir():
        if path.is_file() and path.name != "README.md":
            path.chmod(0o644)
    return written
