"""deploy/ray checked offline: the RayCluster (a KubeRay custom resource) against the part of
KubeRay's `ray.io/v1` schema it uses (unknown fields fail), every pod template in it and the
standard objects beside it against the Kubernetes schemas (strict), and the files agreeing with
each other and with the project (Ray pin, image, volumes, the driver's address)."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO
from tests.deploy.test_manifests import K8S_VERSIONS, documents, objects

RAY = DEPLOY / "ray"
STANDARD = ("pvc.yaml", "batch-job.yaml")

_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_TEMPLATE = {"type": "object"}  # checked against the Kubernetes PodTemplate schema below
# The fields of KubeRay's RayCluster CRD (ray.io/v1) this manifest may use, with their types
# as the CRD declares them; anything else is a typo here.
RAYCLUSTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["headGroupSpec"],
            "additionalProperties": False,
            "properties": {
                "rayVersion": {"type": "string"},
                "enableInTreeAutoscaling": {"type": "boolean"},
                "suspend": {"type": "boolean"},
                "headGroupSpec": {
                    "type": "object",
                    "required": ["template"],
                    "additionalProperties": False,
                    "properties": {
                        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                        "rayStartParams": _STRINGS,
                        "enableIngress": {"type": "boolean"},
                        "template": _TEMPLATE,
                    },
                },
                "workerGroupSpecs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["groupName", "template"],
                        "additionalProperties": False,
                        "properties": {
                            "groupName": {"type": "string"},
                            "replicas": {"type": "integer", "minimum": 0},
                            "minReplicas": {"type": "integer", "minimum": 0},
                            "maxReplicas": {"type": "integer", "minimum": 0},
                            "numOfHosts": {"type": "integer", "minimum": 1},
                            "rayStartParams": _STRINGS,
                            "suspend": {"type": "boolean"},
                            "template": _TEMPLATE,
                        },
                    },
                },
            },
        },
    },
}


def raycluster() -> dict[str, Any]:
    (cluster,) = documents(RAY / "raycluster.yaml")
    return cluster


def pod_templates(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    spec = cluster["spec"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def as_pod_template(template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "t"},
        "template": template,
    }


def test_raycluster_matches_kuberay_fields() -> None:
    jsonschema.validate(raycluster(), RAYCLUSTER_SCHEMA)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_raycluster_pods_match_the_kubernetes_schema(version: str) -> None:
    for template in pod_templates(raycluster()):
        kubernetes_validate.validate(as_pod_template(template), version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", STANDARD)
def test_standard_objects_match_the_kubernetes_schema(name: str, version: str) -> None:
    for doc in documents(RAY / name):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_checks_catch_mistakes() -> None:
    cluster = raycluster()
    misspelt = copy.deepcopy(cluster)
    misspelt["spec"]["workerGroupSpecs"][0]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        jsonschema.validate(misspelt, RAYCLUSTER_SCHEMA)
    not_a_string = copy.deepcopy(cluster)
    not_a_string["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(not_a_string, RAYCLUSTER_SCHEMA)
    bad_pod = copy.deepcopy(pod_templates(cluster)[1])
    bad_pod["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError, match="volumeMount"):
        kubernetes_validate.validate(as_pod_template(bad_pod), K8S_VERSIONS[0], strict=True)


def _pin(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_the_cluster_fits_the_project() -> None:
    cluster = raycluster()
    assert cluster["spec"]["rayVersion"] == _pin("ray"), "nodes and drivers need one Ray"
    service_image = objects()[("Deployment", "ptq4vm")]["spec"]["template"]["spec"]["containers"][
        0
    ]["image"]
    (job,) = documents(RAY / "batch-job.yaml")
    job_pod = job["spec"]["template"]
    claims = {
        p["metadata"]["name"]
        for p in documents(RAY / "pvc.yaml") + documents(DEPLOY / "k8s" / "pvc.yaml")
    }
    for template in [*pod_templates(cluster), job_pod]:
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        containers = spec["containers"] + spec.get("initContainers", [])
        for container in containers:
            assert container["image"] == service_image
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == "ptq4vm-home"
        assert volumes[mounts["/videos"]]["persistentVolumeClaim"]["claimName"] == "ptq4vm-videos"
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["PTQ4VM_HOME"]["value"] == "/data"
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "ptq4vm-ray-auth"
    for claim in documents(RAY / "pvc.yaml"):
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every node mounts it"

    # Workers: Ray's CPUs are the container's CPU limit (one actor per CPU, no oversubscription).
    for group in cluster["spec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert group["rayStartParams"]["num-cpus"] == limits["cpu"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"

    # The driver joins the head's Service (KubeRay names it <cluster>-head-svc) on the GCS port.
    args = job_pod["spec"]["containers"][0]["args"]
    assert args[:2] == ["ptq4vm", "batch"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    gcs = next(p["containerPort"] for p in head["ports"] if p["name"] == "gcs")
    address = args[args.index("--ray-address") + 1]
    assert address == f"{cluster['metadata']['name']}-head-svc:{gcs}"
    assert {"--out", "--model"} <= set(args)
    assert all(a.startswith("/videos/") for a in (args[2], args[args.index("--out") + 1]))


def test_kustomization_lists_the_cluster_objects() -> None:
    (kustomization,) = documents(RAY / "kustomization.yaml")
    assert set(kustomization["resources"]) == {"pvc.yaml", "raycluster.yaml"}
    assert yaml.safe_load((RAY / "kustomization.yaml").read_text())["kind"] == "Kustomization"


def test_the_image_installs_ray() -> None:
    assert "'.[ray]'" in (DEPLOY / "Dockerfile").read_text()
