"""A dashboard only its owner can use: the token, the Host check, ``--allow-remote`` and the
private log folder, checked with real HTTP requests against a real Voila.

One Voila (serving a one-cell notebook, no preheated kernel) is shared by the module; the
``--allow-remote`` case starts ``psal dashboard`` itself. No model is loaded.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from psal_widgets import dashboard
from psal_widgets.dashboard_auth import REFUSED
from psal_widgets.dashboard_security import PrivateFileError, open_private, private_root

TINY_NOTEBOOK = {
    "cells": [{"cell_type": "code", "execution_count": None, "id": "tiny", "metadata": {}, "outputs": [],
               "source": ["print('tiny page ' + str(6 * 7))"]}],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                 "language_info": {"name": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}
KERNEL = str(uuid.UUID(int=1))  # a kernel id that exists nowhere: auth is checked before the lookup


def request(port: int, path: str, *, host: str | None = None, headers: dict[str, str] | None = None,
            address: str = "127.0.0.1") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(address, port, timeout=120)
    try:
        conn.request("GET", path, headers={**({"Host": host} if host else {}), **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def websocket_handshake(port: int, path: str, *, host: str | None = None) -> int:
    """Status of a websocket upgrade request (101 would mean a kernel channel opened)."""
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    return request(port, path, host=host, headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13", "Origin": f"http://{host or f'127.0.0.1:{port}'}"})[0]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A victim file and a symlink to it at the log's old, predictable name."""
    folder = tmp_path_factory.mktemp("victim")
    victim = folder / "precious.txt"
    victim.write_text("keep me\n")
    port = dashboard.free_port()
    old_name = Path(tempfile.gettempdir()) / f"psal-dashboard-{port}.log"
    if old_name.exists() or old_name.is_symlink():
        pytest.skip(f"{old_name} exists already")
    old_name.symlink_to(victim)
    try:
        yield port, victim, old_name
    finally:
        old_name.unlink()


@pytest.fixture(scope="module")
def server(planted, tmp_path_factory):
    port, _victim, _old = planted
    folder = tmp_path_factory.mktemp("served")
    nb = folder / "tiny.ipynb"
    nb.write_text(json.dumps(TINY_NOTEBOOK))
    cache = folder / "cache"
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        dash = dashboard.launch(port=port, notebook=nb, check=False, preheat=False, quiet=True, timeout=120)
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old
    try:
        yield dash
    finally:
        dash.stop()


def test_printed_url_carries_a_random_token_kept_off_the_command_line(server) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}/?token={server.token}"
    assert len(server.token) >= 40  # secrets.token_urlsafe(32)
    # `ps` shows every user a process's command line; the token travels in the environment.
    assert not any(server.token in arg for arg in server.command)
    assert "--Voila.ip=127.0.0.1" in server.command


@pytest.mark.parametrize("path", [
    "/",
    "/login",
    f"/api/kernels/{KERNEL}",
    "/voila/api/shutdown/x",
])
def test_requests_without_the_token_are_refused(server, path) -> None:
    status, body = request(server.port, path)
    assert status == 403, (path, status, body[:200])
    assert b"tiny page" not in body


def test_a_wrong_token_is_refused(server) -> None:
    status, _ = request(server.port, f"/api/kernels/{KERNEL}?token={server.token[::-1]}")
    assert status == 403


def test_refusal_names_the_fix(server) -> None:
    status, body = request(server.port, f"/api/kernels/{KERNEL}")
    assert status == 403 and json.loads(body)["message"] == REFUSED
    status, body = request(server.port, "/")  # the page: an HTML error page with the same words
    assert status == 403 and "psal dashboard" in body.decode()
    assert "Uncaught exception" not in Path(server.log_path).read_text(errors="replace")


def test_kernel_websocket_needs_the_token(server) -> None:
    assert websocket_handshake(server.port, f"/api/kernels/{KERNEL}/channels") == 403
    # With the token the request gets past authentication: the kernel id is unknown (404).
    assert websocket_handshake(server.port, f"/api/kernels/{KERNEL}/channels?token={server.token}") == 404


def test_the_token_opens_the_page_and_an_api_route(server) -> None:
    status, body = request(server.port, f"/?token={server.token}")
    assert status == 200 and b"tiny page 42" in body
    # Authorization header (as Jupyter's API clients send it): past auth, unknown kernel.
    assert request(server.port, f"/api/kernels/{KERNEL}", headers={"Authorization": f"token {server.token}"})[0] == 404


def test_voila_file_route_serves_nothing(server, tmp_path) -> None:
    # Voila serves images of the notebook's folder under /voila/files/ without any token.
    (Path(server.notebook).parent / "secret.png").write_bytes(b"\x89PNG private")
    for query in ("", f"?token={server.token}"):
        assert request(server.port, f"/voila/files/secret.png{query}")[0] == 403


@pytest.mark.parametrize("host", ["attacker.example", "127.0.0.1.attacker.example", "10.0.0.8"])
def test_foreign_host_header_is_refused_even_with_the_token(server, host) -> None:
    # DNS rebinding: a page of attacker.example whose name now resolves to 127.0.0.1.
    status, body = request(server.port, f"/?token={server.token}", host=f"{host}:{server.port}")
    assert status == 403 and b"tiny page" not in body
    assert request(server.port, f"/api/kernels/{KERNEL}?token={server.token}", host=host)[0] == 403
    assert websocket_handshake(server.port, f"/api/kernels/{KERNEL}/channels?token={server.token}",
                               host=f"{host}:{server.port}") == 403


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
def test_loopback_host_headers_are_accepted(server, host) -> None:
    assert request(server.port, f"/api/kernels/{KERNEL}?token={server.token}", host=f"{host}:{server.port}")[0] == 404


def test_log_goes_to_a_private_folder_and_the_planted_symlink_is_not_followed(server, planted) -> None:
    _port, victim, old_name = planted
    assert victim.read_text() == "keep me\n"  # the old, predictable name was a trap
    assert old_name.is_symlink()
    log = Path(server.log_path)
    assert log != old_name and "Voila" in log.read_text(errors="replace")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700  # the run's own folder
    assert stat.S_IMODE(log.parent.parent.stat().st_mode) == 0o700  # psal_widgets/run
    # (tornado's warnings quote request URLs, token included: one more reason for 0600.)


def test_a_symlinked_private_folder_is_refused(tmp_path, monkeypatch) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    cache = tmp_path / "cache"
    (cache / "psal_widgets").mkdir(parents=True)
    (cache / "psal_widgets" / "run").symlink_to(victim, target_is_directory=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    with pytest.raises(PrivateFileError, match="not a plain folder"):
        private_root()
    with pytest.raises(PrivateFileError):
        dashboard.launch(check=False, quiet=True, notebook=dashboard.find_notebook())
    assert list(victim.iterdir()) == []


def test_an_open_private_folder_is_closed_to_others(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "psal_widgets" / "run").mkdir(parents=True, mode=0o777)
    os.chmod(tmp_path / "psal_widgets" / "run", 0o777)
    assert stat.S_IMODE(private_root().stat().st_mode) == 0o700


def test_a_chosen_log_path_that_is_a_symlink_is_refused(tmp_path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    link = tmp_path / "voila.log"
    link.symlink_to(victim)
    with pytest.raises(PrivateFileError, match="symbolic link"):
        open_private(link, exclusive=False)
    with pytest.raises(PrivateFileError, match="symbolic link"):
        dashboard.launch(check=False, quiet=True, log_path=link)
    assert victim.read_text() == "keep me\n"
    with pytest.raises(PrivateFileError, match="exists already"):
        open_private(victim)


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
            addr = sock.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def test_loopback_only_by_default(server) -> None:
    addr = _outward_address()
    if addr is None:
        pytest.skip("no non-loopback address on this machine")
    with pytest.raises(OSError):
        socket.create_connection((addr, server.port), timeout=5).close()


def test_allow_remote_serves_every_interface_still_with_the_token(tmp_path) -> None:
    port = dashboard.free_port("0.0.0.0")
    cmd = [sys.executable, "-m", "psal_widgets.cli", "dashboard", "--port", str(port), "--no-preheat",
           "--allow-remote"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(tmp_path)})
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/?token=" in first, first
        token = first.split("?token=", 1)[1].split()[0]
        warning = proc.stderr.readline()
        assert "warning" in warning and "--allow-remote" in warning and "every network interface" in warning
        # Any Host header now (a name on the network), but never without the token.
        assert request(port, f"/api/kernels/{KERNEL}?token={token}", host="attacker.example")[0] == 404
        assert request(port, f"/api/kernels/{KERNEL}", host="attacker.example")[0] == 403
        assert request(port, "/")[0] == 403
        addr = _outward_address()
        if addr is not None:  # reachable from the network
            assert request(port, f"/api/kernels/{KERNEL}?token={token}", address=addr)[0] == 404
            assert request(port, f"/api/kernels/{KERNEL}", address=addr)[0] == 403
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "big"])
def test_bad_upload_limit_is_refused_at_parse_time(value) -> None:
    run = subprocess.run([sys.executable, "-m", "psal_widgets.cli", "dashboard", "--upload-limit", value],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "--upload-limit" in run.stderr and "positive size in MB" in run.stderr
    assert "http://" not in run.stdout


def test_launch_options_reach_voila_and_the_kernel_through_the_environment(tmp_path) -> None:
    env = dashboard.dashboard_env(export_dir="exports", upload_limit=5_000_000, token="t0k",
                                  base={"JUPYTER_TOKEN": "inherited", "JUPYTER_TOKEN_FILE": "/x"})
    assert env["JUPYTER_TOKEN"] == "t0k" and "JUPYTER_TOKEN_FILE" not in env
    assert env["PSAL_EXPORT_DIR"] == str(Path("exports").resolve())
    assert env["PSAL_UPLOAD_LIMIT"] == "5000000"
    # Without a token nothing inherited stands in for one.
    assert "JUPYTER_TOKEN" not in dashboard.dashboard_env(base={"JUPYTER_TOKEN": "inherited"})
