"""deploy/k8s rendered per overlay (Kustomize subset in emage_static.kustomize) and checked offline."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from emage_static import k8s_checks as kc
from emage_static.kustomize import UnsupportedKustomizationError, config_map_hash, render, split_image
from emage_static.services import REPO_ROOT, SERVICES, service

K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = {"dev": K8S / "overlays" / "dev", "production": K8S / "overlays" / "production"}

Manifests = list[dict[str, Any]]


@cache
def _rendered(directory: Path) -> tuple[dict[str, Any], ...]:
    return tuple(render(directory))


def rendered(directory: Path) -> Manifests:
    """A private copy of the rendering, free to mutate."""
    return copy.deepcopy(list(_rendered(directory)))


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    manifests = rendered(OVERLAYS[overlay])
    assert manifests
    assert kc.schema_problems(manifests) == []


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_deploys_every_service_correctly(overlay: str) -> None:
    assert kc.overlay_problems(rendered(OVERLAYS[overlay]), production=overlay == "production") == []


def test_base_validates_and_holds_the_five_services_unpinned() -> None:
    manifests = rendered(K8S / "base")
    assert kc.schema_problems(manifests) == []
    for spec in SERVICES:
        assert kc.deployment_problems(manifests, spec, pinned_image=False) == []
        assert kc.service_problems(manifests, spec) == []
        assert kc.disruption_budget_problems(manifests, spec) == []
    assert all("namespace" not in m["metadata"] for m in manifests), "the base must stay namespace-neutral"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_ships_one_release_of_all_five_images_into_one_namespace(overlay: str) -> None:
    manifests = rendered(OVERLAYS[overlay])
    tags = {
        split_image(c["image"])[1]
        for d in kc.find(manifests, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        if split_image(c["image"])[0].rsplit("/", 1)[-1].startswith("emage-")
    }
    assert len(tags) == 1, f"mixed image tags {tags}"
    namespaces = {m["metadata"].get("namespace") for m in manifests}
    assert len(namespaces) == 1
    assert None not in namespaces


def test_production_overlay_scales_and_exposes_only_the_gateway() -> None:
    manifests = rendered(OVERLAYS["production"])
    assert {h["spec"]["scaleTargetRef"]["name"] for h in kc.find(manifests, "HorizontalPodAutoscaler")} == {
        "access",
        "ingest",
    }
    ingresses = kc.find(manifests, "Ingress")
    assert len(ingresses) == 1
    assert ingresses[0]["spec"]["tls"]


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed"
)
@pytest.mark.parametrize("directory", [K8S / "base", *OVERLAYS.values()], ids=lambda p: p.name)
def test_renderer_agrees_with_kubectl_kustomize(directory: Path) -> None:
    """The subset renderer gives exactly what the real kustomize gives, object by object."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr

    def key(manifest: dict[str, Any]) -> tuple[str, str, str]:
        return manifest["kind"], manifest["metadata"].get("namespace", ""), manifest["metadata"]["name"]

    theirs = {key(m): m for m in yaml.safe_load_all(result.stdout) if m}
    ours = {key(m): m for m in rendered(directory)}
    assert sorted(ours) == sorted(theirs)
    for name, manifest in ours.items():
        assert manifest == theirs[name], name


# --- the renderer --------------------------------------------------------------------------------------


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("namePrefix: emage-\nresources: []\n", encoding="utf-8")
    with pytest.raises(UnsupportedKustomizationError, match="namePrefix"):
        render(tmp_path)


def test_renderer_refuses_a_patch_that_matches_nothing(tmp_path: Path) -> None:
    (tmp_path / "base").symlink_to(K8S / "base")
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [base]\npatches:\n  - patch: |\n      apiVersion: apps/v1\n      kind: Deployment\n"
        "      metadata: {name: nothing}\n      spec: {replicas: 2}\n",
        encoding="utf-8",
    )
    with pytest.raises(UnsupportedKustomizationError, match="matches no resource"):
        render(tmp_path)


def test_renderer_applies_json6902_and_strategic_merge_deletes(tmp_path: Path) -> None:
    (tmp_path / "base").symlink_to(K8S / "base")
    (tmp_path / "kustomization.yaml").write_text(
        """
resources: [base]
patches:
  - target: {kind: Deployment, name: audit}
    patch: |
      - op: replace
        path: /spec/replicas
        value: 4
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {name: EMAGE_AUDIT_LOG_LEVEL, value: DEBUG}
  - patch: |
      apiVersion: apps/v1
      kind: Deployment
      metadata: {name: catalog}
      spec:
        template:
          spec:
            volumes:
              - {name: tmp, $patch: delete}
""",
        encoding="utf-8",
    )
    manifests = render(tmp_path)
    audit = kc.find(manifests, "Deployment", "audit")[0]
    assert audit["spec"]["replicas"] == 4
    assert audit["spec"]["template"]["spec"]["containers"][0]["env"][-1]["value"] == "DEBUG"
    catalog = kc.find(manifests, "Deployment", "catalog")[0]
    assert catalog["spec"]["template"]["spec"]["volumes"] == []


def _overlay_with_component(tmp_path: Path) -> Path:
    """An overlay over the real base with a Component, the way NetworkPolicies are meant to slot in."""
    (tmp_path / "base").symlink_to(K8S / "base")
    component = tmp_path / "components" / "deny-ingress"
    component.mkdir(parents=True)
    (component / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources: [policy.yaml]\n"
        "labels:\n  - pairs: {emage.example.org/policy: default-deny}\n",
        encoding="utf-8",
    )
    (component / "policy.yaml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny}\n"
        "spec: {podSelector: {}, policyTypes: [Ingress]}\n",
        encoding="utf-8",
    )
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "namespace: emage-test\nresources: [../base]\ncomponents: [../components/deny-ingress]\n",
        encoding="utf-8",
    )
    return overlay


def test_renderer_applies_components(tmp_path: Path) -> None:
    manifests = render(_overlay_with_component(tmp_path))
    policy = kc.find(manifests, "NetworkPolicy", "default-deny")
    assert policy
    assert policy[0]["metadata"]["namespace"] == "emage-test"
    assert all(m["metadata"]["labels"]["emage.example.org/policy"] == "default-deny" for m in manifests)


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed"
)
def test_renderer_agrees_with_kubectl_kustomize_on_components(tmp_path: Path) -> None:
    overlay = _overlay_with_component(tmp_path)
    result = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    theirs = sorted((m for m in yaml.safe_load_all(result.stdout) if m), key=_identity)
    assert sorted(render(overlay), key=_identity) == theirs


def _identity(manifest: dict[str, Any]) -> tuple[str, str, str]:
    return manifest["kind"], manifest["metadata"].get("namespace", ""), manifest["metadata"]["name"]


def test_config_map_hash_is_kustomizes() -> None:
    # `kubectl kustomize` names a configMapGenerator with literals [A=b] "<name>-b9t2424hkf".
    assert config_map_hash({"A": "b"}) == "b9t2424hkf"


# --- the checks catch what they claim to ---------------------------------------------------------------


def _deployment(manifests: Manifests, name: str) -> dict[str, Any]:
    return kc.find(manifests, "Deployment", name)[0]


def _container(manifests: Manifests, name: str) -> dict[str, Any]:
    return _deployment(manifests, name)["spec"]["template"]["spec"]["containers"][0]


def _config(manifests: Manifests, name: str) -> dict[str, str]:
    reference = _container(manifests, name)["envFrom"][0]["configMapRef"]["name"]
    data: dict[str, str] = kc.find(manifests, "ConfigMap", reference)[0]["data"]
    return data


def _mutation(function: Callable[[Manifests], Any]) -> Callable[[Manifests], None]:
    def mutate(manifests: Manifests) -> None:
        function(manifests)

    return mutate


K8S_BREAKAGES: dict[str, tuple[Callable[[Manifests], None], str]] = {
    "no readiness probe": (
        _mutation(lambda m: _container(m, "ingest").pop("readinessProbe")),
        "no readinessProbe",
    ),
    "liveness on /readyz": (
        _mutation(lambda m: _container(m, "catalog")["livenessProbe"]["httpGet"].update(path="/readyz")),
        "livenessProbe must GET /healthz",
    ),
    "probe on another port": (
        _mutation(lambda m: _container(m, "consent")["readinessProbe"]["httpGet"].update(port=9000)),
        "readinessProbe port",
    ),
    "container port off settings": (
        _mutation(lambda m: _container(m, "audit")["ports"][0].update(containerPort=8000)),
        "container port 'http'",
    ),
    "no CPU limit": (
        _mutation(lambda m: _container(m, "access")["resources"]["limits"].pop("cpu")),
        "resources.limits.cpu",
    ),
    "request above limit": (
        _mutation(lambda m: _container(m, "access")["resources"]["requests"].update(memory="4Gi")),
        "exceeds its limit",
    ),
    "writable root": (
        _mutation(lambda m: _container(m, "ingest")["securityContext"].update(readOnlyRootFilesystem=False)),
        "readOnlyRootFilesystem",
    ),
    "capabilities kept": (
        _mutation(lambda m: _container(m, "ingest")["securityContext"]["capabilities"].update(drop=[])),
        "capabilities.drop",
    ),
    "privilege escalation": (
        _mutation(lambda m: _container(m, "ingest")["securityContext"].pop("allowPrivilegeEscalation")),
        "allowPrivilegeEscalation",
    ),
    "root user": (
        _mutation(
            lambda m: _deployment(m, "audit")["spec"]["template"]["spec"]["securityContext"].update(
                runAsUser=0
            )
        ),
        "runAsUser",
    ),
    "no seccomp": (
        _mutation(
            lambda m: _deployment(m, "audit")["spec"]["template"]["spec"]["securityContext"].pop(
                "seccompProfile"
            )
        ),
        "seccompProfile",
    ),
    "API token mounted": (
        _mutation(
            lambda m: _deployment(m, "catalog")["spec"]["template"]["spec"].pop(
                "automountServiceAccountToken"
            )
        ),
        "automountServiceAccountToken",
    ),
    "inline Mongo URI": (
        _mutation(
            lambda m: _container(m, "consent")["env"].__setitem__(
                slice(None),
                [{"name": "EMAGE_CONSENT_MONGO_URI", "value": "mongodb://u:p@db/?replicaSet=rs0"}],
            )
        ),
        "credentials only via secretKeyRef",
    ),
    "unknown setting in config": (
        _mutation(lambda m: _config(m, "ingest").update(EMAGE_INGEST_S3_BUCKETS="x")),
        "not a setting",
    ),
    "setting of another service": (
        _mutation(lambda m: _config(m, "catalog").update(EMAGE_INGEST_S3_BUCKET="x")),
        "not a setting",
    ),
    "missing Kafka bootstrap": (
        _mutation(lambda m: _config(m, "audit").pop("EMAGE_AUDIT_KAFKA_BOOTSTRAP_SERVERS")),
        "required connection setting EMAGE_AUDIT_KAFKA_BOOTSTRAP_SERVERS",
    ),
    "missing OIDC issuer": (
        _mutation(lambda m: _config(m, "access").pop("EMAGE_ACCESS_OIDC_ISSUER")),
        "EMAGE_ACCESS_OIDC_ISSUER",
    ),
    "secret in a ConfigMap": (
        _mutation(lambda m: _config(m, "ingest").update(EMAGE_INGEST_S3_SECRET_ACCESS_KEY="x")),
        "looks like a credential",
    ),
    "rendered Secret": (
        _mutation(
            lambda m: m.append(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "ingest-credentials"},
                    "stringData": {"mongo-uri": "mongodb://u:p@db"},
                }
            )
        ),
        "secrets must not be part",
    ),
    "wrong image": (
        _mutation(lambda m: _container(m, "ingest").update(image="registry/emage-catalog:1")),
        "is not the emage-ingest image",
    ),
    "latest image": (
        _mutation(lambda m: _container(m, "ingest").update(image="registry/emage-ingest:latest")),
        "pinned",
    ),
    "service targets another port": (
        _mutation(lambda m: kc.find(m, "Service", "access")[0]["spec"]["ports"][0].update(targetPort=9090)),
        "targetPort",
    ),
    "service selects nothing": (
        _mutation(lambda m: kc.find(m, "Service", "consent")[0]["spec"].update(selector={"app": "consent"})),
        "selector does not select",
    ),
    "exposed service": (
        _mutation(lambda m: kc.find(m, "Service", "catalog")[0]["spec"].update(type="NodePort")),
        "NodePort",
    ),
    "no disruption budget": (
        _mutation(lambda m: m.remove(kc.find(m, "PodDisruptionBudget", "audit")[0])),
        "PodDisruptionBudget",
    ),
    "budget blocking drains": (
        _mutation(
            lambda m: kc.find(m, "PodDisruptionBudget", "audit")[0]["spec"].update(
                maxUnavailable=None, minAvailable=5
            )
        ),
        "blocks every node drain",
    ),
    "ingress to an internal service": (
        _mutation(
            lambda m: kc.find(m, "Ingress")[0]["spec"]["rules"][0]["http"]["paths"][0]["backend"][
                "service"
            ].update(name="catalog")
        ),
        "only access is public",
    ),
    "ingress without TLS": (_mutation(lambda m: kc.find(m, "Ingress")[0]["spec"].pop("tls")), "TLS"),
    "autoscaler of nothing": (
        _mutation(
            lambda m: kc.find(m, "HorizontalPodAutoscaler", "ingest")[0]["spec"]["scaleTargetRef"].update(
                name="ingester"
            )
        ),
        "does not exist",
    ),
    "single production replica": (
        _mutation(lambda m: _deployment(m, "consent")["spec"].update(replicas=1)),
        "2+ replicas",
    ),
}


@pytest.mark.parametrize("breakage", sorted(K8S_BREAKAGES))
def test_k8s_checks_catch(breakage: str) -> None:
    manifests = rendered(OVERLAYS["production"])
    mutate, expected = K8S_BREAKAGES[breakage]
    mutate(manifests)
    problems = kc.overlay_problems(manifests, production=True)
    assert any(expected in problem for problem in problems), problems


def test_schema_check_catches_a_misspelt_field() -> None:
    manifests = rendered(OVERLAYS["dev"])
    _container(manifests, "ingest")["readinesProbe"] = _container(manifests, "ingest").pop("readinessProbe")
    problems = kc.schema_problems(manifests)
    assert any("readinesProbe" in problem for problem in problems), problems


def test_dev_overlay_may_not_hide_a_missing_ingest_secret() -> None:
    manifests = rendered(OVERLAYS["dev"])
    container = _container(manifests, "ingest")
    container["env"] = [e for e in container["env"] if e["name"] != "EMAGE_INGEST_S3_ACCESS_KEY_ID"]
    assert any(
        "EMAGE_INGEST_S3_ACCESS_KEY_ID" in p for p in kc.deployment_problems(manifests, service("ingest"))
    )
