"""The files under deploy/: systemd units, Kubernetes, Docker, alerts, dashboard.

Tools that CI installs (``systemd-analyze``, ``promtool``, ``hadolint``) skip
their tests when missing, unless ``CI`` is set. ``kubectl`` is optional.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agentstream import RedisStreamTransport
from agentstream.cli import EXIT_CONFIG
from agentstream.config import Settings, load_settings
from agentstream.observe.metrics import CollectorRegistry, Metrics
from agentstream.testing.pytest_plugin import RedisServerFactory

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "agentstream.json"

UNIT = "agentstream-worker.service"
TEMPLATE = "agentstream-worker@.service"
#: Where the units expect the worker; tests point them at this venv's instead.
INSTALLED_WORKER = "/opt/agentstream/venv/bin/agentstream-worker"
#: Files in deploy/k8s that kustomization.yaml must not apply.
NOT_APPLIED = {"kustomization.yaml", "secret.example.yaml", "web-secret.example.yaml"}
#: Kinds whose schema is not Kubernetes' own: checked field by field below.
CUSTOM_KINDS = {"ServiceMonitor", "ScaledObject", "TriggerAuthentication"}
SHUTDOWN_TIMEOUT_DEFAULT_S = Settings.model_fields["shutdown_timeout_s"].default

_METRIC_RE = re.compile(r"\bagentstream_[A-Za-z0-9_:]+")
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")


# -- helpers -------------------------------------------------------------------


def require_tool(name: str) -> str:
    """The path of ``name``: next to this interpreter or on PATH; skip if absent.

    In CI (``CI`` set) a missing tool fails the test instead.
    """
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is not None:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is required in CI but was not found")
    pytest.skip(f"{name} not found")


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (two minutes at most), capturing its output."""
    return subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=120, cwd=cwd
    )


def worker_executable() -> Path:
    """The ``agentstream-worker`` console script of this venv."""
    return Path(sys.executable).parent / "agentstream-worker"


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file into ``{section: {key: [values, in order]}}``."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=Value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def load_yaml(path: Path) -> list[dict[str, Any]]:
    """Every document of a YAML file."""
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert all(isinstance(d, dict) for d in docs), path
    return docs


def manifest(name: str) -> dict[str, Any]:
    """The single document of ``deploy/k8s/<name>``."""
    (doc,) = load_yaml(K8S / name)
    return doc


def manifest_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def builtin_manifest_files() -> list[Path]:
    """The manifests of Kubernetes' own kinds, which its schemas cover."""
    return [
        path
        for path in manifest_files()
        if not {doc["kind"] for doc in load_yaml(path)}
        & (CUSTOM_KINDS | {"Kustomization"})
    ]


def configmap_toml(tmp_path: Path) -> Path:
    """Write the ConfigMap's worker.toml to a file; return its path."""
    path = tmp_path / "worker.toml"
    path.write_text(manifest("configmap.yaml")["data"]["worker.toml"], "utf-8")
    return path


def worker_container() -> dict[str, Any]:
    containers = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def container_env() -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in worker_container()["env"]}


def pod_settings(tmp_path: Path) -> Settings:
    """The settings a pod of deployment.yaml loads: the ConfigMap plus its env.

    The Secret file is stood in for by a file in ``tmp_path``.
    """
    secret = tmp_path / "redis-password"
    secret.write_text("pod-password\n", encoding="utf-8")
    env = {}
    for name, entry in container_env().items():
        if "value" in entry:
            env[name] = entry["value"]
        else:
            env[name] = "agentstream-worker-5d8f7-abcde"  # the downward API
    env["AGENTSTREAM_REDIS__PASSWORD_FILE"] = str(secret)
    return load_settings(configmap_toml(tmp_path), env=env)


def promql_metric_names(expr: str) -> set[str]:
    """The ``agentstream_*`` series names an expression selects."""
    return set(_METRIC_RE.findall(_STRING_RE.sub('""', expr)))


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their own
    return panels


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: targets and variables."""
    queries = [
        target["expr"]
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    ]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            queries.append(query)
    return queries


def alert_rules() -> list[dict[str, Any]]:
    (doc,) = load_yaml(ALERTS)
    return [
        rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule
    ]


def referenced_metric_names() -> dict[str, set[str]]:
    """The agentstream series each file's queries use, by file."""
    dash: set[str] = set()
    for query in dashboard_queries():
        dash |= promql_metric_names(query)
    alerts: set[str] = set()
    (doc,) = load_yaml(ALERTS)
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    recorded = [rule["record"] for rule in rules if "record" in rule]
    for rule in rules:  # alerts and recording rules, minus the recorded names
        expr = rule["expr"]
        for name in recorded:
            expr = expr.replace(name, "")
        alerts |= promql_metric_names(expr)
    return {DASHBOARD.name: dash, ALERTS.name: alerts}


def sample_names(family_name: str, family_type: str) -> set[str]:
    """The series names a collector family of this type can expose."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }[family_type]
    return {family_name + suffix for suffix in suffixes}


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


# -- systemd ---------------------------------------------------------------------


class TestPartitionedOverlay:
    """deploy/k8s-partitioned: a partitioned, ordered deployment on Redis Cluster."""

    overlay = DEPLOY / "k8s-partitioned"

    def _patch(self, name: str) -> dict[str, Any]:
        (doc,) = load_yaml(self.overlay / name)
        return doc

    def test_worker_config(self, tmp_path: Path) -> None:
        """Its worker.toml loads: 8 ordered partitions on a cluster, WAIT for 1."""
        path = tmp_path / "worker.toml"
        path.write_text(self._patch("configmap.yaml")["data"]["worker.toml"])
        settings = load_settings(path, env={})
        (sub,) = settings.subscriptions
        assert (sub.partitions, sub.ordered) == (8, True)
        assert settings.redis.topology == "cluster"
        assert settings.redis.wait_replicas == 1

    def test_scaled_object_sums_the_partitions_lag(self, tmp_path: Path) -> None:
        """KEDA's Prometheus trigger sums the lag of exactly this stream's
        partitions, and no pod waits idle beyond one per partition."""
        scaled = self._patch("scaledobject.yaml")
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        assert query.startswith("sum(") and "agentstream_group_lag" in query
        pattern = re.search(r'stream=~"([^"]+)"', query)
        assert pattern is not None
        regex = re.compile(pattern.group(1).replace("\\\\", "\\"))
        assert regex.fullmatch("agent_output:{7}")
        assert not regex.fullmatch("agent_output")
        assert scaled["spec"]["maxReplicaCount"] == 8

    def test_kustomize_build(self) -> None:
        """The overlay renders: the base's kinds, its own trigger and config."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.skip("kubectl not found")
        proc = run([kubectl, "kustomize", str(self.overlay)])
        assert proc.returncode == 0, proc.stderr
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
        assert [t["type"] for t in scaled["spec"]["triggers"]] == ["prometheus"]
        (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
        assert "partitions = 8" in config["data"]["worker.toml"]


class TestSystemdUnits:
    @pytest.mark.parametrize("name", [UNIT, TEMPLATE])
    def test_service_settings(self, name: str) -> None:
        """Both units run as a notify service that drains before SIGKILL."""
        service = unit_settings((SYSTEMD / name).read_text("utf-8"))["Service"]
        single = {key: values[-1] for key, values in service.items()}
        assert single["Type"] == "notify"
        assert single["NotifyAccess"] == "main"
        assert int(single["WatchdogSec"]) > 0
        assert single["Restart"] == "on-failure"
        assert single["RestartPreventExitStatus"] == str(EXIT_CONFIG)
        assert single["KillSignal"] == "SIGTERM"
        assert single["KillMode"] == "mixed"
        assert int(single["TimeoutStopSec"]) > SHUTDOWN_TIMEOUT_DEFAULT_S
        assert single["DynamicUser"] == "yes" or single.get("User")
        assert single["ExecStart"].startswith(INSTALLED_WORKER + " --config ")
        assert single["WorkingDirectory"].startswith("/")
        assert single["LoadCredential"] == (
            "redis-password:/etc/agentstream/redis-password"
        )
        assert "AGENTSTREAM_REDIS__PASSWORD_FILE=%d/redis-password" in " ".join(
            service["Environment"]
        )
        assert single["EnvironmentFile"].startswith("-/etc/agentstream/")

    @pytest.mark.parametrize("name", [UNIT, TEMPLATE])
    def test_sandboxing(self, name: str) -> None:
        """Both units drop privileges and lock down what the worker can reach."""
        service = unit_settings((SYSTEMD / name).read_text("utf-8"))["Service"]
        expected = {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "PrivateDevices": "yes",
            "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes",
            "ProtectControlGroups": "yes",
            "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
            "RestrictNamespaces": "yes",
            "LockPersonality": "yes",
            "MemoryDenyWriteExecute": "yes",
            "CapabilityBoundingSet": "",
            "ProcSubset": "pid",
            "PrivateUsers": "yes",
            "MemoryMax": "1G",
        }
        for key, value in expected.items():
            assert service.get(key, [None])[-1] == value, key
        assert "@system-service" in service["SystemCallFilter"]

    def test_template_instances_do_not_clash(self) -> None:
        """Each template instance has its own config, env file and consumer names."""
        service = unit_settings((SYSTEMD / TEMPLATE).read_text("utf-8"))["Service"]
        assert service["ExecStart"] == [
            f"{INSTALLED_WORKER} --config /etc/agentstream/%i.toml"
        ]
        assert service["EnvironmentFile"] == ["-/etc/agentstream/%i.env"]
        assert "AGENTSTREAM_NAME_PREFIX=%H-%i" in service["Environment"]

    def test_units_agree(self) -> None:
        """The template differs from the single unit only where instances must."""
        single = unit_settings((SYSTEMD / UNIT).read_text("utf-8"))
        template = unit_settings((SYSTEMD / TEMPLATE).read_text("utf-8"))
        for section in ("Unit", "Install"):
            keys = set(single[section]) | set(template[section])
            differ = {
                k for k in keys if single[section].get(k) != template[section].get(k)
            }
            assert differ <= {"Description"}, section
        differ = {
            k
            for k in set(single["Service"]) | set(template["Service"])
            if single["Service"].get(k) != template["Service"].get(k)
        }
        assert differ == {"ExecStart", "EnvironmentFile", "Environment"}


def systemd_verify(
    tmp_path: Path, text: str, file_name: str, unit_name: str
) -> list[str]:
    """Run ``systemd-analyze verify`` on ``text``; return the problems it reports.

    The unit is written as ``file_name`` with ExecStart pointed at this venv's
    worker (verify checks that the binary exists); ``unit_name`` is what is
    verified (an instance name for a template). Warnings about other units
    (dependencies that are missing or broken on this machine) are not ours.
    """
    exe = require_tool("systemd-analyze")
    unit_dir = tmp_path / "units"
    unit_dir.mkdir(exist_ok=True)
    (unit_dir / file_name).write_text(
        text.replace(INSTALLED_WORKER, str(worker_executable())), encoding="utf-8"
    )
    argv = [exe, "verify", "--man=no"]
    help_text = run([exe, "--help"]).stdout
    if "--recursive-errors" in help_text:  # systemd 250+
        argv.append("--recursive-errors=no")
    argv.append(str(unit_dir / unit_name))
    proc = run(argv)
    output = (proc.stdout + proc.stderr).splitlines()
    # Parse warnings ("..., ignoring") leave the exit status at 0 on some
    # versions, so any line naming our unit counts as a problem too.
    problems = [line for line in output if file_name in line or unit_name in line]
    if proc.returncode != 0 and not problems:
        problems = output or [f"exit status {proc.returncode}"]
    return problems


class TestSystemdAnalyze:
    @pytest.mark.parametrize(
        ("file_name", "unit_name"),
        [(UNIT, UNIT), (TEMPLATE, "agentstream-worker@orders.service")],
    )
    def test_verify(self, tmp_path: Path, file_name: str, unit_name: str) -> None:
        """systemd-analyze verify reports nothing about either unit."""
        text = (SYSTEMD / file_name).read_text("utf-8")
        assert systemd_verify(tmp_path, text, file_name, unit_name) == []

    @pytest.mark.parametrize(
        ("old", "new"),
        [
            ("Type=notify\n", "Type=notifyy\n"),
            ("KillSignal=SIGTERM\n", "KillSignall=SIGTERM\n"),
            ("RestartPreventExitStatus=78\n", "RestartPreventExitStatus=EX_CONFIG\n"),
            ("TimeoutStopSec=45\n", "TimeoutStopSec=forty-five\n"),
            ("SystemCallFilter=@system-service\n", "SystemCallFilter=@no-such-set\n"),
            ("[Service]\n", "[Servic]\n"),
        ],
        ids=[
            "bad-type",
            "unknown-key",
            "bad-status",
            "bad-time",
            "bad-filter",
            "section",
        ],
    )
    def test_verify_catches_a_broken_unit(
        self, tmp_path: Path, old: str, new: str
    ) -> None:
        """The verify check fails on a unit with a deliberate mistake."""
        text = (SYSTEMD / UNIT).read_text("utf-8")
        assert text.count(old) == 1
        broken = text.replace(old, new)
        assert systemd_verify(tmp_path, broken, UNIT, UNIT) != []


# -- Kubernetes --------------------------------------------------------------------


def _kubernetes_validate() -> Any:
    try:
        return importlib.import_module("kubernetes_validate")
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("kubernetes-validate (the test extra) is required in CI")
        pytest.skip("kubernetes-validate is not installed")


def _schema_versions() -> list[str]:
    try:
        latest = str(importlib.import_module("kubernetes_validate").latest_version())
    except ImportError:
        latest = "latest"
    return ["1.25.0", latest]


class TestKubernetesManifests:
    @pytest.mark.parametrize("version", _schema_versions())
    @pytest.mark.parametrize(
        "path", builtin_manifest_files(), ids=[p.name for p in builtin_manifest_files()]
    )
    def test_schema(self, path: Path, version: str) -> None:
        """Each manifest of a built-in kind validates strictly against its schema."""
        validator = _kubernetes_validate()
        for doc in load_yaml(path):
            validator.validate(doc, version, strict=True)

    @pytest.mark.parametrize(
        ("path", "value"),
        [
            (("spec", "template", "spec", "terminationGracePeriodSeconds"), "45"),
            (("spec", "template", "spec", "restartPolicy"), 7),
            (("spec", "template", "spec", "livenesProbe"), {}),
        ],
        ids=["wrong-type", "wrong-type-2", "unknown-field"],
    )
    def test_schema_catches_a_broken_deployment(
        self, path: tuple[str, ...], value: object
    ) -> None:
        """The schema check fails on a Deployment with a deliberate mistake."""
        validator = _kubernetes_validate()
        doc = manifest("deployment.yaml")
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(validator.ValidationError):
            validator.validate(doc, _schema_versions()[-1], strict=True)

    def test_kustomization_lists_every_manifest(self) -> None:
        """kustomization.yaml applies every manifest but the Secret example."""
        kustomization = manifest("kustomization.yaml")
        listed = kustomization["resources"]
        assert len(listed) == len(set(listed))
        on_disk = {p.name for p in manifest_files()} - NOT_APPLIED
        assert set(listed) == on_disk
        assert "secret.example.yaml" not in listed

    def test_kustomize_build(self) -> None:
        """kubectl kustomize renders the whole set into one namespace."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.skip("kubectl not found")
        proc = run([kubectl, "kustomize", str(K8S)])
        assert proc.returncode == 0, proc.stderr
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        kinds = sorted(d["kind"] for d in docs)
        assert kinds == sorted(
            doc["kind"]
            for name in manifest("kustomization.yaml")["resources"]
            for doc in load_yaml(K8S / name)
        )
        namespace = manifest("kustomization.yaml")["namespace"]
        assert {d["metadata"]["namespace"] for d in docs} == {namespace}

    def test_configmap_is_a_valid_worker_config(self, tmp_path: Path) -> None:
        """The ConfigMap's worker.toml, with the pod's env, loads as Settings."""
        settings = pod_settings(tmp_path)
        assert settings.redis.resolved_password() == "pod-password"
        assert settings.metrics.enabled
        assert settings.metrics.host == "0.0.0.0"
        assert settings.name_prefix == "agentstream-worker-5d8f7-abcde"

    def test_deployment_probes_and_shutdown(self, tmp_path: Path) -> None:
        """Probes hit /healthz and /readyz on the metrics port; grace exceeds drain."""
        settings = pod_settings(tmp_path)
        pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
        container = worker_container()
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == settings.metrics.port
        for probe, path in (
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ):
            http = container[probe]["httpGet"]
            assert http["path"] == path
            assert ports.get(http["port"], http["port"]) == settings.metrics.port
        assert pod["terminationGracePeriodSeconds"] > settings.shutdown_timeout_s
        assert settings.block_ms / 1000 < settings.shutdown_timeout_s

    def test_deployment_security(self) -> None:
        """The pod runs as non-root on a read-only root with nothing to escalate."""
        pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        container = worker_container()
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}
        user = dict(parse_dockerfile(DOCKERFILE.read_text("utf-8")))["USER"]
        assert user == f"{pod['securityContext']['runAsUser']}:" + str(
            pod["securityContext"]["runAsGroup"]
        )

    def test_deployment_files_and_env(self) -> None:
        """Config and password arrive as mounted files the worker is pointed at."""
        pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
        container = worker_container()
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        env = container_env()

        config_path = Path(container["args"][container["args"].index("--config") + 1])
        config_volume = volumes[mounts[str(config_path.parent)]["name"]]
        assert (
            config_volume["configMap"]["name"]
            == manifest("configmap.yaml")["metadata"]["name"]
        )
        assert {"key": "worker.toml", "path": config_path.name} in config_volume[
            "configMap"
        ]["items"]

        password_path = Path(env["AGENTSTREAM_REDIS__PASSWORD_FILE"]["value"])
        secret_volume = volumes[mounts[str(password_path.parent)]["name"]]["secret"]
        secret = manifest("secret.example.yaml")
        assert secret_volume["secretName"] == secret["metadata"]["name"]
        (item,) = secret_volume["items"]
        assert item["path"] == password_path.name
        assert item["key"] in secret["stringData"]
        assert all(m.get("readOnly") for m in mounts.values() if m["name"] != "tmp")

        assert env["AGENTSTREAM_METRICS__HOST"]["value"] == "0.0.0.0"
        field = env["AGENTSTREAM_NAME_PREFIX"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert field == "metadata.name"

    def test_service_monitor_and_pdb_select_the_pods(self) -> None:
        """Service, ServiceMonitor and PDB all reach the worker pods' metrics port."""
        deployment = manifest("deployment.yaml")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert (
            deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        )
        service = manifest("service.yaml")
        assert service["spec"]["selector"].items() <= pod_labels.items()
        (port,) = service["spec"]["ports"]
        assert port["targetPort"] == "metrics"
        assert service["spec"]["publishNotReadyAddresses"] is True

        monitor = manifest("servicemonitor.yaml")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["kind"] == "ServiceMonitor"
        wanted = monitor["spec"]["selector"]["matchLabels"]
        assert wanted.items() <= service["metadata"]["labels"].items()
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == port["name"]
        assert endpoint["path"] == "/metrics"

        pdb = manifest("pdb.yaml")
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]

    def test_scaled_object_follows_the_subscription(self, tmp_path: Path) -> None:
        """KEDA scales the Deployment on the lag of the group the worker reads."""
        settings = pod_settings(tmp_path)
        scaled = manifest("scaledobject.yaml")
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        assert scaled["kind"] == "ScaledObject"
        spec = scaled["spec"]
        assert (
            spec["scaleTargetRef"]["name"]
            == manifest("deployment.yaml")["metadata"]["name"]
        )
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        # One trigger on lag, one on pending entries; a fallback while
        # Redis cannot be read.
        trigger, pending_trigger = spec["triggers"]
        assert int(pending_trigger["metadata"]["pendingEntriesCount"]) > 0
        assert spec["fallback"]["failureThreshold"] > 0
        assert spec["minReplicaCount"] <= spec["fallback"]["replicas"]
        assert int(trigger["metadata"]["lagCount"]) > 0
        assert 0 <= int(trigger["metadata"]["activationLagCount"])
        subscriptions = {(s.stream, s.group) for s in settings.subscriptions}
        url = urlsplit(settings.redis.url)
        for each in spec["triggers"]:
            assert each["type"] == "redis-streams"
            meta = each["metadata"]
            assert all(isinstance(v, str) for v in meta.values())  # KEDA: strings
            assert (meta["stream"], meta["consumerGroup"]) in subscriptions
            assert meta["address"] == f"{url.hostname}:{url.port or 6379}"
            assert meta.get("databaseIndex", "0") == (url.path.strip("/") or "0")
            assert each["authenticationRef"] == trigger["authenticationRef"]

        auth = manifest("triggerauthentication.yaml")
        assert auth["apiVersion"] == "keda.sh/v1alpha1"
        assert auth["kind"] == "TriggerAuthentication"
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        (ref,) = auth["spec"]["secretTargetRef"]
        pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
        (secret_volume,) = [v["secret"] for v in pod["volumes"] if "secret" in v]
        assert ref["parameter"] == "password"
        assert ref["name"] == secret_volume["secretName"]
        assert ref["key"] == secret_volume["items"][0]["key"]


# -- Docker ------------------------------------------------------------------------


class TestDockerfile:
    def test_structure(self) -> None:
        """Multi-stage on a pinned slim Python, non-root, worker as entrypoint."""
        instructions = parse_dockerfile(DOCKERFILE.read_text("utf-8"))
        defaults = dict(
            rest.partition("=")[::2] for word, rest in instructions if word == "ARG"
        )
        base = defaults["PYTHON_IMAGE"]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base)
        froms = [rest for word, rest in instructions if word == "FROM"]
        assert len(froms) >= 2
        assert froms[0].endswith(" AS build")
        assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)
        final = instructions[
            max(i for i, (word, _) in enumerate(instructions) if word == "FROM") :
        ]
        by_word: dict[str, list[str]] = {}
        for word, rest in final:
            by_word.setdefault(word, []).append(rest)
        user = by_word["USER"][-1]
        assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), "USER must be a numeric UID"
        assert json.loads(by_word["ENTRYPOINT"][-1]) == ["agentstream-worker"]
        assert json.loads(by_word["CMD"][-1]) == [
            "--config",
            "/etc/agentstream/worker.toml",
        ]
        assert by_word["EXPOSE"] == ["9464"]
        healthcheck = by_word["HEALTHCHECK"][-1]
        assert "urllib.request" in healthcheck and "/healthz" in healthcheck
        assert "curl" not in DOCKERFILE.read_text("utf-8").replace("no curl", "")
        assert any("--from=build" in c for c in by_word["COPY"])

    def test_dockerignore_keeps_what_the_build_copies(self) -> None:
        """The Dockerfile's ignore file excludes the repo but not what COPY needs."""
        ignore = DOCKERFILE.with_name("Dockerfile.dockerignore")
        patterns = [
            line.strip()
            for line in ignore.read_text("utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]

        def excluded(path: str) -> bool:
            result = False
            for pattern in patterns:
                negate = pattern.startswith("!")
                glob = pattern.lstrip("!").rstrip("/")
                if fnmatch.fnmatch(path, glob) or fnmatch.fnmatch(
                    path.split("/")[0], glob
                ):
                    result = not negate
            return result

        instructions = parse_dockerfile(DOCKERFILE.read_text("utf-8"))
        sources = [
            src
            for word, rest in instructions
            if word == "COPY" and not rest.startswith("--from")
            for src in rest.split()[:-1]
        ]
        assert sources
        for src in sources:
            assert (ROOT / src).exists(), src
            assert not excluded(src.rstrip("/")), src
        for unwanted in (".git", ".venv", "tests", "deploy", ".ci"):
            assert excluded(unwanted), unwanted

    def test_hadolint(self) -> None:
        """hadolint finds nothing to say about the Dockerfile."""
        exe = require_tool("hadolint")
        proc = run([exe, "--no-color", str(DOCKERFILE)])
        assert proc.returncode == 0, proc.stdout + proc.stderr


# -- Prometheus --------------------------------------------------------------------


class TestAlertRules:
    def test_promtool_check(self) -> None:
        """promtool accepts alerts.yml."""
        promtool = require_tool("promtool")
        proc = run([promtool, "check", "rules", str(ALERTS)])
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_promtool_unit_tests(self) -> None:
        """The unit tests in alerts_test.yml pass."""
        promtool = require_tool("promtool")
        proc = run(
            [promtool, "test", "rules", ALERTS_TEST.name], cwd=ALERTS_TEST.parent
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_every_alert_fires_and_stays_silent(self) -> None:
        """Each alert has a test case where it fires and one where it does not."""
        (tests,) = load_yaml(ALERTS_TEST)
        fires: set[str] = set()
        silent: set[str] = set()
        for group in tests["tests"]:
            for case in group.get("alert_rule_test", []):
                (fires if case["exp_alerts"] else silent).add(case["alertname"])
        names = {rule["alert"] for rule in alert_rules()}
        assert fires == names
        assert silent == names

    def test_readme_prometheus_rule_command(self) -> None:
        """The README's shell lines wrap alerts.yml into a valid PrometheusRule."""
        readme = (ROOT / "README.md").read_text("utf-8")
        match = re.search(
            r"^(\{ printf 'apiVersion: monitoring\.coreos\.com/v1.*\n.*?) \| kubectl",
            readme,
            re.MULTILINE,
        )
        assert match, "README: the PrometheusRule command is gone"
        bash = require_tool("bash")
        proc = run([bash, "-c", match.group(1)], cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        rule = yaml.safe_load(proc.stdout)
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        assert rule["kind"] == "PrometheusRule"
        assert rule["metadata"]["name"]
        assert rule["spec"] == load_yaml(ALERTS)[0]

    def test_rules_are_labelled_and_documented(self) -> None:
        """Each alert has a severity and a summary and description."""
        for rule in alert_rules():
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert {"summary", "description"} <= set(rule["annotations"])

    def test_runbook_links_lead_into_the_readme(self) -> None:
        """Every alert has a runbook_url: a README heading that names it."""
        readme = (ROOT / "README.md").read_text("utf-8")
        anchors = {
            re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", readme, re.MULTILINE)
        }
        for rule in alert_rules():
            alert, url = rule["alert"], rule["annotations"].get("runbook_url")
            assert url, f"{alert} has no runbook_url"
            page, _, anchor = url.partition("#")
            assert page == "README.md", url
            assert anchor == alert.lower(), url
            assert anchor in anchors, f"README has no heading for {alert}"

    def test_lag_alert_reads_the_lag_summed_over_partitions(self) -> None:
        """AgentstreamLagGrowing reads the recording rule that sums a partitioned stream's lag."""
        (doc,) = load_yaml(ALERTS)
        records = {
            rule["record"]: rule["expr"]
            for group in doc["groups"]
            for rule in group["rules"]
            if "record" in rule
        }
        summed = "stream_group:agentstream_group_lag:sum"
        assert "agentstream_group_lag" in records[summed]
        (lag,) = [r for r in alert_rules() if r["alert"] == "AgentstreamLagGrowing"]
        assert summed in lag["expr"] and "agentstream_group_lag)" not in lag["expr"]


# -- Grafana -----------------------------------------------------------------------


class TestDashboard:
    def test_structure(self) -> None:
        """Importable and provisionable from a file: a datasource variable, no ${DS_*} inputs."""
        data = dashboard()
        assert "__inputs" not in data  # only the UI's import fills those in
        assert "${DS_" not in DASHBOARD.read_text("utf-8")
        variables = {v["name"]: v for v in data["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for name in ("job", "namespace", "stream", "group"):
            assert variables[name]["type"] == "query", name
            assert variables[name]["datasource"]["uid"] == "${datasource}", name
        # outside Kubernetes no series has a namespace: "All" must match ""
        assert variables["namespace"]["allValue"] == ".*"
        ids = [panel["id"] for panel in dashboard_panels()]
        assert len(ids) == len(set(ids))
        for panel in dashboard_panels():
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert (
                    target.get("datasource", panel["datasource"]) == panel["datasource"]
                )

    def test_queries_select_the_job_and_namespace(self) -> None:
        """Every series a query reads is narrowed to the chosen job and namespace."""
        for query in dashboard_queries():
            if query == "label_values(agentstream_build_info, job)":
                continue  # the job variable's own query
            for name, selector in re.findall(
                r"\b(agentstream_\w+|up)(\{[^}]*\})?", query
            ):
                assert 'job=~"$job"' in selector, (name, query)
                if not query.startswith("label_values(agentstream_build_info"):
                    assert 'namespace=~"$namespace"' in selector, (name, query)

    def test_queries_parse(self, tmp_path: Path) -> None:
        """promtool parses every dashboard query, Grafana variables filled in."""
        promtool = require_tool("promtool")
        rules = []
        for n, query in enumerate(dashboard_queries()):
            if query.startswith("label_values("):
                continue  # Grafana's own function, not PromQL
            expr = (
                query.replace("$__rate_interval", "5m")
                .replace("$stream", ".*")
                .replace("$group", ".*")
                .replace("$job", ".*")
                .replace("$namespace", ".*")
            )
            assert "$" not in expr, query
            rules.append({"record": f"dashboard:query_{n}", "expr": expr})
        path = tmp_path / "dashboard_rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}))
        proc = run([promtool, "check", "rules", str(path)])
        assert proc.returncode == 0, proc.stdout + proc.stderr


class TestMetricNames:
    def test_names_are_defined_by_metrics_module(self) -> None:
        """Dashboard and alerts use only series that agentstream.observe.metrics defines."""
        registry = CollectorRegistry()
        Metrics(registry)
        defined: set[str] = set()
        for family in registry.collect():
            defined |= sample_names(family.name, family.type)
        for file_name, names in referenced_metric_names().items():
            assert names, file_name
            assert names <= defined, (file_name, sorted(names - defined))

    @pytest.mark.redis
    def test_names_are_exported_by_a_running_worker(
        self, tmp_path: Path, redis_factory: RedisServerFactory
    ) -> None:
        """A worker run as the pod runs it exports every series the files use."""
        password = "deploy-test-password"
        server = redis_factory(password=password)
        (tmp_path / "redis-password").write_text(password + "\n", encoding="utf-8")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AGENTSTREAM_") and k != "PYTHONPATH"
        }
        for name, entry in container_env().items():
            env[name] = entry.get("value", "agentstream-worker-test-pod")
        env.update(
            {
                "AGENTSTREAM_REDIS__URL": f"redis://{server.host}:{server.port}/0",
                "AGENTSTREAM_REDIS__PASSWORD_FILE": str(tmp_path / "redis-password"),
                # never 0.0.0.0:9464 in a test: loopback, a free port
                "AGENTSTREAM_METRICS__HOST": "127.0.0.1",
                "AGENTSTREAM_METRICS__PORT": "0",
                "AGENTSTREAM_REAPER__INTERVAL_S": "0.2",
                "PYTHONUNBUFFERED": "1",
            }
        )
        wanted = set().union(*referenced_metric_names().values())
        with running_worker(tmp_path, env) as worker:
            port = worker.metrics_port()
            assert http_get(port, "/healthz")[0] == 200
            wait_ready(port)
            # Series with an event type or outcome label appear once events
            # come: one the example app handles, one it dead-letters.
            trigger = manifest("scaledobject.yaml")["spec"]["triggers"][0]["metadata"]
            transport = RedisStreamTransport(
                trigger["stream"],
                redis_url=server.url,
                consumer_group=trigger["consumerGroup"],
            )
            try:
                transport.publish("token", {"run_id": "run-1", "token": "Hi"})
                transport.publish("token", {"token": "no run id"})
            finally:
                transport.close()
            wait_for_series(port, {"agentstream_dead_lettered_total"})
            # ... agentstream_dead_letter_failures_total once the dead-letter
            # key holds another type ...
            dlq = f"{trigger['stream']}:dlq"
            with redis.Redis.from_url(server.url) as client:
                client.delete(dlq)
                client.rpush(dlq, "left by an old deployment")
                client.xadd(trigger["stream"], {"type": "token", "data": "{}"})
                wait_for_series(port, {"agentstream_dead_letter_failures_total"})
                client.delete(dlq)
            # ... and agentstream_redis_errors_total once Redis fails.
            server.stop()
            wait_for_series(port, {"agentstream_redis_errors_total"})
            server.start()
            wait_ready(port, timeout=60)
            wait_for_series(port, wanted)
            worker.stop(timeout=SHUTDOWN_TIMEOUT_DEFAULT_S + 10)


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET a path of the local metrics server; returns status and body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> set[str]:
    """The names of the series the local metrics server exposes now."""
    status, body = http_get(port, "/metrics")
    assert status == 200, body
    return {
        sample.name
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def wait_for_series(port: int, names: set[str], timeout: float = 30) -> set[str]:
    """Scrape until every name in ``names`` is exposed; return the last scrape."""
    deadline = time.monotonic() + timeout
    while not names <= (exported := scrape(port)):
        assert time.monotonic() < deadline, sorted(names - exported)
        time.sleep(0.2)
    return exported


def wait_ready(port: int, timeout: float = 30) -> None:
    """Poll /readyz until it answers 200."""
    deadline = time.monotonic() + timeout
    while (answer := http_get(port, "/readyz"))[0] != 200:
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)


class _Worker:
    """An ``agentstream-worker`` started with the ConfigMap's worker.toml."""

    def __init__(self, tmp_path: Path, env: Mapping[str, str]) -> None:
        self.stdout = tmp_path / "worker.stdout"
        self.stderr = tmp_path / "worker.stderr"
        config = configmap_toml(tmp_path)
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            # cwd: the repository root holds examples/, as /app does in the image
            self.proc = subprocess.Popen(
                [str(worker_executable()), "--config", str(config)],
                cwd=ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def output(self) -> str:
        return (
            self.stdout.read_text(errors="replace")
            + self.stderr.read_text(errors="replace")
        )[-4000:]

    def metrics_port(self) -> int:
        """The port from the worker's ``metrics_serving`` log line."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            for line in self.stdout.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if (
                    isinstance(record, dict)
                    and record.get("event") == "metrics_serving"
                ):
                    return int(record["port"])
            time.sleep(0.05)
        raise AssertionError("no metrics_serving log line\n" + self.output())

    def stop(self, timeout: float) -> None:
        """SIGTERM the worker and expect a clean exit within ``timeout``."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("worker ignored SIGTERM\n" + self.output()) from None
        assert status == 0, self.output()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by pid: only the worker this test started
        self.proc.wait(timeout=10)


@contextmanager
def running_worker(tmp_path: Path, env: Mapping[str, str]) -> Iterator[_Worker]:
    """Start a worker for a ``with`` block; kill it on the way out if still alive."""
    worker = _Worker(tmp_path, env)
    try:
        yield worker
    finally:
        worker.close()


# -- the web console beside the worker ----------------------------------------------

WEB_UNIT = "agentstream-web.service"
INSTALLED_ADMIN = "/opt/agentstream/venv/bin/agentstream"


def web_container() -> dict[str, Any]:
    spec = manifest("web-deployment.yaml")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    result: dict[str, Any] = container
    return result


class TestWebConsole:
    def test_systemd_unit(self) -> None:
        """The console's unit runs `agentstream web` on the worker's config with a token."""
        service = unit_settings((SYSTEMD / WEB_UNIT).read_text("utf-8"))["Service"]
        single = {key: values[-1] for key, values in service.items()}
        worker = unit_settings((SYSTEMD / UNIT).read_text("utf-8"))["Service"]
        assert single["ExecStart"] == (
            f"{INSTALLED_ADMIN} --config /etc/agentstream/worker.toml web"
        )
        assert "web-token:/etc/agentstream/web-token" in service["LoadCredential"]
        assert "AGENTSTREAM_WEB__TOKEN_FILE=%d/web-token" in service["Environment"]
        assert single["RestartPreventExitStatus"] == str(EXIT_CONFIG)
        for key in ("DynamicUser", "NoNewPrivileges", "ProtectSystem", "PrivateTmp",
                    "RestrictAddressFamilies", "SystemCallFilter",
                    "CapabilityBoundingSet", "MemoryDenyWriteExecute"):  # fmt: skip
            assert service[key] == worker[key], key

    def test_systemd_verify(self, tmp_path: Path) -> None:
        """systemd-analyze verify reports nothing about the console's unit."""
        text = (
            (SYSTEMD / WEB_UNIT)
            .read_text("utf-8")
            .replace(
                INSTALLED_ADMIN + " ",
                str(Path(sys.executable).parent / "agentstream") + " ",
            )
        )
        assert systemd_verify(tmp_path, text, WEB_UNIT, WEB_UNIT) == []

    def test_kubernetes_deployment(self, tmp_path: Path) -> None:
        """The console pod loads the workers' config, binds with a token, probes /healthz."""
        from agentstream.admin.web.security import check_bind, load_credentials

        container = web_container()
        assert container["command"] == ["agentstream"]
        assert container["args"][-1] == "web"
        env = {e["name"]: e["value"] for e in container["env"]}
        token = tmp_path / "web-token"
        token.write_text(manifest("web-secret.example.yaml")["stringData"]["web-token"])
        password = tmp_path / "redis-password"
        password.write_text("pod-password")
        env |= {"AGENTSTREAM_WEB__TOKEN_FILE": str(token),
                "AGENTSTREAM_REDIS__PASSWORD_FILE": str(password)}  # fmt: skip
        settings = load_settings(configmap_toml(tmp_path), env=env)
        check_bind(settings.web.host, load_credentials(settings.web))
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["web"] == settings.web.port
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "web"}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {
            v["name"]: v
            for v in manifest("web-deployment.yaml")["spec"]["template"]["spec"][
                "volumes"
            ]
        }
        token_dir = str(Path(container["env"][-1]["value"]).parent)
        secret = volumes[mounts[token_dir]]["secret"]
        assert secret["secretName"] == manifest("web-secret.example.yaml")["metadata"]["name"]  # fmt: skip
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        service = manifest("web-service.yaml")
        labels = manifest("web-deployment.yaml")["spec"]["template"]["metadata"][
            "labels"
        ]
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == "web"

    def test_image_has_the_web_extra(self) -> None:
        """The image installs agentstream with the web extra, so it runs the console."""
        assert '"agentstream[web]"' in DOCKERFILE.read_text("utf-8")
