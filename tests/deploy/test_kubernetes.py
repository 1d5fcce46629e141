"""deploy/kubernetes/ against the Kubernetes schemas (kubernetes-validate, offline) and against the server itself."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from nst_server.__main__ import build_parser
from nst_server.app import SERVICE_NAME
from nst_server.transport.admission import Admission
from nst_server.transport.metrics import Metrics

from tests.deploy.dockerfile import REPO, stages

MANIFESTS = REPO / "deploy" / "kubernetes"
RESOURCES = sorted(path for path in MANIFESTS.glob("*.yaml") if path.name != "kustomization.yaml")
# The oldest release still in wide use that has everything used here (gRPC probes, appProtocol h2c), and the newest
# the validator knows.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version() + ".0")


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS / name).read_text())


def _container() -> dict[str, Any]:
    (container,) = _load("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return container


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", RESOURCES, ids=lambda path: path.name)
def test_manifest_validates_strictly(path: Path, version: str) -> None:
    """Every manifest is valid against the Kubernetes schemas, unknown fields rejected."""
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, version, strict=True)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The validator is real: a Deployment with a misspelt field fails."""
    deployment = copy.deepcopy(_load("deployment.yaml"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    """`kubectl apply -k deploy/kubernetes/` applies every manifest in the folder."""
    assert sorted(_load("kustomization.yaml")["resources"]) == [path.name for path in RESOURCES]


def test_deployment_agrees_with_the_server_flags() -> None:
    """Probes, ports, grace period and user in the Deployment match what the image's nst-server is told."""
    deployment = _load("deployment.yaml")
    pod = deployment["spec"]["template"]
    container = _container()
    image = stages()["gpu"]
    config = build_parser().parse_args([*image.entrypoint[1:], *container["args"]])
    ports = _ports(container)
    assert (config.device, ports["grpc"], ports["metrics"]) == ("cuda", config.port, config.metrics_port)
    assert ports["http"] == config.http_port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == config.port, probe
    # Readiness asks for the service that goes NOT_SERVING on SIGTERM, so a draining pod leaves the endpoints.
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    # SIGKILL must not come before the server's drain and grace are over (and a little room to cancel and stop).
    assert pod["spec"]["terminationGracePeriodSeconds"] >= config.drain_s + config.grace_s + 5
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(config.metrics_port)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["spec"]["securityContext"]["runAsUser"] == int(image.user)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert config.max_connection_age_s > 0  # clients re-resolve DNS and find pods the autoscaler adds


def test_service_is_headless_on_the_grpc_port() -> None:
    """The Service is headless, selects the Deployment's pods and publishes their gRPC port as HTTP/2 and their
    HTTP port (Connect, gRPC-Web, the page) as HTTP."""
    service, deployment = _load("service.yaml"), _load("deployment.yaml")
    port, http = service["spec"]["ports"]
    assert (http["name"], http["port"], http["targetPort"], http["appProtocol"]) == (
        "http",
        _ports(_container())["http"],
        "http",
        "http",
    )
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert (port["port"], port["targetPort"], port["appProtocol"]) == (
        _ports(_container())["grpc"],
        "grpc",
        "kubernetes.io/h2c",
    )


def test_autoscaler_scales_the_deployment_on_metrics_the_server_exports() -> None:
    """The HPA targets the Deployment, led by nst_jobs_queued, with every metric one that /metrics serves."""
    hpa, deployment = _load("hpa.yaml"), _load("deployment.yaml")
    assert (hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"]) == (
        "Deployment",
        deployment["metadata"]["name"],
    )
    names = [metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"]]
    served = {family.name for family in Metrics(Admission(1, 1), []).registry.collect()}
    assert names[0] == "nst_jobs_queued"
    assert set(names) <= served
