"""deploy/k8s beyond the Deployments: custom resources, network policies, scaling, engines, observability."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from emage_static import k8s_checks as kc
from emage_static import k8s_platform as kp
from emage_static.crds import covered_kinds
from emage_static.kustomize import render
from emage_static.realm_import import REALM_IMPORT, render_realm_import
from emage_static.services import REPO_ROOT, SERVICE_NAMES

K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = {"dev": K8S / "overlays" / "dev", "production": K8S / "overlays" / "production"}
ENGINES = K8S / "engines"
DASHBOARDS = K8S / "components" / "observability" / "dashboards"

Manifests = list[dict[str, Any]]


@cache
def _rendered(directory: Path) -> tuple[dict[str, Any], ...]:
    return tuple(render(directory))


def rendered(directory: Path) -> Manifests:
    return copy.deepcopy(list(_rendered(directory)))


def production() -> Manifests:
    return rendered(OVERLAYS["production"])


def engines() -> Manifests:
    return rendered(ENGINES)


# --- custom resources ----------------------------------------------------------------------------------


def test_engines_validate_against_their_schemas_and_inline_no_secret() -> None:
    manifests = engines()
    assert {(m["apiVersion"], m["kind"]) for m in manifests} <= covered_kinds(kc.KUBERNETES_VERSION)
    assert kc.schema_problems(manifests) == []
    assert kc.inline_secret_problems(manifests) == []


def test_every_custom_resource_kind_has_a_schema() -> None:
    builtin_groups = ("v1", "apps/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1")
    kinds = {
        (m["apiVersion"], m["kind"])
        for directory in (*OVERLAYS.values(), ENGINES)
        for m in rendered(directory)
        if m["apiVersion"] not in builtin_groups
    }
    assert kinds <= covered_kinds(kc.KUBERNETES_VERSION)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(manifest: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = manifest
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value

    return mutate


CRD_BREAKAGES: dict[str, tuple[str, str, Callable[[dict[str, Any]], None], str]] = {
    "misspelt Kafka field": ("Kafka", "emage", _set("spec.kafka.listener", []), "listener"),
    "unknown listener type": ("Kafka", "emage", _set("spec.kafka.listeners.0.type", "public"), "public"),
    "node pool role": ("KafkaNodePool", "brokers", _set("spec.roles", ["worker"]), "worker"),
    "topic partitions as text": (
        "KafkaTopic",
        "emage-instance-stored-v1",
        _set("spec.partitions", "12"),
        "12",
    ),
    "ACL operation": (
        "KafkaUser",
        "emage-catalog",
        _set("spec.authorization.acls.0.operations", ["Reed"]),
        "Reed",
    ),
    "Mongo user without role": ("MongoDBCommunity", "emage-mongo", _set("spec.users.0.roles", []), "roles"),
    "misspelt Mongo field": ("MongoDBCommunity", "emage-mongo", _set("spec.member", 3), "member"),
    "Keycloak db vendor": ("Keycloak", "keycloak", _set("spec.db.vendor", "postgresql"), "postgresql"),
    "realm import target": ("KeycloakRealmImport", "emage", _set("spec.keycloakCR", "x"), "keycloakCR"),
    "resources typo inside a CR": (
        "KafkaNodePool",
        "brokers",
        _set("spec.resources.limit", {"cpu": "1"}),
        "limit",
    ),
}


@pytest.mark.parametrize("breakage", sorted(CRD_BREAKAGES))
def test_custom_resource_schemas_catch(breakage: str) -> None:
    kind, name, mutate, expected = CRD_BREAKAGES[breakage]
    manifests = engines()
    mutate(kc.find(manifests, kind, name)[0])
    problems = kc.schema_problems(manifests)
    assert any(expected in problem for problem in problems), problems


def test_keda_schema_catches_an_unknown_kafka_scaler_parameter() -> None:
    manifests = production()
    kc.find(manifests, "ScaledObject", "catalog")[0]["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "5"
    assert any("lagTreshold" in problem for problem in kc.schema_problems(manifests))


def _npm_validators() -> Path | None:
    """``@kubernetes-models`` validators generated from the upstream KEDA and prometheus-operator CRDs."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    cache_root = Path(os.environ.get("EMAGE_CACHE", Path.home() / ".cache" / "emage"))
    directory = cache_root / "k8s-models-keda-2.0.0-prometheus-operator-6.0.0"
    marker = directory / ".complete"
    if not marker.exists():
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "package.json").write_text('{"private": true, "type": "module"}\n', encoding="utf-8")
        result = subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "@kubernetes-models/keda@2.0.0",
                "@kubernetes-models/prometheus-operator@6.0.0",
            ],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            return None
        marker.touch()
    return directory


_NODE_VALIDATE = """
import { readFileSync } from "node:fs";
const models = {
  "keda.sh/v1alpha1/ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject",
  "keda.sh/v1alpha1/TriggerAuthentication": "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication",
  "monitoring.coreos.com/v1/ServiceMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
  "monitoring.coreos.com/v1/PodMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor",
};
const problems = [];
for (const manifest of JSON.parse(readFileSync(0, "utf8"))) {
  const module = await import(models[`${manifest.apiVersion}/${manifest.kind}`]);
  try { new module[manifest.kind](manifest).validate(); }
  catch (error) { problems.push(`${manifest.kind}/${manifest.metadata.name}: ${error.message}`); }
}
console.log(JSON.stringify(problems));
"""


def test_keda_and_prometheus_objects_pass_the_upstream_generated_validators() -> None:
    directory = _npm_validators()
    if directory is None:
        pytest.skip("Node.js/npm or the @kubernetes-models packages are not available")
    upstream = {"keda.sh/v1alpha1", "monitoring.coreos.com/v1"}
    objects = [
        m for d in (OVERLAYS["production"], ENGINES) for m in rendered(d) if m["apiVersion"] in upstream
    ]
    assert {m["kind"] for m in objects} == {
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "PodMonitor",
    }
    broken = copy.deepcopy(next(m for m in objects if m["kind"] == "ScaledObject"))
    broken["spec"]["maxReplicaCount"] = "twelve"
    (directory / "validate.mjs").write_text(_NODE_VALIDATE, encoding="utf-8")
    result = subprocess.run(
        ["node", "validate.mjs"],
        cwd=directory,
        input=json.dumps([*objects, broken]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    problems = json.loads(result.stdout)
    assert len(problems) == 1, problems
    assert "maxReplicaCount" in problems[0]


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed"
)
def test_renderer_agrees_with_kubectl_kustomize_on_the_engines() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(ENGINES)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr

    def key(manifest: dict[str, Any]) -> tuple[str, str, str]:
        return manifest["kind"], manifest["metadata"].get("namespace", ""), manifest["metadata"]["name"]

    theirs = sorted((m for m in yaml.safe_load_all(result.stdout) if m), key=key)
    assert sorted(engines(), key=key) == theirs


# --- NetworkPolicies ------------------------------------------------------------------------------------

SERVICES_AND_PORTS = {"ingest": 8081, "catalog": 8082, "consent": 8083, "access": 8080, "audit": 8084}
KAFKA_PEER = "ns:emage-data/strimzi.io/broker-role=true,strimzi.io/cluster=emage"
MONGO_PEER = "ns:emage-data/app=emage-mongo-svc"
DNS_PEER = "ns:kube-system/k8s-app=kube-dns"
CIDR = {name: f"cidr:{block}" for name, block in kp.PLACEHOLDER_CIDRS.items()}

#: ARCHITECTURE.md's flows between the pods of the namespace, and nothing else.
EXPECTED_INTERNAL = {
    ("access", "catalog", "8082/TCP"),
    ("access", "ingest", "8081/TCP"),
    ("access", "consent", "8083/TCP"),
    ("access", "audit", "8084/TCP"),
    ("consent", "catalog", "8082/TCP"),
    *((name, kp.COLLECTOR, "4318/TCP") for name in SERVICE_NAMES),
}
EXPECTED_EXTERNAL_INGRESS = {
    ("access", "ns:ingress-nginx/app.kubernetes.io/name=ingress-nginx", "8080/TCP"),
    ("ingest", CIDR["hospitals"], "11112/TCP"),
    *(
        (name, "ns:monitoring/app.kubernetes.io/name=prometheus", f"{port}/TCP")
        for name, port in SERVICES_AND_PORTS.items()
    ),
}
EXPECTED_EXTERNAL_EGRESS = {
    *(
        (name, peer, port)
        for name in SERVICE_NAMES
        for peer, port in ((KAFKA_PEER, "9093/TCP"), (MONGO_PEER, "27017/TCP"))
    ),
    *((name, DNS_PEER, port) for name in (*SERVICE_NAMES, kp.COLLECTOR) for port in ("53/UDP", "53/TCP")),
    ("ingest", CIDR["s3"], "443/TCP"),
    ("access", CIDR["oidc"], "443/TCP"),
    ("audit", CIDR["syslog"], "6514/TCP"),
    (kp.COLLECTOR, CIDR["tracing-backend"], "4317/TCP"),
}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_network_policies_allow_exactly_the_architecture(overlay: str) -> None:
    manifests = rendered(OVERLAYS[overlay])
    assert kp.network_policy_problems(manifests) == []
    flows = kp.network_flows(manifests)
    pods = kp.workloads(manifests)
    assert flows.isolated_ingress == flows.isolated_egress == {p.name for p in pods}
    assert flows.internal(pods) == EXPECTED_INTERNAL
    assert flows.external_ingress() == EXPECTED_EXTERNAL_INGRESS
    assert flows.external_egress() == EXPECTED_EXTERNAL_EGRESS


def _policy(manifests: Manifests, name: str) -> dict[str, Any]:
    return kc.find(manifests, "NetworkPolicy", name)[0]


POLICY_BREAKAGES: dict[str, tuple[Callable[[Manifests], None], str]] = {
    "no default deny": (lambda m: m.remove(_policy(m, "default-deny")), "no default-deny"),
    "policy selecting nothing": (
        lambda m: _policy(m, "catalog")["spec"]["podSelector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "catalogue"}
        ),
        "selects no workload",
    ),
    "peer selecting nothing": (
        lambda m: _policy(m, "consent")["spec"]["egress"][0]["to"][0]["podSelector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "katalog"}
        ),
        "selects no workload",
    ),
    "ingress on a port the pod lacks": (
        lambda m: _policy(m, "audit")["spec"]["ingress"][0]["ports"][0].update(port=8085),
        "not a container port of audit",
    ),
    "named port the pod lacks": (
        lambda m: _policy(m, "prometheus-scrape")["spec"]["ingress"][0]["ports"][0].update(port="metrics"),
        "'metrics' is not a port",
    ),
    "egress the destination refuses": (
        lambda m: _policy(m, "catalog")["spec"]["ingress"][0]["from"].pop(1),
        "consent -> catalog:8082/TCP is allowed but catalog refuses it",
    ),
}


@pytest.mark.parametrize("breakage", sorted(POLICY_BREAKAGES))
def test_network_policy_checks_catch(breakage: str) -> None:
    manifests = production()
    mutate, expected = POLICY_BREAKAGES[breakage]
    mutate(manifests)
    problems = kp.network_policy_problems(manifests)
    assert any(expected in problem for problem in problems), problems


def test_an_extra_flow_changes_the_allowed_set() -> None:
    manifests = production()
    _policy(manifests, "catalog")["spec"]["ingress"][0]["from"].append(
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingest"}}}
    )
    _policy(manifests, "ingest")["spec"].setdefault("egress", []).append(
        {
            "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "catalog"}}}],
            "ports": [{"port": 8082}],
        }
    )
    assert kp.network_flows(manifests).internal(kp.workloads(manifests)) - EXPECTED_INTERNAL == {
        ("ingest", "catalog", "8082/TCP")
    }


# --- autoscaling ----------------------------------------------------------------------------------------


def test_production_scales_the_consumers_on_lag_and_the_http_services_on_cpu() -> None:
    manifests = production()
    assert kp.scaled_object_problems(manifests, engines(), expected_targets={"catalog", "audit"}) == []
    assert kc.autoscaler_problems(manifests, expected_targets={"access", "ingest"}) == []


def test_dev_has_no_autoscaling() -> None:
    manifests = rendered(OVERLAYS["dev"])
    assert kp.scaled_object_problems(manifests, engines(), expected_targets=set()) == []


def _trigger(manifests: Manifests, name: str, index: int = 0) -> dict[str, Any]:
    trigger: dict[str, Any] = kc.find(manifests, "ScaledObject", name)[0]["spec"]["triggers"][index]
    return trigger


def _config_of(manifests: Manifests, name: str) -> dict[str, str]:
    deployment = kc.find(manifests, "Deployment", name)[0]
    reference = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    data: dict[str, str] = kc.find(manifests, "ConfigMap", reference)[0]["data"]
    return data


SCALING_BREAKAGES: dict[str, tuple[Callable[[Manifests], None], str]] = {
    "wrong consumer group": (
        lambda m: _trigger(m, "catalog")["metadata"].update(consumerGroup="catalogue"),
        "is not catalog's group",
    ),
    "group renamed in the settings only": (
        lambda m: _config_of(m, "audit").update(EMAGE_AUDIT_CONSUMER_GROUP="audit-v2"),
        "is not audit's group 'audit-v2'",
    ),
    "topic not consumed": (
        lambda m: _trigger(m, "catalog")["metadata"].update(topic="emage.study.changed.v1"),
        "does not consume",
    ),
    "audited topic left out": (
        lambda m: kc.find(m, "ScaledObject", "audit")[0]["spec"]["triggers"].pop(),
        "triggers cover",
    ),
    "more replicas than partitions": (
        lambda m: kc.find(m, "ScaledObject", "catalog")[0]["spec"].update(maxReplicaCount=24),
        "exceeds the 12 partitions",
    ),
    "other bootstrap": (
        lambda m: _trigger(m, "audit", 1)["metadata"].update(bootstrapServers="kafka:9092"),
        "bootstrapServers",
    ),
    "no TLS": (lambda m: _trigger(m, "catalog")["metadata"].update(tls="disable"), "tls"),
    "HPA and KEDA on one Deployment": (
        lambda m: kc.find(m, "HorizontalPodAutoscaler", "ingest")[0]["spec"]["scaleTargetRef"].update(
            name="catalog"
        ),
        "also has a HorizontalPodAutoscaler",
    ),
    "scaling a service without consumer group": (
        lambda m: kc.find(m, "ScaledObject", "catalog")[0]["spec"]["scaleTargetRef"].update(name="consent"),
        "no consumer group",
    ),
}


@pytest.mark.parametrize("breakage", sorted(SCALING_BREAKAGES))
def test_scaling_checks_catch(breakage: str) -> None:
    manifests = production()
    mutate, expected = SCALING_BREAKAGES[breakage]
    mutate(manifests)
    problems = kp.scaled_object_problems(manifests, engines(), expected_targets={"catalog", "audit"})
    assert any(expected in problem for problem in problems), problems


# --- engines --------------------------------------------------------------------------------------------


def test_kafka_cluster_topics_and_users_match_the_services() -> None:
    assert kp.kafka_problems(production(), engines()) == []


def test_mongodb_users_match_the_services() -> None:
    assert kp.mongodb_problems(production(), engines()) == []


def test_network_policies_name_the_engine_pods_as_their_operators_label_them() -> None:
    assert kp.engine_selector_problems(production(), engines()) == []


def _user_acls(manifests: Manifests, name: str) -> list[dict[str, Any]]:
    acls: list[dict[str, Any]] = kc.find(manifests, "KafkaUser", name)[0]["spec"]["authorization"]["acls"]
    return acls


ENGINE_BREAKAGES: dict[str, tuple[Callable[[Manifests], None], str]] = {
    "topic partition count off the code": (
        lambda m: kc.find(m, "KafkaTopic", "emage-instance-stored-v1")[0]["spec"].update(partitions=24),
        "the code's TOPICS say 12",
    ),
    "missing DLQ topic": (
        lambda m: m.remove(kc.find(m, "KafkaTopic", "emage-consent-changed-v1-dlq")[0]),
        "no KafkaTopic for emage.consent.changed.v1.dlq",
    ),
    "replayed topic expires": (
        lambda m: kc.find(m, "KafkaTopic", "emage-instance-stored-v1")[0]["spec"]["config"].update(
            {"retention.ms": "604800000"}
        ),
        "retention.ms must be -1",
    ),
    "single min ISR": (
        lambda m: kc.find(m, "KafkaTopic", "emage-access-decided-v1")[0]["spec"]["config"].update(
            {"min.insync.replicas": "1"}
        ),
        "min.insync.replicas 2",
    ),
    "ACL beyond the service's topics": (
        lambda m: _user_acls(m, "emage-consent").append(
            {"resource": {"type": "topic", "name": "emage.access.decided.v1"}, "operations": ["Read"]}
        ),
        "more than consent needs",
    ),
    "ACL missing": (
        lambda m: _user_acls(m, "emage-catalog").pop(1),
        "('group', 'catalog', 'Read') is missing",
    ),
    "user operator watching the Kafka namespace": (
        lambda m: kc.find(m, "Kafka", "emage")[0]["spec"]["entityOperator"]["userOperator"].pop(
            "watchedNamespace"
        ),
        "User Operator must watch emage",
    ),
    "listener without authentication": (
        lambda m: kc.find(m, "Kafka", "emage")[0]["spec"]["kafka"]["listeners"][0].pop("authentication"),
        "SASL mechanism SCRAM-SHA-512 but listener authentication None",
    ),
}


@pytest.mark.parametrize("breakage", sorted(ENGINE_BREAKAGES))
def test_engine_checks_catch(breakage: str) -> None:
    manifests = engines()
    mutate, expected = ENGINE_BREAKAGES[breakage]
    mutate(manifests)
    problems = kp.kafka_problems(production(), manifests)
    assert any(expected in problem for problem in problems), problems


def test_mongodb_checks_catch_a_user_reaching_another_database() -> None:
    manifests = engines()
    user = kc.find(manifests, "MongoDBCommunity")[0]["spec"]["users"][0]
    user["roles"].append({"name": "read", "db": "catalog"})
    assert any("readWrite on ingest only" in p for p in kp.mongodb_problems(production(), manifests))


def test_engine_selector_check_catches_a_wrong_cluster_label() -> None:
    overlay = production()
    peer = _policy(overlay, "kafka-and-mongodb")["spec"]["egress"][0]["to"][0]
    peer["podSelector"]["matchLabels"]["strimzi.io/cluster"] = "kafka"
    assert any("strimzi.io/cluster=kafka" in p for p in kp.engine_selector_problems(overlay, engines()))


def test_realm_import_is_the_generated_production_realm() -> None:
    assert REALM_IMPORT.read_text(encoding="utf-8") == render_realm_import(), (
        "regenerate: uv run --frozen python tests/static/emage_static/realm_import.py"
    )
    realm = kc.find(engines(), "KeycloakRealmImport", "emage")[0]["spec"]["realm"]
    assert "users" not in realm
    assert {c["clientId"] for c in realm["clients"]} == {"emage-web", "emage-patient"}
    assert all(not c.get("directAccessGrantsEnabled") and "secret" not in c for c in realm["clients"])
    assert all(u.startswith("https://") for c in realm["clients"] for u in c["redirectUris"])
    secrets = [v for p in realm["identityProviders"] for k, v in p["config"].items() if "secret" in k.lower()]
    assert secrets == ["${PSC_CLIENT_SECRET}"]


def test_gateway_trusts_the_realm_keycloak_serves() -> None:
    keycloak = kc.find(engines(), "Keycloak", "keycloak")[0]
    realm = kc.find(engines(), "KeycloakRealmImport", "emage")[0]
    issuer = f"{keycloak['spec']['hostname']['hostname']}/realms/{realm['spec']['realm']['realm']}"
    assert kp.env_value(production(), "access", "oidc_issuer") == issuer


# --- observability --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_traces_reach_the_collector_and_metrics_are_scraped(overlay: str) -> None:
    manifests = rendered(OVERLAYS[overlay])
    assert kp.observability_problems(manifests) == []
    collector = kc.find(manifests, "Deployment", kp.COLLECTOR)[0]
    pod = collector["spec"]["template"]["spec"]
    assert kc._security_problems("collector", pod, pod["containers"][0]) == []


def test_observability_check_catches_a_service_tracing_elsewhere() -> None:
    manifests = production()
    _config_of(manifests, "catalog")["EMAGE_CATALOG_OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://jaeger:4318"
    assert any("catalog: OTLP endpoint" in p for p in kp.observability_problems(manifests))


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def test_dashboards_query_only_metrics_that_exist() -> None:
    dashboards = _dashboards()
    assert dashboards
    assert kp.dashboard_problems(dashboards) == []
    generated = kc.find(production(), "ConfigMap", "emage-dashboards")[0]
    assert generated["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {name: json.loads(text) for name, text in generated["data"].items()} == dashboards


def test_dashboard_check_catches_an_invented_metric() -> None:
    dashboards = _dashboards()
    panel = dashboards["emage-services.json"]["panels"][0]
    panel["targets"][0]["expr"] = "sum(rate(emage_images_teleported_total[5m]))"
    assert any("emage_images_teleported_total" in p for p in kp.dashboard_problems(dashboards))
