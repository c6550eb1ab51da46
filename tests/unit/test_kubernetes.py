"""The Kubernetes manifests of deploy/kubernetes/: each overlay renders, validates against a stated Kubernetes
version's schemas in strict mode, and agrees with the service's real options and defaults."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.config.settings import OPTIONS, Settings, load_settings
from service.runtime.process import stop_seconds

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
#: The Kubernetes version the manifests are written for (native gRPC probes: 1.27 and later).
KUBERNETES_VERSION = "1.34.0"
OVERLAYS = ("single", "cluster")
UID = 10001

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed: its kustomize renders the overlays"
)


def image_database() -> Path:
    """Where the image keeps the SQLite file (its ROUTEE_CALLBACKS_DATABASE)."""
    found = re.search(r"ROUTEE_CALLBACKS_DATABASE=(\S+)", (ROOT / "deploy/container/Containerfile").read_text())
    assert found
    return Path(found.group(1))


def render(overlay: str) -> list[dict[str, Any]]:
    """Every object of an overlay, as ``kubectl kustomize`` renders it (offline)."""
    output = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / overlay)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [document for document in yaml.safe_load_all(output) if document]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of a kind (and name)."""
    found = [item for item in objects if item["kind"] == kind and name in (None, item["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The StatefulSet or Deployment that runs the service."""
    (found,) = [item for item in objects if item["kind"] in ("StatefulSet", "Deployment")]
    return found


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The service's container."""
    (found,) = workload(objects)["spec"]["template"]["spec"]["containers"]
    return found


def options(objects: list[dict[str, Any]]) -> Settings:
    """The settings the pod's ConfigMap gives the service, read by the service's own loader."""
    config = one(objects, "ConfigMap")
    return load_settings({}, config["data"])


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


class TestManifests:
    """Both overlays."""

    def test_every_object_validates_strictly(self, rendered: list[dict[str, Any]]) -> None:
        """Every rendered object is valid for the stated Kubernetes version, unknown fields refused."""
        assert rendered
        for item in rendered:
            kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)

    def test_ports_and_probes_match_the_service(self, rendered: list[dict[str, Any]]) -> None:
        """The container's ports are the service's default binds (as the image sets them); liveness and startup
        ask gRPC's health service on the gRPC port, readiness /readyz on the HTTP port; the Services point at
        those ports, gRPC's marked as such."""
        defaults = Settings()
        pod = container(rendered)
        ports = {port["name"]: port["containerPort"] for port in pod["ports"]}
        assert ports == {"http": defaults.http_bind.port, "grpc": defaults.grpc_bind.port}
        assert pod["livenessProbe"]["grpc"]["port"] == ports["grpc"]
        assert pod["startupProbe"]["grpc"]["port"] == ports["grpc"]
        assert pod["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        http, grpc = (
            one(rendered, "Service", "routee-callbacks-http"),
            one(rendered, "Service", "routee-callbacks-grpc"),
        )
        assert [(p["targetPort"], p.get("appProtocol")) for p in http["spec"]["ports"]] == [("http", "http")]
        assert [(p["targetPort"], p.get("appProtocol")) for p in grpc["spec"]["ports"]] == [("grpc", "grpc")]
        labels = workload(rendered)["spec"]["template"]["metadata"]["labels"]
        for service in (http, grpc):
            assert service["spec"]["selector"].items() <= labels.items()

    def test_the_options_are_real_and_the_kubelet_may_probe(self, rendered: list[dict[str, Any]]) -> None:
        """Every variable of the ConfigMap is an option the service reads, with a valid value; the monitoring
        networks reach beyond loopback (the kubelet probes /readyz from its node)."""
        config = one(rendered, "ConfigMap")["data"]
        known = {option.env for option in OPTIONS}
        assert set(config) <= known
        settings = options(rendered)
        assert any(not network.is_loopback for network in settings.monitor_cidrs)
        assert settings.trusted_proxies

    def test_the_grace_period_covers_the_pause_and_the_drain(self, rendered: list[dict[str, Any]]) -> None:
        """The kubelet counts preStop inside terminationGracePeriodSeconds: it exceeds the pause plus the longest
        the instance takes to stop after SIGTERM with the ConfigMap's --shutdown-grace."""
        spec = workload(rendered)["spec"]["template"]["spec"]
        pause = container(rendered)["lifecycle"]["preStop"]["exec"]["command"]
        assert pause[0] == "sleep"
        assert spec["terminationGracePeriodSeconds"] > int(pause[1]) + stop_seconds(options(rendered))

    def test_security_context(self, rendered: list[dict[str, Any]]) -> None:
        """Non-root as the image's user, read-only root with the runtime directory on an emptyDir, every
        capability dropped, seccomp RuntimeDefault, no service account token."""
        spec = workload(rendered)["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == UID
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        security = container(rendered)["securityContext"]
        assert security == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        mounts = {mount["mountPath"]: mount["name"] for mount in container(rendered)["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]  # tempfile's directory: the instance's runtime files
        assert container(rendered)["resources"]["limits"]["memory"]

    def test_secrets_hold_the_credentials(self, rendered: list[dict[str, Any]]) -> None:
        """Routee's credentials come from a Secret, never from the ConfigMap; TLS files from a Secret volume."""
        env = {item["name"]: item for item in container(rendered).get("env", [])}
        for name in ("ROUTEE_CALLBACKS_ROUTEE_APPLICATION_ID", "ROUTEE_CALLBACKS_ROUTEE_APPLICATION_SECRET"):
            assert "secretKeyRef" in env[name]["valueFrom"]
        assert not any("SECRET" in key or "PASSWORD" in key for key in one(rendered, "ConfigMap")["data"])
        volumes = workload(rendered)["spec"]["template"]["spec"]["volumes"]
        assert any(volume.get("secret", {}).get("secretName") == "routee-callbacks-tls" for volume in volumes)


class TestOverlays:
    """What each overlay is for."""

    def test_single_is_one_writer_on_a_persistent_volume(self) -> None:
        """One StatefulSet replica, its SQLite file on a volume claim, replaced one pod at a time."""
        objects = render("single")
        statefulset = one(objects, "StatefulSet")
        assert statefulset["spec"]["replicas"] == 1
        assert statefulset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
        (claim,) = statefulset["spec"]["volumeClaimTemplates"]
        mounts = {mount["name"]: mount["mountPath"] for mount in container(objects)["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == str(image_database().parent)
        assert one(objects, "Service", statefulset["spec"]["serviceName"])["spec"]["clusterIP"] == "None"

    def test_cluster_is_several_replicas_on_postgres(self) -> None:
        """A Deployment of several replicas spread over nodes, the database URI and password from a Secret, a
        policy/v1 PodDisruptionBudget over its pods, rolling updates that keep every replica serving."""
        objects = render("cluster")
        deployment = one(objects, "Deployment")
        assert deployment["spec"]["replicas"] >= 2
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert "kubernetes.io/hostname" in {constraint["topologyKey"] for constraint in spread}
        env = {item["name"]: item for item in container(objects)["env"]}
        assert env["ROUTEE_CALLBACKS_DATABASE"]["valueFrom"]["secretKeyRef"]["name"] == "routee-callbacks-database"
        assert "secretKeyRef" in env["PGPASSWORD"]["valueFrom"]
        budget = one(objects, "PodDisruptionBudget")
        assert budget["apiVersion"] == "policy/v1"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
