"""Checks of what surrounds the five Deployments: NetworkPolicies, autoscaling, the engines, observability.

Like :mod:`emage_static.k8s_checks`, each check returns human-readable problems (empty when right), so the
tests can show both that the real manifests pass and that a broken copy is caught. What the manifests must
agree with comes from the code wherever the code says it: topic names and partition counts
(``emage_common.events``, ``emage_devstack.kafka.TOPICS``), consumer groups (``Settings.consumer_group``),
the audited topics (``emage_audit.domain.entries.AUDITED_TOPICS``), record size (``MAX_EVENT_BYTES``), the
Prometheus metrics the services register.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from prometheus_client import REGISTRY

from emage_audit.domain.entries import AUDITED_TOPICS
from emage_common.events import (
    ACCESS_DECIDED_TOPIC,
    ACQUISITION_TOPIC,
    CONSENT_CHANGED_TOPIC,
    INSTANCE_STORED_TOPIC,
    SHARE_CHANGED_TOPIC,
    STUDY_CHANGED_TOPIC,
    dlq_topic,
)
from emage_common.kafka import MAX_EVENT_BYTES
from emage_devstack.kafka import TOPICS

from .k8s_checks import Manifest, container_env, find
from .kustomize import all_containers, pod_specs
from .services import SERVICE_NAMES, service

# --- what the services do with Kafka -------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaClient:
    """One service's use of Kafka, as its code does it."""

    consumes: tuple[str, ...] = ()
    #: Consumes in the consumer group of the Settings field ``group_field`` (commits, dead-letters, can be
    #: scaled on lag); otherwise every replica reads every partition without a group.
    grouped: bool = False
    produces: tuple[str, ...] = ()
    group_field: str = "consumer_group"


KAFKA_CLIENTS: Mapping[str, KafkaClient] = {
    # ingest pulls the studies announced on emage.acquisition.v1 from the facilities' PACS.
    "ingest": KafkaClient(
        consumes=(ACQUISITION_TOPIC,),
        grouped=True,
        produces=(INSTANCE_STORED_TOPIC,),
        group_field="pull_consumer_group",
    ),
    "catalog": KafkaClient(consumes=(INSTANCE_STORED_TOPIC,), grouped=True, produces=(STUDY_CHANGED_TOPIC,)),
    "consent": KafkaClient(produces=(CONSENT_CHANGED_TOPIC,)),
    "access": KafkaClient(
        consumes=(CONSENT_CHANGED_TOPIC,), produces=(ACCESS_DECIDED_TOPIC, SHARE_CHANGED_TOPIC)
    ),
    "audit": KafkaClient(consumes=tuple(AUDITED_TOPICS), grouped=True),
}

#: Topics a view is rebuilt from by replaying them from their start: never expired.
REPLAYED_FROM_START = frozenset({INSTANCE_STORED_TOPIC, CONSENT_CHANGED_TOPIC})

#: Placeholder addresses outside the cluster (RFC 5737 documentation ranges) the operator replaces.
PLACEHOLDER_CIDRS: Mapping[str, str] = {
    "hospitals": "198.51.100.0/24",
    "s3": "203.0.113.10/32",
    "oidc": "203.0.113.20/32",
    "syslog": "203.0.113.30/32",
    "tracing-backend": "203.0.113.40/32",
}

COLLECTOR = "otel-collector"


def _namespace(manifest: Manifest) -> str:
    return str(manifest["metadata"].get("namespace", ""))


def service_env(manifests: list[Manifest], name: str) -> dict[str, tuple[str, str | None]]:
    deployment = find(manifests, "Deployment", name)[0]
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)
    env, _ = container_env(container, _namespace(deployment), manifests)
    return env


def env_value(manifests: list[Manifest], name: str, field: str) -> str | None:
    spec = service(name)
    source_value = service_env(manifests, name).get(spec.env_name(field))
    if source_value is not None:
        return source_value[1]
    default = spec.settings.model_fields[field].default
    return None if default is None else str(default)


def consumer_group(manifests: list[Manifest], name: str) -> str:
    group = env_value(manifests, name, KAFKA_CLIENTS[name].group_field)
    assert group, f"{name} has no consumer group"
    return group


# --- label selectors -------------------------------------------------------------------------------------


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (an empty selector selects everything)."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


@dataclass(frozen=True)
class Workload:
    name: str
    namespace: str
    labels: Mapping[str, str]
    ports: Mapping[str, int]  # named container ports
    numbers: frozenset[int]


def workloads(manifests: Iterable[Manifest]) -> list[Workload]:
    found = []
    for manifest in manifests:
        for pod in pod_specs(manifest):
            labels = manifest["spec"]["template"].get("metadata", {}).get("labels") or {}
            ports = [p for c in all_containers(pod) for p in c.get("ports") or []]
            found.append(
                Workload(
                    name=manifest["metadata"]["name"],
                    namespace=_namespace(manifest),
                    labels=labels,
                    ports={p["name"]: int(p["containerPort"]) for p in ports if p.get("name")},
                    numbers=frozenset(int(p["containerPort"]) for p in ports),
                )
            )
    return found


# --- NetworkPolicies ---------------------------------------------------------------------------------------


def _peer_names(peer: Mapping[str, Any], namespace: str, pods: list[Workload]) -> list[str]:
    """``pod:<workload>`` for pods of this namespace, ``ns:<namespace>/<selector>`` or ``cidr:<block>``."""
    if "ipBlock" in peer:
        return [f"cidr:{peer['ipBlock']['cidr']}"]
    if "namespaceSelector" in peer:
        namespaces = (peer["namespaceSelector"].get("matchLabels") or {}).get(
            "kubernetes.io/metadata.name", "*"
        )
        labels = ",".join(
            f"{k}={v}" for k, v in sorted(((peer.get("podSelector") or {}).get("matchLabels") or {}).items())
        )
        return [f"ns:{namespaces}/{labels}"]
    return [
        f"pod:{w.name}"
        for w in pods
        if w.namespace == namespace and selector_matches(peer.get("podSelector"), w.labels)
    ]


def _ports(rule: Mapping[str, Any], resolve: Workload | None) -> list[str]:
    entries = rule.get("ports") or [{}]
    resolved = []
    for entry in entries:
        port = entry.get("port", "*")
        if isinstance(port, str) and port != "*" and resolve is not None:
            port = resolve.ports.get(port, f"unknown port {port}")
        resolved.append(f"{port}/{entry.get('protocol', 'TCP')}")
    return resolved


def _policy_types(policy: Manifest) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])


@dataclass
class Flows:
    """What the policies of one namespace allow, per workload, as (workload, peer, port/protocol) triples."""

    ingress: set[tuple[str, str, str]]
    egress: set[tuple[str, str, str]]
    isolated_ingress: set[str]
    isolated_egress: set[str]

    def internal(self, pods: list[Workload]) -> set[tuple[str, str, str]]:
        """Pod-to-pod connections both ends allow: (source, destination, port/protocol)."""
        allowed = set()
        for source in pods:
            for destination in pods:
                if source is destination:
                    continue
                for port in sorted(destination.numbers):
                    key = f"{port}/TCP"
                    out = source.name not in self.isolated_egress or any(
                        (source.name, f"pod:{destination.name}", p) in self.egress for p in (key, "*/TCP")
                    )
                    into = destination.name not in self.isolated_ingress or any(
                        (destination.name, f"pod:{source.name}", p) in self.ingress for p in (key, "*/TCP")
                    )
                    if out and into:
                        allowed.add((source.name, destination.name, key))
        return allowed

    def external_ingress(self) -> set[tuple[str, str, str]]:
        return {f for f in self.ingress if not f[1].startswith("pod:")}

    def external_egress(self) -> set[tuple[str, str, str]]:
        return {f for f in self.egress if not f[1].startswith("pod:")}


def network_flows(manifests: list[Manifest]) -> Flows:
    pods = workloads(manifests)
    flows = Flows(set(), set(), set(), set())
    for policy in find(manifests, "NetworkPolicy"):
        namespace = _namespace(policy)
        spec = policy["spec"]
        selected = [
            w
            for w in pods
            if w.namespace == namespace and selector_matches(spec.get("podSelector"), w.labels)
        ]
        types = _policy_types(policy)
        for workload in selected:
            if "Ingress" in types:
                flows.isolated_ingress.add(workload.name)
                for rule in spec.get("ingress") or []:
                    for peer in rule.get("from") or [{"namespaceSelector": {}}]:
                        for name in _peer_names(peer, namespace, pods):
                            for port in _ports(rule, workload):
                                flows.ingress.add((workload.name, name, port))
            if "Egress" in types:
                flows.isolated_egress.add(workload.name)
                for rule in spec.get("egress") or []:
                    for peer in rule.get("to") or [{"namespaceSelector": {}}]:
                        targets = _peer_names(peer, namespace, pods)
                        for name in targets:
                            target = next((w for w in pods if f"pod:{w.name}" == name), None)
                            for port in _ports(rule, target):
                                flows.egress.add((workload.name, name, port))
    return flows


def network_policy_problems(manifests: list[Manifest]) -> list[str]:
    """Default deny, every selector selecting something, every port a port of the pods it names, no one-sided
    rule between two pods of the namespace (an egress without the matching ingress, or the reverse)."""
    problems = []
    pods = workloads(manifests)
    policies = find(manifests, "NetworkPolicy")
    if not any(
        p["spec"].get("podSelector") in ({}, None)
        and set(_policy_types(p)) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ):
        problems.append("no default-deny NetworkPolicy (empty podSelector, Ingress and Egress, no rule)")
    for policy in policies:
        where = f"NetworkPolicy/{policy['metadata']['name']}"
        namespace = _namespace(policy)
        spec = policy["spec"]
        selected = [
            w
            for w in pods
            if w.namespace == namespace and selector_matches(spec.get("podSelector"), w.labels)
        ]
        if spec.get("podSelector") and not selected:
            problems.append(f"{where}: podSelector {spec['podSelector']} selects no workload's pods")
        for direction, key in (("ingress", "from"), ("egress", "to")):
            for rule in spec.get(direction) or []:
                for peer in rule.get(key) or []:
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        peers = _peer_names(peer, namespace, pods)
                        if not peers:
                            problems.append(
                                f"{where}: {direction} peer {peer['podSelector']} selects no workload"
                            )
                        targets = (
                            [w for w in pods if f"pod:{w.name}" in peers] if direction == "egress" else []
                        )
                    else:
                        targets = []
                    owners = selected if direction == "ingress" else targets
                    for entry in rule.get("ports") or []:
                        port = entry.get("port")
                        for owner in owners:
                            if isinstance(port, str) and port not in owner.ports:
                                problems.append(
                                    f"{where}: {direction} port {port!r} is not a port of {owner.name}"
                                )
                            if isinstance(port, int) and port not in owner.numbers:
                                problems.append(
                                    f"{where}: {direction} port {port} is not a container port of "
                                    f"{owner.name}"
                                )
    flows = network_flows(manifests)
    internal = flows.internal(pods)
    for source, peer, port in sorted(flows.egress):
        destination = peer.removeprefix("pod:")
        if peer.startswith("pod:") and (source, destination, port) not in internal:
            problems.append(
                f"egress {source} -> {destination}:{port} is allowed but {destination} refuses it"
            )
    for destination, peer, port in sorted(flows.ingress):
        source = peer.removeprefix("pod:")
        if peer.startswith("pod:") and (source, destination, port) not in internal:
            problems.append(
                f"ingress {source} -> {destination}:{port} is allowed but {source} cannot send it"
            )
    return problems


# --- autoscaling ---------------------------------------------------------------------------------------


def topic_partitions(engines: list[Manifest]) -> dict[str, int]:
    return {
        t["spec"].get("topicName", t["metadata"]["name"]): t["spec"]["partitions"]
        for t in find(engines, "KafkaTopic")
    }


def scaled_object_problems(
    manifests: list[Manifest], engines: list[Manifest], *, expected_targets: set[str]
) -> list[str]:
    """KEDA ScaledObjects: existing targets never also under an HPA, the consumer group and topics the service
    really consumes, the service's own Kafka endpoint and security, one replica per partition at most."""
    problems = []
    partitions = topic_partitions(engines)
    hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in find(manifests, "HorizontalPodAutoscaler")}
    authentications = {t["metadata"]["name"]: t for t in find(manifests, "TriggerAuthentication")}
    targets = set()
    for scaled in find(manifests, "ScaledObject"):
        spec = scaled["spec"]
        name = spec["scaleTargetRef"]["name"]
        where = f"ScaledObject/{scaled['metadata']['name']}"
        targets.add(name)
        if spec["scaleTargetRef"].get("kind", "Deployment") != "Deployment" or not find(
            manifests, "Deployment", name
        ):
            problems.append(f"{where}: scale target {name} is not a Deployment of the manifests")
            continue
        if name in hpa_targets:
            problems.append(f"{where}: Deployment {name} also has a HorizontalPodAutoscaler")
        client = KAFKA_CLIENTS.get(name)
        if client is None or not client.grouped:
            problems.append(f"{where}: {name} has no consumer group to scale on")
            continue
        minimum, maximum = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if not 2 <= minimum <= maximum:
            problems.append(f"{where}: minReplicaCount {minimum} must be at least 2 and at most {maximum}")
        group = consumer_group(manifests, name)
        bootstrap = env_value(manifests, name, "kafka_bootstrap_servers")
        protocol = env_value(manifests, name, "kafka_security_protocol")
        mechanism = env_value(manifests, name, "kafka_sasl_mechanism")
        topics = set()
        for trigger in spec["triggers"]:
            if trigger["type"] != "kafka":
                problems.append(f"{where}: trigger {trigger['type']}: consumers scale on their Kafka lag")
                continue
            metadata = trigger["metadata"]
            topic = metadata.get("topic")
            topics.add(topic)
            if metadata.get("consumerGroup") != group:
                problems.append(
                    f"{where}: consumerGroup {metadata.get('consumerGroup')!r} "
                    f"is not {name}'s group {group!r}"
                )
            if topic not in client.consumes:
                problems.append(f"{where}: {name} does not consume {topic!r}")
            if metadata.get("bootstrapServers") != bootstrap:
                problems.append(
                    f"{where}: bootstrapServers {metadata.get('bootstrapServers')} is not {bootstrap}"
                )
            if topic in partitions and maximum > partitions[topic] and len(client.consumes) == 1:
                problems.append(
                    f"{where}: maxReplicaCount {maximum} exceeds the "
                    f"{partitions[topic]} partitions of {topic}"
                )
            expected_sasl = {
                "SCRAM-SHA-512": "scram_sha512",
                "SCRAM-SHA-256": "scram_sha256",
                "PLAIN": "plaintext",
            }
            if protocol in ("SASL_SSL", "SASL_PLAINTEXT") and metadata.get("sasl") != expected_sasl.get(
                str(mechanism)
            ):
                problems.append(f"{where}: sasl {metadata.get('sasl')!r} does not match {name}'s {mechanism}")
            if (protocol in ("SSL", "SASL_SSL")) != (metadata.get("tls") == "enable"):
                problems.append(f"{where}: tls {metadata.get('tls')!r} does not match {name}'s {protocol}")
            reference = (trigger.get("authenticationRef") or {}).get("name")
            if protocol != "PLAINTEXT" and reference not in authentications:
                problems.append(
                    f"{where}: authenticationRef {reference!r} is not a TriggerAuthentication here"
                )
        if topics != set(client.consumes):
            problems.append(
                f"{where}: triggers cover {sorted(topics)}, {name} consumes {sorted(client.consumes)}"
            )
        busiest = max((partitions.get(t, 0) for t in topics if t), default=0)
        if busiest and maximum > busiest:
            problems.append(
                f"{where}: maxReplicaCount {maximum} exceeds the {busiest} partitions of its topics"
            )
    for authentication in authentications.values():
        spec = authentication["spec"]
        for ref in spec.get("configMapTargetRef") or []:
            maps = find(manifests, "ConfigMap", ref["name"])
            if not maps or ref["key"] not in (maps[0].get("data") or {}):
                problems.append(
                    f"TriggerAuthentication/{authentication['metadata']['name']}: ConfigMap "
                    f"{ref['name']} with key {ref['key']} is not in the manifests"
                )
    if targets != expected_targets:
        problems.append(f"KEDA-scaled Deployments {sorted(targets)}, expected {sorted(expected_targets)}")
    return problems


# --- the engines ------------------------------------------------------------------------------------------


def _acls(user: Manifest) -> set[tuple[str, str, str]]:
    return {
        (acl["resource"]["type"], acl["resource"].get("name", ""), operation)
        for acl in user["spec"].get("authorization", {}).get("acls", [])
        for operation in acl["operations"]
        if acl.get("type", "allow") == "allow" and acl["resource"].get("patternType", "literal") == "literal"
    }


def expected_acls(manifests: list[Manifest], name: str) -> set[tuple[str, str, str]]:
    client = KAFKA_CLIENTS[name]
    expected = set()
    for topic in client.consumes:
        expected |= {("topic", topic, "Read"), ("topic", topic, "Describe")}
        if client.grouped:
            expected |= {("topic", dlq_topic(topic), "Write"), ("topic", dlq_topic(topic), "Describe")}
    if client.grouped:
        expected.add(("group", consumer_group(manifests, name), "Read"))
    for topic in client.produces:
        expected |= {("topic", topic, "Write"), ("topic", topic, "Describe")}
    return expected


def kafka_problems(overlay: list[Manifest], engines: list[Manifest]) -> list[str]:
    """Strimzi: the cluster the services are configured for, the topics of the code, users limited to them."""
    problems = []
    clusters = find(engines, "Kafka")
    if len(clusters) != 1:
        return [f"expected one Kafka, found {len(clusters)}"]
    cluster = clusters[0]
    kafka_namespace = _namespace(cluster)
    overlay_namespace = _namespace(find(overlay, "Deployment")[0])
    spec = cluster["spec"]
    annotations = cluster["metadata"].get("annotations") or {}
    if annotations.get("strimzi.io/node-pools") != "enabled":
        problems.append("Kafka: node pools must be enabled (KRaft brokers and controllers)")
    pools = [
        p
        for p in find(engines, "KafkaNodePool")
        if p["metadata"]["labels"].get("strimzi.io/cluster") == cluster["metadata"]["name"]
    ]
    roles = {role for p in pools for role in p["spec"]["roles"]}
    if roles != {"controller", "broker"}:
        problems.append(f"KafkaNodePools of {cluster['metadata']['name']} have roles {sorted(roles)}")
    for pool in pools:
        if "controller" in pool["spec"]["roles"] and pool["spec"]["replicas"] % 2 == 0:
            problems.append(
                f"KafkaNodePool/{pool['metadata']['name']}: an even number of controllers gains no majority"
            )
        if pool["spec"]["replicas"] < 3:
            problems.append(f"KafkaNodePool/{pool['metadata']['name']}: fewer than 3 replicas")
    if spec.get("entityOperator", {}).get("userOperator", {}).get("watchedNamespace") != overlay_namespace:
        problems.append(f"Kafka: the User Operator must watch {overlay_namespace}, where the KafkaUsers are")
    listeners = {listener["port"]: listener for listener in spec["kafka"]["listeners"]}
    service_name = f"{cluster['metadata']['name']}-kafka-bootstrap.{kafka_namespace}.svc"
    for name in SERVICE_NAMES:
        bootstrap = str(env_value(overlay, name, "kafka_bootstrap_servers"))
        host, _, port = bootstrap.rpartition(":")
        listener = listeners.get(int(port)) if port.isdigit() else None
        if host != service_name or listener is None:
            problems.append(f"{name}: Kafka bootstrap {bootstrap} is not a listener of {service_name}")
            continue
        protocol = env_value(overlay, name, "kafka_security_protocol")
        if listener["tls"] != (protocol in ("SSL", "SASL_SSL")):
            problems.append(
                f"{name}: security protocol {protocol} but listener {listener['name']} tls={listener['tls']}"
            )
        authentication = (listener.get("authentication") or {}).get("type")
        mechanism = env_value(overlay, name, "kafka_sasl_mechanism")
        if (authentication == "scram-sha-512") != (mechanism == "SCRAM-SHA-512"):
            problems.append(
                f"{name}: SASL mechanism {mechanism} but listener authentication {authentication}"
            )
        peers = listener.get("networkPolicyPeers")
        if peers and not any(
            (p.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            == overlay_namespace
            for p in peers
        ):
            problems.append(
                f"Kafka listener {listener['name']}: networkPolicyPeers leave out {overlay_namespace}"
            )
    problems += topic_problems(engines)
    users = {u["metadata"]["name"]: u for u in find(engines, "KafkaUser")}
    for user in users.values():
        if _namespace(user) != overlay_namespace:
            problems.append(
                f"KafkaUser/{user['metadata']['name']}: in {_namespace(user)}, "
                f"the pods read its Secret in {overlay_namespace}"
            )
        if "password" in user["spec"].get("authentication", {}):
            problems.append(f"KafkaUser/{user['metadata']['name']}: a password in the manifest")
    for name in SERVICE_NAMES:
        username = env_value(overlay, name, "kafka_sasl_username")
        if username not in users:
            problems.append(f"{name}: no KafkaUser {username!r}")
            continue
        actual, expected = _acls(users[username]), expected_acls(overlay, name)
        for extra in sorted(actual - expected):
            problems.append(f"KafkaUser/{username}: ACL {extra} is more than {name} needs")
        for missing in sorted(expected - actual):
            problems.append(f"KafkaUser/{username}: ACL {missing} is missing")
        secret_refs = [
            v
            for v in _container(overlay, name).get("env", [])
            if v["name"] == service(name).env_name("kafka_sasl_password")
        ]
        if not secret_refs or secret_refs[0]["valueFrom"]["secretKeyRef"] != {
            "name": username,
            "key": "password",
        }:
            problems.append(f"{name}: the SASL password must come from the Secret {username} Strimzi writes")
    return problems


def _container(manifests: list[Manifest], name: str) -> Manifest:
    deployment = find(manifests, "Deployment", name)[0]
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def topic_problems(engines: list[Manifest]) -> list[str]:
    """One KafkaTopic per topic of the code and per DLQ, with the partitions and settings the code assumes."""
    problems = []
    topics = {t["spec"].get("topicName", t["metadata"]["name"]): t for t in find(engines, "KafkaTopic")}
    expected = {**TOPICS, **{dlq_topic(t): n for t, n in TOPICS.items()}}
    for missing in sorted(set(expected) - set(topics)):
        problems.append(f"no KafkaTopic for {missing}")
    for extra in sorted(set(topics) - set(expected)):
        problems.append(f"KafkaTopic for {extra}, which no code uses")
    for name, topic in topics.items():
        if name not in expected:
            continue
        where = f"KafkaTopic/{topic['metadata']['name']}"
        spec, config = topic["spec"], topic["spec"].get("config") or {}
        if spec["partitions"] != expected[name]:
            problems.append(
                f"{where}: {spec['partitions']} partitions, the code's TOPICS say {expected[name]}"
            )
        if spec["replicas"] < 3 or str(config.get("min.insync.replicas")) != "2":
            problems.append(
                f"{where}: needs 3 replicas and min.insync.replicas 2 (acks=all survives one broker)"
            )
        if str(config.get("max.message.bytes")) != str(MAX_EVENT_BYTES):
            problems.append(f"{where}: max.message.bytes must be {MAX_EVENT_BYTES} (MAX_EVENT_BYTES)")
        forever = name.endswith(".dlq") or name in REPLAYED_FROM_START
        if forever and str(config.get("retention.ms")) != "-1":
            problems.append(
                f"{where}: retention.ms must be -1 (replayed from its start or waiting for a human)"
            )
        if not forever and int(str(config.get("retention.ms", "0"))) < 7 * 86_400_000:
            problems.append(f"{where}: retention.ms under 7 days")
    return problems


def mongodb_problems(overlay: list[Manifest], engines: list[Manifest]) -> list[str]:
    """One user per service, readWrite on its own database only, its connection string read by its pods."""
    problems = []
    replica_sets = find(engines, "MongoDBCommunity")
    if len(replica_sets) != 1:
        return [f"expected one MongoDBCommunity, found {len(replica_sets)}"]
    replica_set = replica_sets[0]
    spec = replica_set["spec"]
    overlay_namespace = _namespace(find(overlay, "Deployment")[0])
    if spec["members"] < 3:
        problems.append("MongoDBCommunity: a replica set of fewer than 3 members")
    users = {u["name"]: u for u in spec["users"]}
    ca_file = (spec.get("additionalConnectionStringConfig") or {}).get("tlsCAFile")
    for name in SERVICE_NAMES:
        user = users.get(name)
        if user is None:
            problems.append(f"MongoDBCommunity: no user for {name}")
            continue
        database = env_value(overlay, name, "mongo_database") or name
        roles = {(r["name"], r["db"]) for r in user["roles"]}
        if roles != {("readWrite", database)}:
            problems.append(
                f"MongoDBCommunity user {name}: roles {sorted(roles)}, expected readWrite on {database} only"
            )
        if user.get("connectionStringSecretNamespace") != overlay_namespace:
            problems.append(
                f"MongoDBCommunity user {name}: connection string Secret not written to {overlay_namespace}"
            )
        references = [
            v
            for v in _container(overlay, name).get("env", [])
            if v["name"] == service(name).env_name("mongo_uri")
        ]
        reference = references[0]["valueFrom"]["secretKeyRef"] if references else {}
        if reference != {"name": user.get("connectionStringSecretName"), "key": "connectionString.standard"}:
            problems.append(
                f"{name}: {service(name).env_name('mongo_uri')} "
                f"must read {user.get('connectionStringSecretName')}"
            )
        if spec.get("security", {}).get("tls", {}).get("enabled"):
            mounts = {m["mountPath"] for m in _container(overlay, name).get("volumeMounts", [])}
            if not ca_file or str(ca_file).rsplit("/", 1)[0] not in mounts:
                problems.append(f"{name}: the MongoDB CA {ca_file} is not mounted")
    return problems


def engine_selector_problems(overlay: list[Manifest], engines: list[Manifest]) -> list[str]:
    """The NetworkPolicy peers naming engine pods use the labels and ports the operators give them."""
    problems = []
    kafka = find(engines, "Kafka")[0]
    mongo = find(engines, "MongoDBCommunity")[0]
    kafka_ports = {listener["port"] for listener in kafka["spec"]["kafka"]["listeners"]}
    expected = {
        "strimzi.io/cluster": (kafka["metadata"]["name"], kafka_ports, _namespace(kafka)),
        "app": (f"{mongo['metadata']['name']}-svc", {27017}, _namespace(mongo)),
    }
    for policy in find(overlay, "NetworkPolicy"):
        for rule in policy["spec"].get("egress") or []:
            for peer in rule.get("to") or []:
                labels = (peer.get("podSelector") or {}).get("matchLabels") or {}
                for label, (value, ports, namespace) in expected.items():
                    if label not in labels:
                        continue
                    where = f"NetworkPolicy/{policy['metadata']['name']}"
                    if labels[label] != value:
                        problems.append(f"{where}: {label}={labels[label]} is not {value}")
                    peer_namespace = (
                        peer.get("namespaceSelector", {})
                        .get("matchLabels", {})
                        .get("kubernetes.io/metadata.name")
                    )
                    if peer_namespace != namespace:
                        problems.append(f"{where}: engine pods are in {namespace}, not {peer_namespace}")
                    if {p.get("port") for p in rule.get("ports") or []} - ports:
                        problems.append(
                            f"{where}: ports {rule.get('ports')} are not the engine's {sorted(ports)}"
                        )
    return problems


# --- observability -----------------------------------------------------------------------------------------


def observability_problems(manifests: list[Manifest]) -> list[str]:
    """Every service sends traces to the collector's OTLP/HTTP port; Prometheus scrapes every service."""
    problems = []
    collectors = find(manifests, "Service", COLLECTOR)
    if not collectors:
        return ["no otel-collector Service"]
    ports = {p["port"] for p in collectors[0]["spec"]["ports"]}
    config_maps = [
        m for m in find(manifests, "ConfigMap") if m["metadata"]["name"].startswith("otel-collector-config")
    ]
    collector_config = yaml.safe_load(config_maps[0]["data"]["collector.yaml"])
    http_endpoint = collector_config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    receiver_port = int(http_endpoint.rsplit(":", 1)[1])
    if receiver_port not in ports:
        problems.append(
            f"the collector receives OTLP/HTTP on {receiver_port}, its Service offers {sorted(ports)}"
        )
    for pipeline in collector_config["service"]["pipelines"].values():
        for part in ("receivers", "processors", "exporters"):
            for component in pipeline.get(part, []):
                if component not in collector_config.get(part, {}):
                    problems.append(f"collector pipeline uses undefined {part[:-1]} {component}")
    for name in SERVICE_NAMES:
        endpoint = env_value(manifests, name, "otel_exporter_otlp_endpoint")
        if endpoint != f"http://{COLLECTOR}:{receiver_port}":
            problems.append(
                f"{name}: OTLP endpoint {endpoint!r} is not the collector's http://{COLLECTOR}:{receiver_port}"
            )
    monitors = find(manifests, "ServiceMonitor")
    services = find(manifests, "Service")
    for name in SERVICE_NAMES:
        svc = next(s for s in services if s["metadata"]["name"] == name)
        scraped = [
            m
            for m in monitors
            if selector_matches(m["spec"]["selector"], svc["metadata"].get("labels") or {})
            and any(
                e.get("port") in {p.get("name") for p in svc["spec"]["ports"]}
                and e.get("path", "/metrics") == "/metrics"
                for e in m["spec"]["endpoints"]
            )
        ]
        if not scraped:
            problems.append(f"Service/{name}: no ServiceMonitor scrapes its /metrics")
    return problems


#: Metrics of Strimzi's Kafka Exporter the dashboards may use.
KAFKA_EXPORTER_METRICS = frozenset(
    {
        "kafka_consumergroup_lag",
        "kafka_consumergroup_current_offset",
        "kafka_topic_partition_current_offset",
        "kafka_topic_partition_oldest_offset",
        "kafka_topic_partitions",
    }
)

#: Modules whose import registers every Prometheus metric the services export.
_METRIC_MODULES = ("emage_common.web", "emage_common.kafka", "emage_ingest.dimse", "emage_ingest.service")
_METRIC_NAME = re.compile(r"\b((?:emage|kafka)_[a-z0-9_]+)\b")


_SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
}


def exported_metric_names() -> set[str]:
    """Sample names the services expose (``_total`` of counters, ``_bucket``/``_sum``... of histograms)."""
    for module in _METRIC_MODULES:
        importlib.import_module(module)
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("emage_")
        for suffix in _SAMPLE_SUFFIXES.get(family.type, ("",))
    }


def dashboard_problems(dashboards: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Dashboards: unique uids, every query on a metric that exists, every job label a service."""
    problems = []
    exported = exported_metric_names()
    uids: set[str] = set()
    for file_name, dashboard in dashboards.items():
        uid = dashboard.get("uid")
        if not uid or uid in uids:
            problems.append(f"{file_name}: missing or duplicate uid {uid!r}")
        uids.add(str(uid))
        for panel in dashboard.get("panels", []):
            for target in panel.get("targets", []):
                expression = target.get("expr", "")
                for metric in _METRIC_NAME.findall(expression):
                    known = (
                        metric in exported
                        if metric.startswith("emage_")
                        else metric in KAFKA_EXPORTER_METRICS
                    )
                    if not known:
                        problems.append(
                            f"{file_name}: panel {panel.get('title')!r} queries unknown metric {metric}"
                        )
                for job in re.findall(r'job="([^"]+)"', expression):
                    if job not in SERVICE_NAMES:
                        problems.append(
                            f"{file_name}: panel {panel.get('title')!r}: job {job} is not a service"
                        )
    return problems
