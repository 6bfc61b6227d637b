"""qkdops.credentials: generated secrets (0600, random, never echoed), web configs promtool accepts,
and the client helper attaching them."""

from __future__ import annotations

import logging
import shutil
import stat
import subprocess
from pathlib import Path

import bcrypt
import pytest
import yaml

from qkdops import credentials
from qkdops.credentials import ALERTMANAGER_PASSWORD, PAGER_SINK_TOKEN, PROMETHEUS_PASSWORD, CredentialError
from qkdops.http_client import StackAuth


def test_created_once_with_mode_0600_and_never_echoed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(CredentialError, match="pager-sink-token"):
        credentials.load_secret(PAGER_SINK_TOKEN, tmp_path, create=False, environ={})  # a client never invents one
    with caplog.at_level(logging.DEBUG, logger="qkdops.credentials"):
        first = credentials.load_secret(PAGER_SINK_TOKEN, tmp_path, create=True, environ={})
    path = tmp_path / "pager-sink-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.value) >= 43 and credentials.TOKEN_SYNTAX.match(first.value)
    assert credentials.load_secret(PAGER_SINK_TOKEN, tmp_path, create=True, environ={}) == first
    assert first.value not in repr(first) and first.value not in caplog.text and str(path) in caplog.text
    assert credentials.load_secret(PROMETHEUS_PASSWORD, tmp_path, create=True, environ={}).value != first.value


def test_env_named_file_first_and_errors_name_it(tmp_path: Path) -> None:
    named = tmp_path / "elsewhere"
    named.write_text("from-the-named-file\n")
    named.chmod(0o600)
    env = {PROMETHEUS_PASSWORD.file_env: str(named)}
    found = credentials.load_secret(PROMETHEUS_PASSWORD, tmp_path / "state", create=True, environ=env)
    assert found.value == "from-the-named-file" and str(named) in found.source
    assert not (tmp_path / "state" / "prometheus-password").exists()
    with pytest.raises(CredentialError, match=f"{tmp_path}/missing"):
        credentials.load_secret(PROMETHEUS_PASSWORD, tmp_path, False, {PROMETHEUS_PASSWORD.file_env: str(tmp_path / "missing")})
    (tmp_path / "bad").write_text("two words\n")
    with pytest.raises(CredentialError, match="cannot carry") as info:
        credentials.load_secret(PROMETHEUS_PASSWORD, tmp_path, False, {PROMETHEUS_PASSWORD.file_env: str(tmp_path / "bad")})
    assert "two words" not in str(info.value)


def test_web_config_follows_the_password_and_promtool_accepts_it(tmp_path: Path) -> None:
    server = credentials.prepare_server_credentials(tmp_path, environ={})
    password = (tmp_path / "prometheus-password").read_text().strip()
    users = yaml.safe_load(server.prometheus_web_config.read_text())["basic_auth_users"]
    assert list(users) == ["qkdops"] and bcrypt.checkpw(password.encode(), users["qkdops"].encode())
    assert stat.S_IMODE(server.prometheus_web_config.stat().st_mode) == 0o600
    assert password not in server.prometheus_web_config.read_text()
    before = server.alertmanager_web_config.read_text()
    credentials.prepare_server_credentials(tmp_path, environ={})
    assert server.alertmanager_web_config.read_text() == before  # unchanged password: not rewritten
    (tmp_path / "alertmanager-password").unlink()   # rotation: a new password, a new hash
    credentials.prepare_server_credentials(tmp_path, environ={})
    assert server.alertmanager_web_config.read_text() != before
    assert credentials.web_config_matches(server.alertmanager_web_config, (tmp_path / "alertmanager-password").read_text().strip())
    if (promtool := shutil.which("promtool")) is None:
        pytest.skip("promtool not installed")
    for path in (server.prometheus_web_config, server.alertmanager_web_config):
        result = subprocess.run([promtool, "check", "web-config", str(path)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr


def test_compose_secrets_are_written_once_and_rotated_on_demand(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    written = {p.name for p in credentials.write_compose_secrets(directory)}
    assert written == {"pager-sink-token", "prometheus-password", "alertmanager-password", "victoria-metrics-password",
                       "prometheus-web.yml", "alertmanager-web.yml", "vmauth-config.yml"}
    # vmauth lets the stack's user in with the VictoriaMetrics password, and routes writes and queries only
    vmauth = yaml.safe_load((directory / "vmauth-config.yml").read_text())
    (user,) = vmauth["users"]
    assert user["username"] == credentials.USER and user["password"] == (directory / "victoria-metrics-password").read_text().strip()
    assert [m["url_prefix"] for m in user["url_map"]] == ["http://vminsert:8480/insert/0/prometheus", "http://vmselect:8481/select/0/prometheus"]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((directory / name).stat().st_mode) == 0o644 for name in written)  # the containers' users
    token = (directory / "pager-sink-token").read_text()
    assert credentials.write_compose_secrets(directory) == []
    rotated = {p.name for p in credentials.write_compose_secrets(directory, rotate=True)}
    assert rotated == written and (directory / "pager-sink-token").read_text() != token


def test_stack_auth_headers(tmp_path: Path) -> None:
    credentials.prepare_server_credentials(tmp_path, environ={})
    auth = StackAuth(tmp_path, environ={})
    token = (tmp_path / "pager-sink-token").read_text().strip()
    assert auth.pager_sink.header == f"Bearer {token}" and token not in repr(auth.pager_sink)
    assert auth.prometheus.header.startswith("Basic ") and auth.prometheus.header != auth.alertmanager.header
    assert credentials.basic("qkdops", "pw") == "Basic cWtkb3BzOnB3"
    with pytest.raises(CredentialError, match=str(tmp_path / "nowhere" / "alertmanager-password")):
        StackAuth(tmp_path / "nowhere", environ={}).alertmanager  # noqa: B018
    assert ALERTMANAGER_PASSWORD.file_name == "alertmanager-password"


def test_the_credentials_command_creates_rotates_and_never_prints_a_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qkdops_cli.cli import main
    from stack_helpers import metro_fleet_yaml

    config = tmp_path / "links.yaml"
    config.write_text(metro_fleet_yaml(("metro-a",)))
    state = tmp_path / "state"
    assert main(["credentials", "--config", str(config)]) == 0
    first = capsys.readouterr().out
    names = {"pager-sink-token", "prometheus-password", "alertmanager-password", "victoria-metrics-password",
             "prometheus-web.yml", "alertmanager-web.yml"}
    assert {Path(line).name for line in first.split()} == names
    values = {name: (state / name).read_text() for name in names}
    assert main(["credentials", "--config", str(config)]) == 0 and "unchanged" in capsys.readouterr().out
    assert main(["credentials", "--config", str(config), "--rotate"]) == 0
    rotated = capsys.readouterr().out
    assert all((state / name).read_text() != values[name] for name in names) and "restart" in rotated
    printed = first + rotated
    assert not any((state / name).read_text().strip() in printed or values[name].strip() in printed for name in names if "web" not in name)
    assert credentials.web_config_matches(state / "prometheus-web.yml", (state / "prometheus-password").read_text().strip())
    assert main(["credentials", "--compose-dir", str(tmp_path / "compose")]) == 0
    assert {Path(line).name for line in capsys.readouterr().out.split()} == names | {"vmauth-config.yml"}
