"""The container image (Containerfile), built once per session with podman and used as a deployment uses it:
`--version`, the unprivileged uid, the labels, nothing of the build left in it; `db upgrade`, `connections add`
and `sync` against the fake API (served by this process on loopback) and a PostgreSQL database of the test's,
with the client secret in a file mounted read-only and, as on Kubernetes, a read-only root file system, no
capabilities and only /tmp writable; the daemon's /healthz and /metrics, and its stop on SIGTERM. Also: the lock
pins every runtime dependency with hashes, and the build context leaves out what it should.

podman runs here with runc and this machine's hard limits (a containers.conf written for the session), on a
base image made from Debian's packages with mmdebstrap (Python 3.11 from bookworm) when it is not there yet:
no registry is reached. Without podman (or without mmdebstrap while the base is missing) these tests skip,
unless ETL_REQUIRE_PODMAN=1 (.ci/run), when they fail.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from sqlalchemy import func, select

from etl.db.engine import make_engine
from etl.db.models import connections, permission_changes
from etl.fakeapi import FakeApi, serve, urls
from tests.conftest import MEASURED

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
VERSION = PYPROJECT["version"]
BASE = "localhost/debian-py:bookworm"
TAG = "localhost/smartcar-etl:test"
UID = 10001
SECRET_IN_IMAGE = "/run/secrets/smartcar-etl/client-secret"
REQUIRED = "ETL_REQUIRE_PODMAN"
# One build per session: every test of this module runs in one pytest-xdist worker (scripts/test.sh: loadgroup).
pytestmark = pytest.mark.xdist_group("image")
postgresql = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def unavailable(what: str) -> NoReturn:
    """Skip for want of ``what``, or fail where podman is required."""
    if os.environ.get(REQUIRED) == "1":
        pytest.fail(f"{REQUIRED}=1 but {what}")
    pytest.skip(what)


@dataclass
class Image:
    """The image built for this session, and podman's environment (its containers.conf)."""

    id: str
    env: dict[str, str]
    build_seconds: float

    def podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def run(self, *args: str, options: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        """``podman run --rm [options] IMAGE args``: the job's command line in a container that is then removed."""
        return self.podman("run", "--rm", *options, self.id, *args)

    def inspect(self) -> dict[str, object]:
        shown = self.podman("image", "inspect", self.id)
        assert shown.returncode == 0, shown.stderr
        [found] = json.loads(shown.stdout)
        assert isinstance(found, dict)
        return found


def containers_conf(directory: Path) -> Path:
    """runc, and the open-file and process limits this machine allows (crun, and raising them, fail here)."""
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    processes = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    processes = 32768 if processes == resource.RLIM_INFINITY else min(processes, 32768)
    path = directory / "containers.conf"
    path.write_text(f'[containers]\ndefault_ulimits = ["nofile={files}:{files}", "nproc={processes}:{processes}"]\n'
                    '[engine]\nruntime = "runc"\n')
    return path


def debian_mirror() -> str:
    """The Debian mirror apt uses here (a deb822 sources file), else Debian's own."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    found = re.search(r"^URIs:\s*(\S+)", sources.read_text(), flags=re.M) if sources.exists() else None
    return found.group(1) if found else "http://deb.debian.org/debian"


def make_base(env: dict[str, str]) -> None:
    """The base image, Debian bookworm's minimal system with python3, venv and CA certificates, unless it exists."""
    if subprocess.run(["podman", "image", "exists", BASE], env=env, timeout=60).returncode == 0:
        return
    if shutil.which("mmdebstrap") is None:
        unavailable(f"the base image {BASE} is missing and mmdebstrap, which makes it, is not installed")
    strap = subprocess.Popen(["mmdebstrap", "--quiet", "--variant=minbase",
                              "--include=python3,python3-venv,ca-certificates", "bookworm", "-", debian_mirror()],
                             stdout=subprocess.PIPE)
    imported = subprocess.run(["podman", "import", "--quiet", "--change", 'CMD ["/bin/bash"]', "-", BASE],
                              stdin=strap.stdout, env=env, capture_output=True, text=True, timeout=900)
    assert strap.stdout is not None
    strap.stdout.close()
    assert strap.wait(timeout=60) == 0 and imported.returncode == 0, imported.stderr


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The image, built from this checkout on the Debian base; its build time and size are recorded."""
    if shutil.which("podman") is None:
        unavailable("podman is not installed (apt-get install podman runc mmdebstrap)")
    directory = tmp_path_factory.mktemp("podman")
    env = {**os.environ, "CONTAINERS_CONF": str(containers_conf(directory))}
    make_base(env)
    iid = directory / "image-id"
    build = ["podman", "build", "--network=host", "--build-arg", f"BASE={BASE}", "--build-arg", f"VERSION={VERSION}",
             "--iidfile", str(iid), "-t", TAG]
    ca = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    if Path(ca).is_file():  # pip's CA bundle (outbound TLS may be re-signed), mounted for the build only
        build += ["-v", f"{ca}:{ca}:ro", "--build-arg", f"PIP_CERT={ca}"]
    started = time.monotonic()
    built = subprocess.run([*build, str(ROOT)], env=env, capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    assert built.returncode == 0, (built.stdout + built.stderr)[-3000:]
    return Image(iid.read_text().strip(), env, seconds)


def test_the_image_says_its_version_runs_as_10001_and_carries_its_labels(
        image: Image, record_property: Callable[[str, object], None]) -> None:
    found = image.inspect()
    size = int(found["Size"])  # type: ignore[call-overload]
    record_property(MEASURED + "image build (podman, Debian bookworm base, layer cache as found)",
                    f"{image.build_seconds:.1f} s")
    record_property(MEASURED + "image size", f"{size / 1e6:.0f} MB")
    version = image.run("--version")
    assert (version.returncode, version.stdout) == (0, f"smartcar-etl, version {VERSION}\n")
    assert VERSION == importlib.metadata.version("smartcar-etl")
    uid = image.run("-u", options=["--entrypoint", "id"])
    assert (uid.returncode, uid.stdout.strip()) == (0, str(UID))
    helped = image.run()  # CMD is --help
    assert helped.returncode == 0 and helped.stdout.startswith("Usage: smartcar-etl")
    config = found["Config"]
    assert isinstance(config, dict)
    assert (config["User"], config["WorkingDir"], config["Entrypoint"], config["Cmd"]) == (
        f"{UID}:{UID}", "/data", ["smartcar-etl"], ["--help"])
    labels = {k.removeprefix("org.opencontainers.image."): v for k, v in config["Labels"].items()}
    assert (labels["title"], labels["description"], labels["version"]) == ("smartcar-etl", PYPROJECT["description"],
                                                                            VERSION)
    assert {"source", "revision", "licenses"} <= labels.keys()


def test_nothing_of_the_build_is_left_in_the_image(image: Image) -> None:
    env = image.inspect()["Config"]["Env"]  # type: ignore[index]
    assert not [e for e in env if e.startswith(("PIP_", "VERSION="))], env
    history = image.podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image.id)
    assert history.returncode == 0 and "/opt/smartcar-etl" in history.stdout
    assert "PIP_CERT" not in history.stdout  # the build stage's steps are not the image's history
    tools = image.run("-c", "command -v gcc cc make pip pip3; /opt/smartcar-etl/bin/python -c 'import pip'",
                      options=["--entrypoint", "sh"])
    assert tools.stdout == "" and "No module named 'pip'" in tools.stderr
    writable = image.run("-c", "touch /data/x && touch /opt/smartcar-etl/x", options=["--entrypoint", "sh"])
    assert writable.returncode != 0 and "/opt/smartcar-etl/x" in writable.stderr  # only the working dir is its


@pytest.fixture
def secret_file(tmp_path: Path) -> Iterator[Path]:
    """The fake API's client secret in a file only the image's user may read (when this process may chown)."""
    path = tmp_path / "client-secret"
    path.write_text("secret-of-the-image-test-7d41\n")
    path.chmod(0o400)
    if os.geteuid() == 0:
        os.chown(path, UID, UID)
    else:
        path.chmod(0o444)  # rootless podman: the file is root's inside; the job then warns of its mode
    yield path


def job_options(db_url: str, root: str, secret: Path, fake: FakeApi) -> list[str]:
    """podman run's options for the job: the host's network (the fake API and PostgreSQL on 127.0.0.1), the
    Kubernetes securityContext of deploy/kubernetes, the secret mounted read-only and named by its variable."""
    api = urls(root)
    env = {"SMARTCAR_ETL_DATABASE_URL": db_url, "SMARTCAR_API_BASE_URL": api["base_url"],
           "SMARTCAR_TOKEN_URL": api["token_url"], "SMARTCAR_CLIENT_ID": fake.client_id,
           "SMARTCAR_ETL_API_CLIENT_SECRET_FILE": SECRET_IN_IMAGE}
    return ["--network=host", "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp", "--cap-drop=all",
            "--security-opt=no-new-privileges", "-v", f"{secret}:{SECRET_IN_IMAGE}:ro",
            *(f"--env={name}={value}" for name, value in env.items())]


@postgresql
def test_the_image_migrates_tracks_and_syncs_into_postgresql(image: Image, db_url: str, secret_file: Path) -> None:
    fake = FakeApi(client_id="image-test-client", client_secret=secret_file.read_text().strip())
    ids = fake.populate(3, seed=20)
    with serve(fake) as root:
        options = job_options(db_url, root, secret_file, fake)
        upgraded = image.run("db", "upgrade", options=options)
        assert upgraded.returncode == 0, upgraded.stderr
        added = image.run("connections", "add", *ids, options=options)
        assert added.returncode == 0, added.stderr
        synced = image.run("--log-format", "json", "sync", "--format", "json", options=options)
    assert synced.returncode == 0, synced.stderr
    outcome = json.loads(synced.stdout)
    assert (outcome["status"], outcome["fetched"]) == ("succeeded", 3)
    assert fake.count("POST", "/oauth2/token") >= 1 and fake.count("GET", "/v3/connections") >= 1
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert sorted(conn.scalars(select(connections.c.id))) == sorted(ids)
            assert (conn.scalar(select(func.count()).select_from(permission_changes)) or 0) > 0
    finally:
        engine.dispose()
    said = upgraded.stdout + upgraded.stderr + added.stdout + added.stderr + synced.stdout + synced.stderr
    assert fake.client_secret not in said
    assert ("open to its group or others" in said) is (os.geteuid() != 0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@postgresql
def test_the_image_daemon_serves_healthz_and_metrics_and_stops_on_sigterm(image: Image, db_url: str,
                                                                          secret_file: Path) -> None:
    fake = FakeApi(client_id="image-test-client", client_secret=secret_file.read_text().strip())
    ids = fake.populate(2, seed=21)
    name, port = f"smartcar-etl-test-{os.getpid()}", free_port()
    with serve(fake) as root:
        options = job_options(db_url, root, secret_file, fake)
        assert image.run("db", "upgrade", options=options).returncode == 0
        assert image.run("connections", "add", *ids, options=options).returncode == 0
        started = image.podman("run", "--detach", "--name", name, *options,
                               f"--env=SMARTCAR_ETL_DAEMON_METRICS_LISTEN=127.0.0.1:{port}", image.id,
                               "daemon", "--interval", "1h")
        assert started.returncode == 0, started.stderr
        try:
            metrics = ""
            deadline = time.monotonic() + 60
            while 'smartcar_etl_runs_total{application="default",status="succeeded"} 1.0' not in metrics:
                assert time.monotonic() < deadline, image.podman("logs", name).stderr[-2000:]
                time.sleep(0.5)
                try:
                    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                except httpx.TransportError:
                    continue
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            stopped = image.podman("stop", "--time", "30", name, timeout=60)
            waited = image.podman("wait", name, timeout=60)
            logs = image.podman("logs", name)
        finally:
            image.podman("rm", "--force", name)
    assert health.status_code == 200 and health.text.startswith("alive: the last firing was handled ")
    assert stopped.returncode == 0 and waited.stdout.strip() == "0", waited.stderr  # SIGTERM to PID 1: exit 0
    assert "daemon stopped" in logs.stderr and fake.count("GET", "/v3/connections") >= 1


# -- without podman: the lock and the build context -------------------------------------------------------------

def lock_entries() -> dict[str, tuple[str, int]]:
    """requirements/lock.txt: each package's pinned version and how many hashes it has."""
    entries: dict[str, tuple[str, int]] = {}
    current = None
    for line in (ROOT / "requirements" / "lock.txt").read_text(encoding="utf-8").splitlines():
        pinned = re.match(r"^([A-Za-z0-9._-]+)==(\S+) \\$", line)
        if pinned:
            current = canonicalize_name(pinned.group(1))
            entries[current] = (pinned.group(2), 0)
        elif current and re.match(r"^\s+--hash=sha256:[0-9a-f]{64}", line):
            entries[current] = (entries[current][0], entries[current][1] + 1)
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"requirements/lock.txt: an unexpected line {line!r}")
    return entries


def test_the_lock_pins_every_runtime_dependency_with_hashes_and_no_test_tool() -> None:
    entries = lock_entries()
    assert all(hashes >= 1 for _, hashes in entries.values()), entries
    for dependency in map(Requirement, PYPROJECT["dependencies"]):
        name = canonicalize_name(dependency.name)
        assert name in entries and dependency.specifier.contains(entries[name][0]), (dependency, entries.get(name))
        for extra in dependency.extras:  # psycopg[binary]: psycopg-binary
            assert canonicalize_name(f"{name}-{extra}") in entries
    for tool in map(Requirement, PYPROJECT["optional-dependencies"]["test"]):
        assert canonicalize_name(tool.name) not in entries, tool
    assert "PyMySQL>=1.1.1" in PYPROJECT["dependencies"]  # CVE-2024-36039
    assert "bash scripts/lock.sh" in (ROOT / "requirements" / "lock.txt").read_text(encoding="utf-8")


def test_the_build_context_leaves_out_checkouts_databases_and_virtualenvs() -> None:
    kept_out = (ROOT / ".containerignore").read_text(encoding="utf-8")
    assert (ROOT / ".dockerignore").read_text(encoding="utf-8") == kept_out
    patterns = {line for line in kept_out.splitlines() if line and not line.startswith("#")}
    assert {".git", ".venv*", "mutants", "*.db", "*.sqlite*", "dbt/target"} <= patterns
    containerfile = (ROOT / "Containerfile").read_text(encoding="utf-8")
    build, final = containerfile.split("\nFROM ${BASE}\n")
    assert "ARG BASE=python:3.12-slim\n\nFROM ${BASE} AS build\n" in build
    assert "ARG PIP_CERT" in build and "PIP_CERT" not in final  # the CA bundle is the build's alone
    assert "--require-hashes" in build and "--no-deps" in build
