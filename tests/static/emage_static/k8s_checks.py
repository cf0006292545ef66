"""Checks of rendered Kubernetes manifests (the output of a kustomize build of an overlay).

Each check returns a list of human-readable problems (empty when the manifests are right), so a test can
assert both that the real manifests pass and that a deliberately broken copy is caught.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import kubernetes_validate

from . import crds
from .kustomize import all_containers, pod_specs, split_image
from .services import GATEWAY, SERVICE_UID, SERVICES, ServiceSpec

Manifest = dict[str, Any]

#: Kubernetes version the manifests are validated against (the oldest minor we support running on).
KUBERNETES_VERSION = "1.33"

#: Kinds whose objects would carry secret material inline.
_SECRET_KINDS = frozenset({"Secret", "SealedSecret"})

#: Names that look like credentials, for env vars and ConfigMap keys outside the Settings' SecretStr fields.
_SECRET_LIKE = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE_KEY|CREDENTIAL|_URI$", re.IGNORECASE)


def find(manifests: Iterable[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [m for m in manifests if m.get("kind") == kind and (name is None or m["metadata"]["name"] == name)]


def _namespace(manifest: Manifest) -> str:
    return str(manifest["metadata"].get("namespace", ""))


def _labels_match(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    return bool(selector) and all((labels or {}).get(k) == v for k, v in (selector or {}).items())


_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_FACTORS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(resource: str, value: Any) -> float:
    """A Kubernetes quantity as a number (CPU in cores, memory in bytes)."""
    text = str(value)
    if resource == "cpu":
        match = _CPU.match(text)
        if not match:
            raise ValueError(f"bad cpu quantity {value!r}")
        return float(match.group(1)) / (1000 if match.group(2) else 1)
    match = _MEMORY.match(text)
    if not match:
        raise ValueError(f"bad memory quantity {value!r}")
    return float(match.group(1)) * _MEMORY_FACTORS[match.group(2)]


def schema_problems(manifests: Iterable[Manifest], version: str = KUBERNETES_VERSION) -> list[str]:
    """Validation of every object against the Kubernetes OpenAPI schemas, custom resources against the
    schemas of ``tests/static/crd_schemas`` (strict: unknown fields fail)."""
    problems = []
    for manifest in manifests:
        where = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
        if crds.has_schema(manifest, version):
            problems += crds.custom_resource_problems(manifest, version)
            continue
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            problems.append(f"{where}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{where}: {error.message}")
    return problems


def _resolve_port(port: Any, container: Manifest) -> int | None:
    if isinstance(port, int):
        return port
    for candidate in container.get("ports", []) or []:
        if candidate.get("name") == port:
            return int(candidate["containerPort"])
    return None


def container_env(
    container: Manifest, namespace: str, manifests: list[Manifest]
) -> tuple[dict[str, tuple[str, str | None]], list[str]]:
    """The container's environment as ``name -> (source, value)``; source is value/configmap/secret/field."""
    env: dict[str, tuple[str, str | None]] = {}
    problems = []
    for source in container.get("envFrom", []) or []:
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            config_maps = [m for m in find(manifests, "ConfigMap", name) if _namespace(m) == namespace]
            if not config_maps:
                problems.append(f"envFrom ConfigMap {name} is not part of the rendered manifests")
                continue
            prefix = source.get("prefix", "")
            for key, value in (config_maps[0].get("data") or {}).items():
                env[prefix + key] = ("configmap", str(value))
        else:
            problems.append(f"envFrom {sorted(source)}: only ConfigMaps, whose keys can be checked")
    for variable in container.get("env", []) or []:
        name = variable["name"]
        value_from = variable.get("valueFrom") or {}
        if "value" in variable:
            env[name] = ("value", str(variable["value"]))
        elif "secretKeyRef" in value_from:
            ref = value_from["secretKeyRef"]
            if not ref.get("name") or not ref.get("key"):
                problems.append(f"env {name}: secretKeyRef needs a Secret name and key")
            env[name] = ("secret", None)
        elif "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            config_maps = [
                m for m in find(manifests, "ConfigMap", ref.get("name")) if _namespace(m) == namespace
            ]
            data = (config_maps[0].get("data") or {}) if config_maps else {}
            if ref.get("key") not in data:
                problems.append(f"env {name}: ConfigMap {ref.get('name')} has no key {ref.get('key')}")
            env[name] = ("configmap", data.get(ref.get("key")))
        else:
            env[name] = ("field", None)
    return env, problems


def deployment_problems(
    manifests: list[Manifest], spec: ServiceSpec, *, pinned_image: bool = True
) -> list[str]:
    """Everything a service's Deployment must get right: image, port, probes, resources, hardening, env."""
    deployments = find(manifests, "Deployment", spec.name)
    if len(deployments) != 1:
        return [f"expected one Deployment {spec.name}, found {len(deployments)}"]
    deployment = deployments[0]
    where = f"Deployment/{spec.name}"
    namespace = _namespace(deployment)
    problems: list[str] = []
    template = deployment["spec"]["template"]
    pod = template["spec"]
    pod_labels = (template.get("metadata") or {}).get("labels") or {}
    if not _labels_match(deployment["spec"].get("selector", {}).get("matchLabels"), pod_labels):
        problems.append(f"{where}: selector.matchLabels do not select its own pod template labels")

    containers = [c for c in pod.get("containers", []) if c.get("name") == spec.name]
    if len(containers) != 1:
        return [*problems, f"{where}: no container named {spec.name}"]
    container = containers[0]

    image_name, tag, digest = split_image(container.get("image", ""))
    if image_name.rsplit("/", 1)[-1] != spec.image:
        problems.append(f"{where}: image {container.get('image')!r} is not the {spec.image} image")
    if pinned_image and not digest and (not tag or tag == "latest"):
        problems.append(f"{where}: image {container.get('image')!r} has no pinned tag or digest")

    http_ports = [p for p in container.get("ports", []) or [] if p.get("name") == "http"]
    if not http_ports or http_ports[0].get("containerPort") != spec.http_port:
        problems.append(f"{where}: container port 'http' must be {spec.http_port} (Settings.http_port)")

    for probe_name, path in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", None),
    ):
        probe = container.get(probe_name)
        if probe is None:
            if path is not None:
                problems.append(f"{where}: no {probe_name}")
            continue
        http_get = probe.get("httpGet") or {}
        expected_path = path or "/healthz"
        if http_get.get("path") != expected_path:
            problems.append(f"{where}: {probe_name} must GET {expected_path}, not {http_get.get('path')}")
        if _resolve_port(http_get.get("port"), container) != spec.http_port:
            problems.append(f"{where}: {probe_name} port {http_get.get('port')!r} is not {spec.http_port}")

    resources = container.get("resources") or {}
    for bound in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(bound) or {}):
                problems.append(f"{where}: resources.{bound}.{resource} is missing")
    for resource in ("cpu", "memory"):
        request = (resources.get("requests") or {}).get(resource)
        limit = (resources.get("limits") or {}).get(resource)
        if (
            request is not None
            and limit is not None
            and quantity(resource, request) > quantity(resource, limit)
        ):
            problems.append(f"{where}: {resource} request {request} exceeds its limit {limit}")

    problems += _security_problems(where, pod, container)

    service_accounts = [
        m
        for m in find(manifests, "ServiceAccount", pod.get("serviceAccountName"))
        if _namespace(m) == namespace
    ]
    if not pod.get("serviceAccountName") or not service_accounts:
        problems.append(f"{where}: serviceAccountName must name a ServiceAccount of the manifests")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: automountServiceAccountToken must be false (no Kubernetes API use)")

    env, env_problems = container_env(container, namespace, manifests)
    problems += [f"{where}: {p}" for p in env_problems]
    problems += spec.env_problems({name: value for name, (_, value) in env.items()}, where)
    for name, (source, _) in sorted(env.items()):
        if (name in spec.secret_env_names or _SECRET_LIKE.search(name)) and source != "secret":
            problems.append(f"{where}: {name} comes from a {source}; credentials only via secretKeyRef")
    return problems


def _security_problems(where: str, pod: Manifest, container: Manifest) -> list[str]:
    problems = []
    pod_context = pod.get("securityContext") or {}
    context = container.get("securityContext") or {}
    if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
        problems.append(f"{where}: runAsNonRoot is not set")
    run_as_user = context.get("runAsUser", pod_context.get("runAsUser"))
    if run_as_user != SERVICE_UID:
        problems.append(f"{where}: runAsUser {run_as_user} is not the image's UID {SERVICE_UID}")
    seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        problems.append(f"{where}: seccompProfile must be RuntimeDefault, is {seccomp}")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: allowPrivilegeEscalation must be false")
    if context.get("privileged"):
        problems.append(f"{where}: privileged container")
    if context.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}: readOnlyRootFilesystem must be true")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append(f"{where}: capabilities.drop must contain ALL")
    if capabilities.get("add"):
        problems.append(f"{where}: capabilities.add {capabilities['add']}")
    if context.get("readOnlyRootFilesystem"):
        empty_dirs = {v["name"] for v in pod.get("volumes", []) or [] if "emptyDir" in v}
        if not any(
            m.get("mountPath") == "/tmp" and m.get("name") in empty_dirs
            for m in container.get("volumeMounts", []) or []
        ):
            problems.append(f"{where}: a read-only root needs an emptyDir mounted at /tmp")
    return problems


def service_problems(manifests: list[Manifest], spec: ServiceSpec) -> list[str]:
    """The Service in front of the Deployment: same port as the settings, targeting the container port."""
    services = find(manifests, "Service", spec.name)
    deployments = find(manifests, "Deployment", spec.name)
    if len(services) != 1 or len(deployments) != 1:
        return [f"expected one Service and one Deployment {spec.name}"]
    service, deployment = services[0], deployments[0]
    where = f"Service/{spec.name}"
    problems = []
    template = deployment["spec"]["template"]
    if not _labels_match(service["spec"].get("selector"), template["metadata"].get("labels")):
        problems.append(f"{where}: selector does not select the {spec.name} pods")
    container = next((c for c in template["spec"]["containers"] if c["name"] == spec.name), {})
    ports = service["spec"].get("ports") or []
    http = [p for p in ports if p.get("port") == spec.http_port]
    if not http:
        problems.append(f"{where}: no port {spec.http_port} (Settings.http_port)")
    for port in http:
        target = _resolve_port(port.get("targetPort", port.get("port")), container)
        if target != spec.http_port:
            problems.append(
                f"{where}: targetPort {port.get('targetPort')!r} is not container port {spec.http_port}"
            )
    if service["spec"].get("type", "ClusterIP") != "ClusterIP":
        problems.append(f"{where}: type {service['spec']['type']}; only the Ingress exposes the gateway")
    return problems


def disruption_budget_problems(manifests: list[Manifest], spec: ServiceSpec) -> list[str]:
    deployments = find(manifests, "Deployment", spec.name)
    if len(deployments) != 1:
        return [f"expected one Deployment {spec.name}"]
    deployment = deployments[0]
    pod_labels = deployment["spec"]["template"]["metadata"].get("labels")
    budgets = [
        b
        for b in find(manifests, "PodDisruptionBudget")
        if _labels_match(b["spec"].get("selector", {}).get("matchLabels"), pod_labels)
    ]
    if len(budgets) != 1:
        return [
            f"Deployment/{spec.name}: expected one PodDisruptionBudget selecting its pods, "
            f"found {len(budgets)}"
        ]
    budget = budgets[0]["spec"]
    replicas = deployment["spec"].get("replicas", 1)
    min_available = budget.get("minAvailable")
    if isinstance(min_available, int) and min_available >= replicas:
        return [
            f"PodDisruptionBudget of {spec.name}: minAvailable {min_available} >= replicas {replicas} "
            "blocks every node drain"
        ]
    if budget.get("maxUnavailable") in (0, "0%"):
        return [f"PodDisruptionBudget of {spec.name}: maxUnavailable 0 blocks every node drain"]
    return []


def inline_secret_problems(manifests: list[Manifest]) -> list[str]:
    """Secrets are created out of band and only referenced by name: none may be rendered, none inlined."""
    problems = []
    for manifest in manifests:
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        if manifest["kind"] in _SECRET_KINDS:
            problems.append(f"{where}: secrets must not be part of the manifests")
        if manifest["kind"] == "ConfigMap":
            secret_names = set().union(*(spec.secret_env_names for spec in SERVICES))
            for key in manifest.get("data") or {}:
                if key in secret_names or _SECRET_LIKE.search(key):
                    problems.append(f"{where}: key {key} looks like a credential in a ConfigMap")
    return problems


def autoscaler_problems(manifests: list[Manifest], *, expected_targets: set[str]) -> list[str]:
    problems = []
    targets = set()
    for hpa in find(manifests, "HorizontalPodAutoscaler"):
        where = f"HorizontalPodAutoscaler/{hpa['metadata']['name']}"
        ref = hpa["spec"]["scaleTargetRef"]
        targets.add(ref.get("name"))
        matching = [
            d
            for d in find(manifests, ref.get("kind", ""), ref.get("name"))
            if _namespace(d) == _namespace(hpa)
        ]
        if not matching:
            problems.append(f"{where}: scale target {ref.get('kind')}/{ref.get('name')} does not exist")
        minimum, maximum = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
        if minimum > maximum or minimum < 2:
            problems.append(
                f"{where}: minReplicas {minimum} must be at least 2 and at most maxReplicas {maximum}"
            )
        for deployment in matching:
            replicas = deployment["spec"].get("replicas", 1)
            if not minimum <= replicas <= maximum:
                problems.append(f"{where}: Deployment replicas {replicas} outside [{minimum}, {maximum}]")
    if targets != expected_targets:
        problems.append(f"autoscaled Deployments {sorted(targets)}, expected {sorted(expected_targets)}")
    return problems


def ingress_problems(manifests: list[Manifest], *, expect_ingress: bool) -> list[str]:
    """Only the gateway is reachable from outside, and only over TLS."""
    problems = []
    ingresses = find(manifests, "Ingress")
    if expect_ingress and not ingresses:
        problems.append("no Ingress to the access gateway")
    gateway = next(iter(find(manifests, "Service", GATEWAY)), None)
    for ingress in ingresses:
        where = f"Ingress/{ingress['metadata']['name']}"
        spec = ingress["spec"]
        tls_hosts = {host for entry in spec.get("tls") or [] for host in entry.get("hosts") or []}
        if not spec.get("tls") or any(not entry.get("secretName") for entry in spec["tls"]):
            problems.append(f"{where}: TLS with a certificate Secret is required")
        backends = [spec["defaultBackend"]] if spec.get("defaultBackend") else []
        for rule in spec.get("rules") or []:
            if rule.get("host") not in tls_hosts:
                problems.append(f"{where}: host {rule.get('host')} is not covered by TLS")
            backends += [path["backend"] for path in (rule.get("http") or {}).get("paths", [])]
        for backend in backends:
            service = backend.get("service") or {}
            if service.get("name") != GATEWAY:
                problems.append(
                    f"{where}: routes to {service.get('name') or backend}; only {GATEWAY} is public"
                )
                continue
            port = service.get("port") or {}
            gateway_ports = (gateway or {}).get("spec", {}).get("ports", [])
            if not any(
                p.get("name") == port.get("name") if "name" in port else p.get("port") == port.get("number")
                for p in gateway_ports
            ):
                problems.append(f"{where}: port {port} is not a port of Service/{GATEWAY}")
    for service in find(manifests, "Service"):
        if service["spec"].get("type") in ("NodePort", "LoadBalancer"):
            problems.append(
                f"Service/{service['metadata']['name']}: type {service['spec']['type']} exposes it"
            )
    return problems


def overlay_problems(manifests: list[Manifest], *, production: bool) -> list[str]:
    """Every check, for one rendered overlay."""
    problems = []
    for spec in SERVICES:
        problems += deployment_problems(manifests, spec)
        problems += service_problems(manifests, spec)
        problems += disruption_budget_problems(manifests, spec)
    problems += inline_secret_problems(manifests)
    problems += ingress_problems(manifests, expect_ingress=production)
    problems += autoscaler_problems(manifests, expected_targets={"access", "ingest"} if production else set())
    if production:
        for deployment in find(manifests, "Deployment"):
            if deployment["spec"].get("replicas", 1) < 2:
                problems.append(f"Deployment/{deployment['metadata']['name']}: production needs 2+ replicas")
    for manifest in manifests:
        for pod_spec in pod_specs(manifest):
            for container in all_containers(pod_spec):
                if not container.get("image"):
                    problems.append(
                        f"{manifest['kind']}/{manifest['metadata']['name']}: container without image"
                    )
    return problems
