"""The bundled fake API for rehearsals: its admin endpoint changes its world while it runs, and ``fake-api``
on a port already in use is one line and exit 2."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from etl.cli import cli
from etl.db.models import connections, permission_changes
from etl.fakeapi import FakeApi
from tests.conftest import Runner
from tests.test_operations import Procs, tracked_world

LOOPBACK = "http://127.0.0.1:8765"


@pytest.fixture
def admin(fake_api: FakeApi) -> Iterator[httpx.Client]:
    """A client that reaches the fake's admin endpoint through MockTransport, at a loopback address."""
    with httpx.Client(base_url=LOOPBACK, transport=httpx.MockTransport(fake_api.handle)) as client:
        yield client


def shown(fake: FakeApi, connection_id: str) -> httpx.Response:
    """What the API answers for the connection, with a token from the fake's token endpoint."""
    token = fake.handle(httpx.Request("POST", "https://auth.test/oauth2/token", data={
        "grant_type": "client_credentials", "client_id": fake.client_id, "client_secret": fake.client_secret}))
    return fake.handle(httpx.Request("GET", f"https://api.test/v3/connections/{connection_id}",
                                     headers={"Authorization": f"Bearer {token.json()['access_token']}"}))


def changes(engine: Engine, connection_id: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(permission_changes.c.change, permission_changes.c.permission)
                            .where(permission_changes.c.connection_id == connection_id)
                            .order_by(permission_changes.c.id))
        return [(row.change, row.permission) for row in rows]


def status_of(engine: Engine, connection_id: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(connections.c.status).where(connections.c.id == connection_id)).scalar_one())


# -- the admin endpoint, through FakeApi.handle -------------------------------------------------------------------

def test_admin_revokes_grants_removes_restores_and_adds(fake_api: FakeApi, admin: httpx.Client) -> None:
    conn = fake_api.add(permissions=["read_odometer", "read_vin"])
    revoked = admin.post("/_admin/revoke", params={"connection": conn.id, "permission": "read_vin"})
    assert revoked.status_code == 200
    assert revoked.json() == {"id": conn.id, "status": "connected", "permissions": ["read_odometer"], "changed": True}
    assert shown(fake_api, conn.id).json()["data"]["attributes"]["permissions"] == ["read_odometer"]
    again = admin.post("/_admin/revoke", params={"connection": conn.id, "permission": "read_vin"})
    assert again.status_code == 200 and again.json()["changed"] is False

    granted = admin.post("/_admin/grant", params={"connection": conn.id.upper(), "permission": "control_charge"})
    assert granted.json()["permissions"] == ["read_odometer", "control_charge"]

    assert admin.post("/_admin/remove", params={"connection": conn.id}).json()["status"] == "disconnected"
    gone = shown(fake_api, conn.id)
    assert gone.status_code == 404 and gone.json()["errors"][0]["code"] == "not_found"  # Smartcar's own 404
    refused = admin.post("/_admin/grant", params={"connection": conn.id, "permission": "read_vin"})
    assert refused.status_code == 409 and "/_admin/restore" in refused.json()["error"]

    restored = admin.post("/_admin/restore", params={"connection": conn.id})
    assert restored.json() == {"id": conn.id, "status": "connected", "permissions": ["read_odometer", "control_charge"],
                               "changed": True}
    assert shown(fake_api, conn.id).status_code == 200

    added = admin.post("/_admin/add", params=[("permission", "read_battery"), ("permission", "read_charge")])
    new_id = added.json()["id"]
    assert added.status_code == 200 and fake_api.connections[new_id].permissions == ["read_battery", "read_charge"]
    assert shown(fake_api, new_id).json()["data"]["attributes"]["permissions"] == ["read_battery", "read_charge"]
    assert fake_api.count("POST", "/_admin/") == 0  # not API traffic: not in the fake's request log


@pytest.mark.parametrize(("method", "path", "params", "status", "said"), [
    ("POST", "/_admin/revoke", {"connection": "not-a-uuid", "permission": "read_vin"}, 400, "is not a UUID"),
    ("POST", "/_admin/revoke", {"permission": "read_vin"}, 400, "connection= must be"),
    ("POST", "/_admin/grant", {"connection": "KNOWN", "permission": "read vin\n"}, 400, "not a permission name"),
    ("POST", "/_admin/grant", {"connection": "KNOWN"}, 400, "permission= missing"),
    ("POST", "/_admin/revoke", {"connection": "0b5e9a52-3c77-4d8e-9a57-0a4c7f0e2b11", "permission": "read_vin"},
     404, "no connection 0b5e9a52"),
    ("POST", "/_admin/add", {"connection": "KNOWN"}, 409, "exists already"),
    ("POST", "/_admin/explode", {}, 404, "the verbs are revoke, grant, remove, restore, add"),
    ("GET", "/_admin/revoke", {"connection": "KNOWN", "permission": "read_vin"}, 405, "use POST"),
])
def test_admin_says_what_is_wrong(fake_api: FakeApi, admin: httpx.Client, method: str, path: str,
                                  params: dict[str, str], status: int, said: str) -> None:
    known = fake_api.add(permissions=["read_vin"]).id
    answer = admin.request(method, path, params={k: known if v == "KNOWN" else v for k, v in params.items()})
    assert answer.status_code == status and said in answer.json()["error"]
    assert fake_api.connections[known].permissions == ["read_vin"]


@pytest.mark.parametrize(("url", "headers"), [
    ("https://api.test/_admin/remove", {}),  # addressed to a host that is not loopback (DNS rebinding)
    (f"{LOOPBACK}/_admin/remove", {"Origin": "https://evil.example"}),  # a page in a browser
])
def test_admin_refuses_requests_not_for_the_loopback_address_or_from_a_browser(
        fake_api: FakeApi, url: str, headers: dict[str, str]) -> None:
    conn = fake_api.add()
    answer = fake_api.handle(httpx.Request("POST", url, params={"connection": conn.id}, headers=headers))
    assert answer.status_code == 403 and "loopback" in answer.json()["error"]
    assert conn.id in fake_api.connections


def test_admin_needs_no_api_token_and_no_scripted_fault_touches_it(fake_api: FakeApi, admin: httpx.Client) -> None:
    conn = fake_api.add(permissions=["read_vin"])
    fake_api.fail_next(503, times=5)  # for the next API requests, not for the admin endpoint
    answer = admin.post("/_admin/revoke", params={"connection": conn.id, "permission": "read_vin"})
    assert answer.status_code == 200 and fake_api.connections[conn.id].permissions == []
    assert fake_api.faults[0].times == 5


def test_a_sync_after_admin_changes_records_the_revocation_and_the_disconnection(
        run_sync: Runner, engine: Engine, admin: httpx.Client) -> None:
    fake = run_sync.fake
    first, second = tracked_world(fake, engine, 2)
    held = list(fake.connections[first].permissions)
    run_sync()
    admin.post("/_admin/revoke", params={"connection": first, "permission": held[0]}).raise_for_status()
    admin.post("/_admin/remove", params={"connection": second}).raise_for_status()
    still = list(fake.removed[second].permissions)
    result = run_sync()
    assert (result.counts.revoked, result.counts.deleted) == (1 + len(still), 1)
    assert changes(engine, first)[-1] == ("revoked", held[0])
    assert status_of(engine, second) == "deleted"
    assert sorted(changes(engine, second)[-len(still):]) == sorted(("revoked", p) for p in still)


# -- the admin endpoint on the real loopback server, with `python -m etl sync` ----------------------------------

def run_etl(procs: Procs, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "etl", *args, "--format", "json"], env=procs.env, cwd=procs.cwd,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_served_admin_endpoint_drives_a_sync_subprocess(engine: Engine, api_server: dict[str, str],
                                                              fake_api: FakeApi, tmp_path: Path) -> None:
    procs = Procs(engine, api_server, fake_api, tmp_path)
    root = api_server["base_url"].removesuffix("/v3")
    first, second = tracked_world(fake_api, engine, 2)
    held = list(fake_api.connections[first].permissions)
    assert run_etl(procs, "sync")["fetched"] == 2
    revoked = httpx.post(f"{root}/_admin/revoke", params={"connection": first, "permission": held[-1]}, timeout=10)
    assert revoked.status_code == 200 and held[-1] not in revoked.json()["permissions"]
    assert httpx.post(f"{root}/_admin/remove", params={"connection": second}, timeout=10).status_code == 200
    rebound = httpx.post(f"{root}/_admin/restore", params={"connection": second}, timeout=10,
                         headers={"Host": "rebound.example"})  # how a DNS-rebinding page's request arrives
    assert rebound.status_code == 403 and second in fake_api.removed
    outcome = run_etl(procs, "sync", "--all")
    assert (outcome["revoked"], outcome["deleted"]) == (1 + len(fake_api.removed[second].permissions), 1)
    assert changes(engine, first)[-1] == ("revoked", held[-1])
    assert status_of(engine, second) == "deleted"


# -- fake-api on a port in use --------------------------------------------------------------------------------------

def test_fake_api_on_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["fake-api", "--port", str(port), "--ids-file", str(tmp_path / "ids.txt")])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"Error: fake-api --port: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(--port 0 takes a free one)"]
    assert result.stdout == "" and not (tmp_path / "ids.txt").exists()


def test_fake_api_help_shows_the_admin_endpoint_with_an_example() -> None:
    text = CliRunner().invoke(cli, ["fake-api", "--help"]).output
    assert "/_admin/revoke" in text and "/_admin/remove" in text and "/_admin/add" in text
    example = text[text.index("Example:"):]
    assert 'curl -X POST "http://127.0.0.1:8765/_admin/revoke?connection=' in example
    assert "smartcar-etl sync --all" in example
