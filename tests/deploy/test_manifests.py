"""deploy/ checked offline: the Kubernetes manifests against the Kubernetes JSON schemas that
`kubernetes-validate` bundles (strict: unknown fields fail), and the files that must agree
with each other (Services and Deployment, Ingress and Services, compose and nginx, images and
the project's pins) do."""

from __future__ import annotations

import copy
import ipaddress
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from server.addresses import parse_networks
from tests.deploy.conftest import DEPLOY, REPO

K8S = DEPLOY / "k8s"
# The oldest Kubernetes still widely run, and the newest the package has schemas for.
K8S_VERSIONS = ("1.29.0", latest_version())
NOT_KUBERNETES = {"kustomization.yaml"}  # kustomize's own file, no API object


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in NOT_KUBERNETES)


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of deploy/k8s by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in manifests():
        for doc in documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_catches_mistakes() -> None:
    """A check that passes everything would prove nothing: a misspelt field and a wrong type
    in the Deployment must fail."""
    deployment = objects()[("Deployment", "ptq4vm")]
    misspelt = copy.deepcopy(deployment)
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readynessProbe"):
        kubernetes_validate.validate(misspelt, K8S_VERSIONS[0], strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_the_service_objects() -> None:
    (kustomization,) = documents(K8S / "kustomization.yaml")
    expected = {p.name for p in manifests()} - {"calibration-job.yaml"}  # run on demand
    assert set(kustomization["resources"]) == expected


def test_the_objects_fit_together() -> None:
    found = objects()
    deployment = found[("Deployment", "ptq4vm")]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}

    # Probes: started and alive on /healthz, routed to only once the model is loaded.
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PTQ4VM_BUILD_DEFAULT"] == "false", "replicas must not race to build the default"
    assert int(env["PTQ4VM_THREADS"]) == int(container["resources"]["limits"]["cpu"])
    # Behind the ingress: the controller's X-Forwarded-For believed (else every client is the
    # controller, 8 connections in all), browser pages allowed from the Ingress host only.
    assert parse_networks(env["PTQ4VM_TRUSTED_PROXIES"]), "no trusted proxies"
    hosts = {r["host"] for (k, _), o in found.items() if k == "Ingress" for r in o["spec"]["rules"]}
    assert {f"https://{h}" for h in hosts} <= set(env["PTQ4VM_ALLOWED_ORIGINS"].split(","))

    services = {name: obj for (kind, name), obj in found.items() if kind == "Service"}
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    ingresses = {name: obj for (kind, name), obj in found.items() if kind == "Ingress"}
    backends = {}
    for name, ingress in ingresses.items():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                service = path["backend"]["service"]
                assert service["name"] in services, f"{name} routes to no Service"
                backends[path["path"]] = (name, service["name"])
    stream_ingress, stream_service = backends["/v1/stream"]
    annotations = ingresses[stream_ingress]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$arg_session"
    snippet = annotations["nginx.ingress.kubernetes.io/configuration-snippet"]
    assert 'set $args "session=$request_id"' in snippet
    # One balancing rule per Service port in ingress-nginx: the stream needs its own Service.
    assert backends["/"][1] != stream_service

    hpa = found[("HorizontalPodAutoscaler", "ptq4vm")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "ptq4vm"
    assert hpa["spec"]["minReplicas"] >= 2

    claim = found[("PersistentVolumeClaim", "ptq4vm-home")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every replica mounts it"
    job = found[("Job", "ptq4vm-calibrate")]
    for spec in (pod["spec"], job["spec"]["template"]["spec"]):
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == ["ptq4vm-home"]
        assert spec["securityContext"]["runAsNonRoot"] is True
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == container["image"]
    assert "ptq4vm-register" in " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])


def test_compose_replicas_are_the_nginx_upstreams() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    replicas = {
        name: svc for name, svc in services.items() if svc.get("hostname", "").startswith("ptq4vm")
    }
    assert len(replicas) == 2
    site = re.sub(r"#.*", "", (DEPLOY / "nginx" / "ptq4vm.conf").read_text())
    upstreams = re.findall(r"upstream (\w+) \{(.*?)\}", site, re.DOTALL)
    assert {name for name, _ in upstreams} == {"ptq4vm_stream", "ptq4vm_http"}
    stream_upstream = dict(upstreams)["ptq4vm_stream"]
    assert "hash $ptq4vm_session consistent;" in stream_upstream
    for _, body in upstreams:
        servers = re.findall(r"^\s*server (\S+)", body, re.MULTILINE)
        assert servers == [f"{svc['hostname']}:8000" for svc in replicas.values()]
    nginx_address = services["nginx"]["networks"]["ptq4vm"]["ipv4_address"]
    for svc in replicas.values():
        assert "ptq4vm-home:/data" in svc["volumes"], "the registry volume is shared"
        env = svc["environment"]
        assert env["PTQ4VM_BUILD_DEFAULT"] == "false"
        # nginx's X-Forwarded-For is believed from nginx's address, and the page it serves on
        # :8080 is an allowed origin (docs/operations.md, "Behind a proxy").
        proxies = parse_networks(env["PTQ4VM_TRUSTED_PROXIES"])
        assert any(ipaddress.ip_address(nginx_address) in net for net in proxies)
        assert "http://localhost:8080" in env["PTQ4VM_ALLOWED_ORIGINS"]
    for location in re.findall(r"location [^{]*\{(.*?)\n    \}", site, re.DOTALL):
        assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in location
        assert "proxy_set_header Host $http_host;" in location
    assert "./nginx/ptq4vm.conf:/etc/nginx/conf.d/default.conf:ro" in services["nginx"]["volumes"]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_images_follow_the_project(name: str) -> None:
    text = (DEPLOY / name).read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    assert f"ARG TORCH_VERSION={torch_pin.removeprefix('torch==')}" in text
    assert text.startswith("# syntax=docker/dockerfile:1\n")
    assert "FROM python:3.11-slim" in text
    assert re.search(r"^USER ptq4vm$", text, re.MULTILINE), "the service must not run as root"
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.MULTILINE)
    assert "PTQ4VM_HOME=/data" in text
    assert 'VOLUME ["/data"]' in text
    # Every path the image copies is in the build context its .dockerignore leaves.
    ignore = (DEPLOY / f"{name}.dockerignore").read_text()
    for source in re.findall(r"^COPY (?!--from=)(?:--\S+ )*(.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (REPO / path).exists(), path
            assert f"!{path}" in ignore or f"!{path}/**" in ignore, f"{path} is ignored"
    if name == "Dockerfile":
        assert "--index-url https://download.pytorch.org/whl/cpu" in text


def test_entrypoint_fetches_offline_from_the_baked_wheels() -> None:
    script = DEPLOY / "docker-entrypoint.sh"
    subprocess.run(["sh", "-n", str(script)], check=True)
    assert "ptq4vm fetch --quiet --wheel-dir /opt/ptq4vm/wheels" in script.read_text()
    assert 'exec "$@"' in script.read_text()
