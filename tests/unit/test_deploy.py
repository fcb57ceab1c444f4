"""The Kubernetes manifests in deploy/kubernetes: valid against the Kubernetes API schemas (kubernetes-validate,
strict: unknown fields are errors), and wired the way Sentrail needs them (probes, non-root, limits, and settings
and policies that Sentrail itself accepts)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from gateway.mcp.config import load_mcp_config
from gateway.settings import load_settings
from rails.config import load_rails
from rails.tools.config import load_tool_policy

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
NAMESPACE = "sentrail"
# The oldest Kubernetes the manifests are meant for (the preStop `sleep` action is on by default from 1.30), and the
# newest one whose schemas the installed kubernetes-validate bundles.
OLDEST = "1.30"
NEWEST = ".".join(kubernetes_validate.latest_version().split(".")[:2])
VERSIONS = sorted({OLDEST, NEWEST}, key=lambda v: tuple(map(int, v.split("."))))
WORKLOADS = ("Deployment", "StatefulSet")


def _load() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path != KUSTOMIZATION:
            docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


DOCS = _load()


def _id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _find(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in DOCS if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod.get("initContainers", []) + pod["containers"]


def _container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _port(container: dict[str, Any], port: int | str) -> int:
    """A container port by number or by name."""
    for entry in container.get("ports", []):
        if port in (entry["containerPort"], entry.get("name")):
            return entry["containerPort"]
    raise AssertionError(f"container {container['name']} has no port {port!r}")


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_manifests_found():
    assert {doc["kind"] for _, doc in DOCS} >= {
        "Namespace", "StatefulSet", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }  # fmt: skip


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a manifest is listed twice"
    on_disk = {p.name for p in DEPLOY.glob("*.y*ml")} - {KUSTOMIZATION.name}
    assert set(listed) == on_disk


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("filename", "doc"), DOCS, ids=[f"{f}:{_id(d)}" for f, d in DOCS])
def test_manifest_matches_the_kubernetes_schema(filename: str, doc: dict[str, Any], version: str):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(top)"
        pytest.fail(f"{filename} {_id(doc)} is invalid for Kubernetes {exc.version}: {where}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{filename}: {exc.message}")


def test_everything_is_in_the_sentrail_namespace():
    assert _find("Namespace", NAMESPACE)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for filename, doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{filename} {_id(doc)}"


@pytest.mark.parametrize("workload", [d for _, d in DOCS if d["kind"] in WORKLOADS], ids=_id)
def test_containers_run_non_root_with_limits(workload: dict[str, Any]):
    """What the namespace's `restricted` Pod Security level demands, plus resource requests and limits."""
    pod = workload["spec"]["template"]["spec"]
    pod_security = pod.get("securityContext", {})
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for container in _containers(pod):
        name = f"{_id(workload)} container {container['name']}"
        security = {**pod_security, **container.get("securityContext", {})}
        assert security.get("runAsNonRoot") is True, name
        assert security.get("runAsUser", 1) != 0 and security.get("runAsGroup", 1) != 0, name
        assert security.get("allowPrivilegeEscalation") is False, name
        assert not security.get("privileged"), name
        assert security.get("capabilities", {}).get("drop") == ["ALL"], name
        assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("limits", {})), f"{name}: needs cpu and memory limits"
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{name}: needs cpu and memory requests"


def test_services_reach_their_pods():
    workloads = [d for _, d in DOCS if d["kind"] in WORKLOADS]
    for service in (d for _, d in DOCS if d["kind"] == "Service"):
        selected = [w for w in workloads if _labels_match(service["spec"]["selector"], _pod_labels(w))]
        assert len(selected) == 1, f"{_id(service)} selects {len(selected)} workloads"
        container = selected[0]["spec"]["template"]["spec"]["containers"][0]
        for port in service["spec"]["ports"]:
            _port(container, port.get("targetPort", port["port"]))
    for workload in workloads:
        assert _labels_match(workload["spec"]["selector"]["matchLabels"], _pod_labels(workload)), _id(workload)


def test_gateway_probes_and_draining():
    gateway = _find("Deployment", "sentrail-gateway")
    pod = gateway["spec"]["template"]["spec"]
    container = _container(gateway, "gateway")
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/health/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/v1/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v1/health/live"
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert _port(container, container[probe]["httpGet"]["port"]) == 8000
        # /v1/health/ready asks every engine (2 s) and Redis: a tighter timeout would flap.
        assert container[probe].get("timeoutSeconds", 1) >= 3, probe
    assert gateway["spec"]["replicas"] >= 2
    assert pod["securityContext"]["runAsUser"] == 10001  # the Containerfile's user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    # uvicorn drains for up to 30 s after the preStop pause; the grace period must cover both.
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pause + 30 + 10
    annotations = gateway["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert _port(container, int(annotations["prometheus.io/port"])) == 8000


def test_gateway_disruption_budget_and_autoscaler():
    labels = _pod_labels(_find("Deployment", "sentrail-gateway"))
    pdb = _find("PodDisruptionBudget", "sentrail-gateway")
    assert pdb["spec"]["minAvailable"] == 1 and _labels_match(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = _find("HorizontalPodAutoscaler", "sentrail-gateway")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sentrail-gateway"}
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] >= hpa["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    container = _container(_find("Deployment", "sentrail-gateway"), "gateway")
    assert "cpu" in container["resources"]["requests"]  # CPU utilization is measured against the request


def _materialize(workload: dict[str, Any], container: dict[str, Any], root: Path) -> Path:
    """Write the container's ConfigMap-backed mounts under `root`, as the kubelet would lay them out."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        sources = volume.get("projected", {}).get("sources", [])
        sources += [{"configMap": volume["configMap"]}] if "configMap" in volume else []
        for source in sources:
            data = _find("ConfigMap", source["configMap"]["name"])["data"]
            items = source["configMap"].get("items") or [{"key": key, "path": key} for key in data]
            for item in items:
                target = root / mount["mountPath"].lstrip("/") / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[item["key"]])
    return root


def _inside(root: Path, container_path: str) -> Path:
    return root / PurePosixPath(container_path).relative_to("/")


def _service_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, url
    service = _find("Service", parts.hostname.split(".")[0])
    assert parts.port in [p["port"] for p in service["spec"]["ports"]], f"{url}: no such port on the Service"
    return parts.hostname, parts.port


def test_gateway_settings_and_policies_load(tmp_path: Path):
    """The mounted settings file, read with the Deployment's environment, and the mounted policies pass Sentrail's
    own loaders; the engines and Redis they name are Services defined here."""
    gateway = _find("Deployment", "sentrail-gateway")
    container = _container(gateway, "gateway")
    assert container["command"][:2] == ["sentrail", "serve"]
    config = container["command"][container["command"].index("--config") + 1]
    root = _materialize(gateway, container, tmp_path)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["SENTRAIL_HOST"] == "0.0.0.0" and env["SENTRAIL_LOG_FORMAT"] == "json"
    assert env.get("SENTRAIL_CONFIG", config) == config

    settings = load_settings(str(_inside(root, config)), environ=env)
    assert settings.host == "0.0.0.0" and settings.port == _port(container, "http")
    assert settings.redis_url == "redis://sentrail-redis:6379/0"
    assert _service_address(settings.redis_url) == ("sentrail-redis", 6379)
    served = _container(_find("Deployment", "sentrail-engine"), "vllm")
    engine_data = _find("ConfigMap", "sentrail-engine")["data"]
    assert settings.models, "no models configured"
    for model in settings.models:
        for engine in model.engines:
            assert engine.kind == "remote" and engine.url, f"{model.id}: engines must be remote pools"
            assert _service_address(engine.url) == ("sentrail-engine", _port(served, "http"))
    assert {m.id for m in settings.models} == {engine_data["VLLM_SERVED_MODEL_NAME"]}

    policies = _inside(root, settings.policies_dir)
    config, rails = load_rails(policies / "rails.yaml")
    assert rails, "rails.yaml configures no rails"
    assert config.stages == load_rails(ROOT / "policies" / "rails.yaml")[0].stages
    tools = load_tool_policy(policies / "tools.yaml")
    shipped = load_tool_policy(ROOT / "policies" / "tools.yaml")  # the deployed policy is the repository's default
    assert tools.file.rules and tools.file == shipped.file
    mcp = load_mcp_config(policies / "mcp.yaml")  # the MCP endpoint is mounted, with no upstream server
    assert mcp.path is not None and mcp.file == load_mcp_config(ROOT / "policies" / "mcp.yaml").file


def test_redis_is_persistent():
    redis = _find("StatefulSet", "sentrail-redis")
    container = _container(redis, "redis")
    assert container["image"].startswith("redis:7")
    args = " ".join(container["args"])
    assert "--appendonly yes" in args and "--appendfsync everysec" in args
    assert redis["spec"]["replicas"] == 1 and redis["spec"]["serviceName"] == "sentrail-redis"
    claims = [c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]]
    assert [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/data"] == claims
    for probe in ("readinessProbe", "livenessProbe"):
        assert "redis-cli ping" in " ".join(container[probe]["exec"]["command"]), probe


def test_engine_pool():
    engine = _find("Deployment", "sentrail-engine")
    container = _container(engine, "vllm")
    image, _, tag = container["image"].partition(":")
    assert image == "vllm/vllm-openai" and tag and tag != "latest", "pin the vLLM image to a version"
    args = container["args"]
    assert "--model" in args and "--enable-auto-tool-choice" in args
    assert args[args.index("--tool-call-parser") + 1] == "hermes"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert _port(container, container["readinessProbe"]["httpGet"]["port"]) == 8000
    from_config = [
        e["valueFrom"]["configMapKeyRef"] for e in container["env"] if "configMapKeyRef" in e.get("valueFrom", {})
    ]
    assert {ref["name"] for ref in from_config} == {"sentrail-engine"}
    referenced = {ref["key"] for ref in from_config}
    assert referenced <= set(_find("ConfigMap", "sentrail-engine")["data"])


def test_only_the_gateway_reaches_redis_and_engines():
    gateway_labels = _pod_labels(_find("Deployment", "sentrail-gateway"))
    protected = {}
    for policy in (d for _, d in DOCS if d["kind"] == "NetworkPolicy"):
        sources = [peer["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for peer in rule["from"]]
        assert sources and all(_labels_match(s, gateway_labels) for s in sources), _id(policy)
        protected[policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]] = policy
    assert set(protected) == {"sentrail-redis", "sentrail-engine"}
