"""The Kubernetes manifests in deploy/kubernetes, as shipped and as `kubectl kustomize` renders them: valid
against the Kubernetes API schemas (kubernetes-validate from .venv-k8s, offline and strict, for 1.29, the oldest
they are written for, and 1.37), and what they promise, read from the YAML: every container locked down
(non-root as the image's user, read-only root with /tmp an emptyDir, no privilege escalation, no capabilities,
RuntimeDefault seccomp) with requests and limits; the image named once; the CronJobs' overlap, deadline, history
and failure policies; one CronJob per application; the daemon's metrics port and /healthz probe; ConfigMaps that
the job loads; command lines that the job's own parser takes.

The schema checks skip without kubectl or .venv-k8s (scripts/k8s.sh builds it), unless ETL_REQUIRE_K8S_VALIDATE=1
(.ci/run), when they fail.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from apscheduler.triggers.cron import CronTrigger

from etl.config import KEYS, load_config
from etl.errors import ConfigError
from etl.liveness import longest_cron_gap
from tests.test_deploy import parses

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
VALIDATOR = ROOT / ".venv-k8s" / "bin" / "kubernetes-validate"
VERSIONS = ("1.29.0", "1.37.0")
REQUIRED = "ETL_REQUIRE_K8S_VALIDATE"
UID = int(re.findall(r"^USER (\d+):\d+$", (ROOT / "Containerfile").read_text(), flags=re.M)[-1])
WORKLOADS = ("Job", "CronJob", "Deployment")
SECRETS = "/run/secrets/smartcar-etl/"
# The kustomizations a user applies (the others are components and the shared configuration of the two below).
APPLIED = {"one application": KUBE, "several applications, a CronJob each": KUBE / "several-applications" / "cronjobs",
           "several applications, two daemons": KUBE / "several-applications" / "daemons"}


def manifests() -> list[Path]:
    """Every manifest shipped (the kustomization files are kustomize's, not the API's)."""
    return sorted(p for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def shipped() -> list[dict[str, Any]]:
    return [d for path in manifests() for d in documents(path.read_text(encoding="utf-8"))]


def unavailable(what: str) -> NoReturn:
    if os.environ.get(REQUIRED) == "1":
        pytest.fail(f"{REQUIRED}=1 but {what}")
    pytest.skip(what)


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return spec["template"]["spec"]  # type: ignore[no-any-return]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = pod_spec(doc)
    return [*pod.get("initContainers", []), *pod["containers"]]


def config_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [configmap] = [d for d in docs if d["kind"] == "ConfigMap"]
    return yaml.safe_load(configmap["data"]["config.yaml"])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What `kubectl kustomize` makes of each kustomization a user applies, and of the one application with the
    daemon component in place of the CronJob's."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl is not installed: it renders the kustomizations")
    copy = tmp_path_factory.mktemp("kube") / "kubernetes"
    shutil.copytree(KUBE, copy)
    kustomization = copy / "kustomization.yaml"
    text = kustomization.read_text(encoding="utf-8")
    assert "  - sync-cronjob\n  # - daemon " in text
    kustomization.write_text(text.replace("  - sync-cronjob\n  # - daemon ", "  - daemon\n  # "))
    out = {}
    for name, directory in {**APPLIED, "one application, the daemon": copy}.items():
        made = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        out[name] = made.stdout
    return out


def validate(paths: list[Path]) -> tuple[int, list[str]]:
    """kubernetes-validate, strict, against each version: its exit code and its lines."""
    if not VALIDATOR.exists():
        unavailable(f"{VALIDATOR.relative_to(ROOT)} is missing (bash scripts/k8s.sh builds it)")
    versions = [arg for version in VERSIONS for arg in ("-k", version)]
    done = subprocess.run([str(VALIDATOR), "--strict", *versions, *map(str, paths)], capture_output=True, text=True,
                          timeout=300)
    return done.returncode, done.stdout.splitlines()


def assert_valid(paths: list[Path], resources: int) -> None:
    code, lines = validate(paths)
    assert code == 0, "\n".join(line for line in lines if not line.startswith("INFO"))
    # A kind or apiVersion without a schema is only a warning to the validator: here every one must have passed.
    assert [line for line in lines if not line.startswith("INFO ")] == []
    assert len(lines) == resources * len(VERSIONS)


# -- against the Kubernetes schemas --------------------------------------------------------------------------------

def test_every_manifest_as_shipped_passes_the_kubernetes_schemas() -> None:
    assert len(manifests()) >= 10
    assert_valid(manifests(), len(shipped()))


def test_every_kustomization_renders_and_passes_the_kubernetes_schemas(rendered: dict[str, str],
                                                                       tmp_path: Path) -> None:
    paths = []
    for n, text in enumerate(rendered.values()):
        paths.append(tmp_path / f"rendered-{n}.yaml")
        paths[-1].write_text(text)
    kinds = {name: sorted(d["kind"] for d in documents(text)) for name, text in rendered.items()}
    assert kinds == {"one application": ["ConfigMap", "CronJob", "Job"],
                     "several applications, a CronJob each": ["ConfigMap", "CronJob", "CronJob", "Job"],
                     "several applications, two daemons": ["ConfigMap", "Deployment", "Job", "PodDisruptionBudget"],
                     "one application, the daemon": ["ConfigMap", "Deployment", "Job"]}
    assert_valid(paths, sum(map(len, kinds.values())))


def test_the_schema_check_finds_a_misspelt_field_and_a_wrong_type(tmp_path: Path) -> None:
    cronjob = yaml.safe_load((KUBE / "sync-cronjob" / "cronjob.yaml").read_text())
    cronjob["spec"]["jobTemplate"]["spec"]["backofLimit"] = 2
    (tmp_path / "misspelt.yaml").write_text(yaml.safe_dump(cronjob))
    cronjob = yaml.safe_load((KUBE / "sync-cronjob" / "cronjob.yaml").read_text())
    cronjob["spec"]["startingDeadlineSeconds"] = "five minutes"
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(cronjob))
    code, lines = validate([tmp_path / "misspelt.yaml", tmp_path / "wrong.yaml"])
    assert code == 1 and [line.split(": ", 1)[0].split()[0] for line in lines] == ["ERROR"] * 4
    assert "backofLimit" in lines[0] and "startingDeadlineSeconds" in lines[2]


# -- what the manifests promise, read from the YAML ------------------------------------------------------------------

def test_every_container_runs_locked_down_as_the_images_user_with_requests_and_limits() -> None:
    workloads = [d for d in shipped() if d["kind"] in WORKLOADS]
    assert len(workloads) == 5 and UID == 10001
    for doc in workloads:
        pod, where = pod_spec(doc), doc["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                          "seccompProfile": {"type": "RuntimeDefault"}}, where
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"] and volumes["secret"]["secret"]["defaultMode"] == 0o440, where
        for container in containers(doc):
            assert container["image"] == "smartcar-etl", where  # the name image/kustomization.yaml replaces
            assert container["securityContext"] == {
                "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}}, where
            resources = container["resources"]
            assert set(resources) == {"requests", "limits"}, where
            assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, where
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts["/tmp"]["name"] == "tmp" and mounts["/etc/smartcar-etl"]["readOnly"] is True, where
            assert mounts[SECRETS.rstrip("/")]["readOnly"] is True, where
            env = {e["name"]: e for e in container["env"]}
            assert set(env) <= {key.variable for key in KEYS} | {"SMARTCAR_ETL_CONFIG"}, where  # the job reads them
            assert env["SMARTCAR_ETL_CONFIG"]["value"] == "/etc/smartcar-etl/config.yaml", where
            assert env["SMARTCAR_ETL_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
                "name": "smartcar-etl", "key": "database-url"}, where


def test_the_image_is_named_once_with_the_packages_version(rendered: dict[str, str]) -> None:
    import importlib.metadata

    naming = [p for p in KUBE.rglob("kustomization.yaml") if "images" in yaml.safe_load(p.read_text())]
    assert naming == [KUBE / "image" / "kustomization.yaml"]
    [image] = yaml.safe_load(naming[0].read_text())["images"]
    assert image["name"] == "smartcar-etl" and image["newTag"] == importlib.metadata.version("smartcar-etl")
    for name, text in rendered.items():
        images = {c["image"] for d in documents(text) if d["kind"] in WORKLOADS for c in containers(d)}
        assert images == {f"{image['newName']}:{image['newTag']}"}, name


def cronjobs() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each CronJob shipped, with the configuration of its kustomization."""
    for path in sorted(KUBE.rglob("cronjob*.yaml")):
        config = KUBE / "configmap.yaml" if path.parent.name == "sync-cronjob" else \
            KUBE / "several-applications" / "config" / "configmap.yaml"
        yield yaml.safe_load(path.read_text()), config_of(documents(config.read_text()))


def test_each_cronjob_runs_one_pass_at_a_time_and_retries_only_what_a_retry_mends() -> None:
    found = list(cronjobs())
    assert len(found) == 3
    for cronjob, config in found:
        spec, where = cronjob["spec"], cronjob["metadata"]["name"]
        assert spec["concurrencyPolicy"] == "Forbid" and spec["timeZone"] == "Etc/UTC", where
        assert 0 < spec["startingDeadlineSeconds"] <= 600, where
        assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1, where
        job = spec["jobTemplate"]["spec"]
        assert job["backoffLimit"] >= 1 and job["template"]["spec"]["restartPolicy"] == "Never", where
        [container] = containers(cronjob)
        assert job["podFailurePolicy"]["rules"] == [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": container["name"], "operator": "In",
                                                   "values": [1, 2]}}], where
        ctx = parses(container["args"])
        assert (ctx.info_name, ctx.params["if_locked"], ctx.params["fmt"]) == ("sync", "skip", "json"), where
        # The schedule is the application's interval, which bounds a pass; the deadline leaves room after it.
        applications = {a["name"]: a for a in config.get("applications", [])}
        chosen = ctx.params["chosen"]
        interval = parse_interval(applications[chosen[0]]["schedule"]["interval"] if chosen else
                                  config["schedule"]["interval"])
        CronTrigger.from_crontab(spec["schedule"], timezone=dt.UTC)
        assert longest_cron_gap(spec["schedule"], dt.datetime(2026, 3, 4, tzinfo=dt.UTC)) == interval, where
        assert interval < job["activeDeadlineSeconds"] <= interval + 600, where
        assert pod_spec(cronjob)["terminationGracePeriodSeconds"] > 10, where  # sync.stop_timeout's default


def parse_interval(text: str) -> float:
    return float(int(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]])


def test_several_applications_have_one_cronjob_each_or_two_daemons_sharing_them(rendered: dict[str, str]) -> None:
    several = documents(rendered["several applications, a CronJob each"])
    names = [a["name"] for a in config_of(several)["applications"]]
    chosen = [parses(containers(d)[0]["args"]).params["chosen"] for d in several if d["kind"] == "CronJob"]
    assert sorted(chosen) == sorted([(name,) for name in names]) and len(names) == 2
    daemons = documents(rendered["several applications, two daemons"])
    [deployment] = [d for d in daemons if d["kind"] == "Deployment"]
    [budget] = [d for d in daemons if d["kind"] == "PodDisruptionBudget"]
    assert deployment["spec"]["replicas"] == 2 and budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert parses(containers(deployment)[0]["args"]).info_name == "daemon"
    [one] = [d for d in documents(rendered["one application, the daemon"]) if d["kind"] == "Deployment"]
    assert one["spec"]["replicas"] == 1


def test_the_daemon_serves_its_metrics_port_and_is_probed_on_healthz() -> None:
    [deployment] = documents((KUBE / "daemon" / "deployment.yaml").read_text())
    [container] = containers(deployment)
    [port] = container["ports"]
    for configmap in (KUBE / "configmap.yaml", KUBE / "several-applications" / "config" / "configmap.yaml"):
        config = config_of(documents(configmap.read_text()))
        assert config["daemon"]["metrics_listen"] == f"0.0.0.0:{port['containerPort']}", configmap
        stop = parse_interval(config["daemon"]["stop_timeout"])
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > stop
    assert port["name"] == "metrics"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port["containerPort"])


def test_the_upgrade_job_runs_db_upgrade_and_fails_at_once_on_a_configuration_error() -> None:
    [job] = documents((KUBE / "db-upgrade" / "job.yaml").read_text())
    [container] = containers(job)
    assert container["args"] == ["db", "upgrade"] and parses(container["args"]).info_name == "db"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": container["name"], "operator": "In",
                                                 "values": [2]}} in rules


@pytest.mark.parametrize("directory", [KUBE, KUBE / "several-applications"], ids=["one", "several"])
def test_each_configmap_is_a_configuration_the_job_loads_and_the_secret_example_fills_it(
        directory: Path, tmp_path: Path) -> None:
    configmap = directory / ("configmap.yaml" if directory == KUBE else "config/configmap.yaml")
    [secret] = documents((directory / "secret.example.yaml").read_text())
    text = config_of(documents(configmap.read_text()))
    named = re.findall(rf"{re.escape(SECRETS)}([\w-]+)", yaml.safe_dump(text))
    assert named and set(named) | {"database-url"} == set(secret["stringData"])
    assert not re.search(r"secret:|password|token:", configmap.read_text(), flags=re.I)
    for key in named:
        (tmp_path / key).write_text(f"a-real-looking-secret-for-{key}")
        (tmp_path / key).chmod(0o400)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(text).replace(SECRETS, f"{tmp_path}/"))
    env = {"SMARTCAR_ETL_DATABASE_URL": secret["stringData"]["database-url"]}
    config = load_config(str(tmp_path / "config.yaml"), env=env)
    assert config.warnings == () and len(config.application_names()) == len(named)
    (tmp_path / named[0]).write_text(secret["stringData"][named[0]])  # the example's placeholder is refused
    with pytest.raises(ConfigError, match="looks like a placeholder"):
        load_config(str(tmp_path / "config.yaml"), env=env)
