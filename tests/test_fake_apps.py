"""The bundled fake API serves several applications on one address: each application's credentials give a token
that reaches only its own connections, each has its own token bucket, admin requests reach the application that
has the connection, and ``fake-api --applications N`` prints the variables that point the job at all of them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from etl.cli import cli
from etl.fakeapi import serve
from etl.fakeapps import FakeApplications, ids_file_for

LOOPBACK = "http://127.0.0.1:8765"


@pytest.fixture
def apps() -> FakeApplications:
    """Three applications, four connections each, with a clock that stands still (no bucket refills)."""
    world = FakeApplications.numbered(3, rate_limit=(5, 1.0), clock=lambda: 1000.0)
    world.populate(4, seed=7)
    return world


@pytest.fixture
def client(apps: FakeApplications) -> Iterator[httpx.Client]:
    """A client that reaches the applications through MockTransport, at a loopback address."""
    with httpx.Client(base_url=LOOPBACK, transport=httpx.MockTransport(apps.handle)) as c:
        yield c


def token(client: httpx.Client, client_id: str, client_secret: str) -> httpx.Response:
    return client.post("/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                              "client_secret": client_secret})


def bearer(client: httpx.Client, apps: FakeApplications, name: str) -> dict[str, str]:
    """An Authorization header with a token of application ``name``, from the token endpoint."""
    fake = apps.fakes[name]
    answer = token(client, fake.client_id, fake.client_secret)
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def listed(client: httpx.Client, headers: dict[str, str]) -> list[str]:
    answer = client.get("/v3/connections", params={"page[size]": "100"}, headers=headers)
    assert answer.status_code == 200, answer.text
    return [doc["id"] for doc in answer.json()["data"]]


# -- credentials and tokens ----------------------------------------------------------------------------------------

def test_each_applications_token_lists_only_its_own_connections(apps: FakeApplications, client: httpx.Client) -> None:
    for name in apps.names:
        assert sorted(listed(client, bearer(client, apps, name))) == sorted(apps.fakes[name].connections)
    assert apps.request_counts() == dict.fromkeys(apps.names, 2)  # its token request and its listing
    assert apps.foreign_requests == [] and apps.unrouted == []


def test_credentials_and_tokens_belong_to_one_application(apps: FakeApplications, client: httpx.Client) -> None:
    one, two = apps.fakes["app-1"], apps.fakes["app-2"]
    assert one.client_id == "fake-client-app-1" and len({f.client_secret for f in apps.fakes.values()}) == 3
    for client_id, secret in ((one.client_id, two.client_secret), ("fake-client-id", one.client_secret)):
        refused = token(client, client_id, secret)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    unknown = client.get("/v3/connections", headers={"Authorization": "Bearer fake-token-1-nobody"})
    assert unknown.status_code == 401 and unknown.json()["errors"][0]["code"] == "unauthorized"
    assert apps.unrouted == [("POST", "/oauth2/token"), ("GET", "/v3/connections")]
    assert apps.request_counts() == {"app-1": 1, "app-2": 0, "app-3": 0}  # app-1's id with app-2's secret


def test_a_token_asking_for_another_applications_connection_gets_404_and_is_recorded(
        apps: FakeApplications, client: httpx.Client) -> None:
    mine, theirs = next(iter(apps.fakes["app-1"].connections)), next(iter(apps.fakes["app-2"].connections))
    app_1 = bearer(client, apps, "app-1")
    assert client.get(f"/v3/connections/{mine}", headers=app_1).status_code == 200
    assert client.get("/v3/connections/0b5e9a52-3c77-4d8e-9a57-0a4c7f0e2b11", headers=app_1).status_code == 404
    assert apps.foreign_requests == []  # its own, and one nobody has, are not foreign
    foreign = client.get(f"/v3/connections/{theirs.upper()}", headers=app_1)
    assert foreign.status_code == 404 and foreign.json()["errors"][0]["code"] == "not_found"  # Smartcar's 404
    assert apps.foreign_requests == [("app-1", theirs.upper(), "app-2")]
    assert client.get(f"/v3/connections/{theirs}", headers=bearer(client, apps, "app-2")).status_code == 200
    assert len(apps.foreign_requests) == 1


def test_each_application_has_its_own_bucket(apps: FakeApplications, client: httpx.Client) -> None:
    app_1, app_2 = bearer(client, apps, "app-1"), bearer(client, apps, "app-2")
    statuses = [client.get("/v3/connections", headers=app_1).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]  # a bucket of 5, and the clock stands still
    assert [client.get("/v3/connections", headers=app_2).status_code for _ in range(5)] == [200] * 5
    assert (apps.fakes["app-1"].rate_limited, apps.fakes["app-2"].rate_limited, apps.rate_limited) == (1, 0, 1)
    assert client.get("/v3/connections", headers=app_2).status_code == 429
    assert apps.rate_limited == 2


# -- the admin endpoint ------------------------------------------------------------------------------------------

def test_admin_reaches_the_application_that_has_the_connection(apps: FakeApplications, client: httpx.Client) -> None:
    conn = next(iter(apps.fakes["app-2"].connections.values()))
    held = list(conn.permissions)
    revoked = client.post("/_admin/revoke", params={"connection": conn.id, "permission": held[0]})
    assert revoked.status_code == 200 and revoked.json()["permissions"] == held[1:]
    assert apps.fakes["app-2"].connections[conn.id].permissions == held[1:]
    assert client.post("/_admin/remove", params={"connection": conn.id}).json()["status"] == "disconnected"
    assert apps.owner(conn.id) == "app-2" and conn.id in apps.fakes["app-2"].removed
    restored = client.post("/_admin/restore", params={"connection": conn.id})
    assert restored.status_code == 200 and conn.id in apps.fakes["app-2"].connections


def test_admin_add_goes_to_the_named_application_or_the_first(apps: FakeApplications, client: httpx.Client) -> None:
    named = client.post("/_admin/add", params={"application": "app-3", "permission": "read_vin"}).json()["id"]
    assert apps.owner(named) == "app-3" and apps.fakes["app-3"].connections[named].permissions == ["read_vin"]
    assert named in listed(client, bearer(client, apps, "app-3"))
    first = client.post("/_admin/add").json()["id"]
    assert apps.owner(first) == "app-1"
    taken = next(iter(apps.fakes["app-1"].connections))
    clash = client.post("/_admin/add", params={"application": "app-2", "connection": taken})
    assert clash.status_code == 409 and clash.json()["error"] == f"connection {taken} exists already (in app-1)"
    assert apps.owner(taken) == "app-1" and taken not in apps.fakes["app-2"].connections


def test_admin_refuses_an_unknown_application_by_name(apps: FakeApplications, client: httpx.Client) -> None:
    before = {name: len(fake.connections) for name, fake in apps.fakes.items()}
    unknown = client.post("/_admin/add", params={"application": "app-9"})
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "application='app-9' is not one of the applications (app-1, app-2, app-3)"
    foreign = apps.handle(httpx.Request("POST", "https://api.test/_admin/add", params={"application": "app-9"}))
    assert foreign.status_code == 403  # not for the loopback address: refused before anything else is said
    missing = client.post("/_admin/remove", params={"connection": "0b5e9a52-3c77-4d8e-9a57-0a4c7f0e2b11"})
    assert missing.status_code == 404 and "no connection 0b5e9a52" in missing.json()["error"]
    assert {name: len(fake.connections) for name, fake in apps.fakes.items()} == before


# -- the worlds ----------------------------------------------------------------------------------------------------

def test_populated_ids_never_collide_and_the_seed_repeats_the_worlds() -> None:
    apps = FakeApplications.numbered(5)
    ids = apps.populate(40, seed=3)
    every = [cid for name in apps.names for cid in ids[name]]
    assert list(ids) == apps.names and len(every) == len(set(every)) == 200
    assert all(apps.owner(cid) == name for name in apps.names for cid in ids[name])
    assert FakeApplications.numbered(5).populate(40, seed=3) == ids
    assert set(FakeApplications.numbered(5).populate(40, seed=4)["app-1"]).isdisjoint(every)


def test_populate_refuses_an_id_another_application_has_and_changes_nothing() -> None:
    expected = FakeApplications.numbered(2).populate(3, seed=1)
    apps = FakeApplications.numbered(2)
    apps.fakes["app-2"].add(connection_id=expected["app-1"][1])
    with pytest.raises(ValueError, match=f"connection {expected['app-1'][1]} of app-1 is app-2's already"):
        apps.populate(3, seed=1)
    assert (len(apps.fakes["app-1"].connections), len(apps.fakes["app-2"].connections)) == (0, 1)


@pytest.mark.parametrize("names", [[], ["app-1", "app-1"], ["App-1"], ["app_1"], ["-app"]])
def test_application_names_are_distinct_and_fit_a_variable_name(names: list[str]) -> None:
    with pytest.raises(ValueError, match="application names"):
        FakeApplications(names)


def test_the_environment_names_each_applications_credentials_and_bucket() -> None:
    apps = FakeApplications.numbered(2, rate_limit=(120, 2 / 60))
    env = apps.environment("http://127.0.0.1:9")
    assert list(env.items())[:7] == [
        ("SMARTCAR_API_BASE_URL", "http://127.0.0.1:9/v3"), ("SMARTCAR_TOKEN_URL", "http://127.0.0.1:9/oauth2/token"),
        ("SMARTCAR_ETL_APPLICATIONS_APP_1_CLIENT_ID", "fake-client-app-1"),
        ("SMARTCAR_ETL_APPLICATIONS_APP_1_CLIENT_SECRET_VARIABLE", "FAKE_APP_1_CLIENT_SECRET"),
        ("FAKE_APP_1_CLIENT_SECRET", apps.fakes["app-1"].client_secret),
        ("SMARTCAR_ETL_APPLICATIONS_APP_1_RATE_LIMIT_CAPACITY", "120"),
        ("SMARTCAR_ETL_APPLICATIONS_APP_1_RATE_LIMIT_PER_MINUTE", "2")]
    assert env["FAKE_APP_2_CLIENT_SECRET"] == apps.fakes["app-2"].client_secret and len(env) == 12
    assert "SMARTCAR_ETL_APPLICATIONS_APP_1_RATE_LIMIT_CAPACITY" not in FakeApplications.numbered(2).environment("x")


def test_ids_files_are_named_for_their_application() -> None:
    assert ids_file_for("ids.txt", "app-1") == "ids-app-1.txt"
    assert ids_file_for("ids", "app-2") == "ids-app-2"
    assert ids_file_for("out/world.ids.txt", "app-3") == str(Path("out/world.ids-app-3.txt"))


# -- on loopback, and the command ------------------------------------------------------------------------------------

def test_the_applications_served_on_loopback_keep_their_connections_apart(apps: FakeApplications) -> None:
    with serve(apps) as root, httpx.Client(base_url=root, timeout=10) as client:
        headers = {name: bearer(client, apps, name) for name in apps.names}
        for name in apps.names:
            assert sorted(listed(client, headers[name])) == sorted(apps.fakes[name].connections)
        theirs = next(iter(apps.fakes["app-3"].connections))
        assert client.get(f"/v3/connections/{theirs}", headers=headers["app-1"]).status_code == 404
        added = client.post("/_admin/add", params={"application": "app-2"})
        assert added.status_code == 200 and apps.owner(added.json()["id"]) == "app-2"
    assert apps.foreign_requests == [("app-1", theirs, "app-3")]


def start_fake_api(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "etl", "fake-api", "--port", "0", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(server: subprocess.Popen[str]) -> None:
    server.terminate()
    server.communicate(timeout=10)


def test_fake_api_serves_three_applications_with_the_exports_it_prints(tmp_path: Path) -> None:
    server = start_fake_api(tmp_path, "--applications", "3", "--connections", "2", "--ids-file", "ids.txt",
                            "--rate-limit", "120/2")
    try:
        assert server.stdout is not None and server.stderr is not None
        lines = [server.stdout.readline() for _ in range(2 + 3 * 5)]
        said = server.stderr.readline()
        env = dict(line.removeprefix("export ").strip().split("=", 1) for line in lines)
        seen: set[str] = set()
        with httpx.Client(timeout=10) as client:
            for n in (1, 2, 3):
                prefix = f"SMARTCAR_ETL_APPLICATIONS_APP_{n}_"
                assert (env[prefix + "RATE_LIMIT_CAPACITY"], env[prefix + "RATE_LIMIT_PER_MINUTE"]) == ("120", "2")
                got = client.post(env["SMARTCAR_TOKEN_URL"], data={
                    "grant_type": "client_credentials", "client_id": env[prefix + "CLIENT_ID"],
                    "client_secret": env[env[prefix + "CLIENT_SECRET_VARIABLE"]]})
                assert got.status_code == 200, got.text
                listing = client.get(env["SMARTCAR_API_BASE_URL"] + "/connections",
                                     headers={"Authorization": f"Bearer {got.json()['access_token']}"})
                ids = [doc["id"] for doc in listing.json()["data"]]
                assert sorted(ids) == sorted((tmp_path / f"ids-app-{n}.txt").read_text().split())
                assert len(ids) == 2 and seen.isdisjoint(ids)
                seen.update(ids)
    finally:
        stop(server)
    assert all(line.startswith("export ") for line in lines) and len(env) == 17
    assert said.startswith("# 3 applications of 2 connections each, their ids in ids-app-1.txt, ids-app-2.txt, "
                           "ids-app-3.txt;")
    assert not (tmp_path / "ids.txt").exists()


def test_fake_api_with_one_application_prints_what_it_always_did(tmp_path: Path) -> None:
    server = start_fake_api(tmp_path, "--applications", "1", "--connections", "1")
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline().strip() for _ in range(4)]
    finally:
        stop(server)
    root = lines[0].removeprefix("export SMARTCAR_API_BASE_URL=").removesuffix("/v3")
    assert root.startswith("http://127.0.0.1:") and lines[1:] == [
        f"export SMARTCAR_TOKEN_URL={root}/oauth2/token", "export SMARTCAR_CLIENT_ID=fake-client-id",
        "export SMARTCAR_CLIENT_SECRET=fake-client-secret"]


@pytest.mark.parametrize(("args", "said"), [
    (["--applications", "0"], "--applications"), (["--applications", "101"], "--applications"),
    (["--applications", "3", "--connections", "4000000"], "at most 10,000,000 connections in all"),
])
def test_fake_api_refuses_applications_out_of_range(args: list[str], said: str) -> None:
    result = CliRunner().invoke(cli, ["fake-api", "--port", "0", *args])
    assert result.exit_code == 2 and said in result.output


def test_fake_api_help_shows_an_example_with_three_applications() -> None:
    text = CliRunner().invoke(cli, ["fake-api", "--help"]).output
    example = text[text.index("Example:"):]
    assert "smartcar-etl fake-api --applications 3 " in example and "ids-app-1.txt" in example
