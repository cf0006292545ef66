"""A small, strict subset of ``kustomize build``, enough to render ``deploy/k8s`` without the Go binary.

Supported kustomization fields: ``resources``, ``components``, ``namespace``, ``labels``, ``commonLabels``,
``images``, ``replicas``, ``patches`` (strategic-merge and JSON 6902), ``configMapGenerator`` (with the
content-hash name suffix and the rewriting of references to it) and ``generatorOptions``. Anything else
is refused with :class:`UnsupportedKustomizationError` rather than silently ignored, so a manifest change
that needs more of kustomize shows up as a test failure naming the field. Where ``kubectl`` is installed,
the tests compare this renderer's output with ``kubectl kustomize`` resource by resource.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")

_SUPPORTED_FIELDS = frozenset(
    {
        "apiVersion",
        "kind",
        "resources",
        "components",
        "namespace",
        "labels",
        "commonLabels",
        "images",
        "replicas",
        "patches",
        "configMapGenerator",
        "generatorOptions",
    }
)

#: Kinds without a namespace (the ones a namespace transformer must leave alone).
CLUSTER_SCOPED_KINDS = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolume",
        "StorageClass",
        "IngressClass",
        "PriorityClass",
        "RuntimeClass",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "APIService",
        "ClusterIssuer",
    }
)

#: Kinds whose ``spec.template`` is a pod template.
POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})

#: Kinds whose ``spec.selector.matchLabels`` selects the pods of their template (or, for a PDB, of others).
_MATCH_LABELS_SELECTOR_KINDS = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "PodDisruptionBudget"}
)

_SCALABLE_KINDS = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})

#: Strategic-merge keys of the Kubernetes API lists this renderer merges; other lists are replaced whole.
_LIST_MERGE_KEYS = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "hostAliases": ("ip",),
    "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
    # Container ports merge on containerPort, Service ports on port: the item tells which list it is.
    "ports": ("containerPort", "port"),
}


class UnsupportedKustomizationError(ValueError):
    """The kustomization uses something this subset does not implement."""


@dataclass
class Resource:
    """One rendered object plus what kustomize remembers about it while building."""

    doc: dict[str, Any]
    original_name: str
    hashed: bool = False
    generated: bool = False

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])


@dataclass
class _GeneratorOptions:
    disable_hash: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def render(directory: Path) -> list[dict[str, Any]]:
    """Build the kustomization in ``directory`` and return its objects (documents, in build order)."""
    resources = _build(Path(directory).resolve(), expected_kind="Kustomization")
    _apply_name_hashes(resources)
    return [r.doc for r in resources]


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def find_kustomization(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no kustomization file in {directory}")


def _build(directory: Path, *, expected_kind: str) -> list[Resource]:
    kustomization_path = find_kustomization(directory)
    kustomization = yaml.safe_load(kustomization_path.read_text(encoding="utf-8")) or {}
    kind = kustomization.get("kind", "Kustomization")
    if kind != expected_kind:
        raise UnsupportedKustomizationError(f"{kustomization_path}: kind {kind}, expected {expected_kind}")
    unknown = set(kustomization) - _SUPPORTED_FIELDS
    if unknown:
        raise UnsupportedKustomizationError(f"{kustomization_path}: unsupported fields {sorted(unknown)}")

    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        resources.extend(_load_resource_entry(directory, entry))
    _generate_config_maps(directory, kustomization, resources)
    for entry in kustomization.get("components", []):
        component = (directory / entry).resolve()
        resources = _apply_component(component, resources)
    _run_transformers(directory, kustomization, resources)
    _check_unique(resources, kustomization_path)
    return resources


def _apply_component(directory: Path, resources: list[Resource]) -> list[Resource]:
    """A Component adds its own resources, then transforms everything accumulated so far."""
    kustomization_path = find_kustomization(directory)
    kustomization = yaml.safe_load(kustomization_path.read_text(encoding="utf-8")) or {}
    if kustomization.get("kind") != "Component":
        raise UnsupportedKustomizationError(f"{kustomization_path}: a component must have kind Component")
    unknown = set(kustomization) - _SUPPORTED_FIELDS
    if unknown:
        raise UnsupportedKustomizationError(f"{kustomization_path}: unsupported fields {sorted(unknown)}")
    combined = list(resources)
    for entry in kustomization.get("resources", []):
        combined.extend(_load_resource_entry(directory, entry))
    _generate_config_maps(directory, kustomization, combined)
    for entry in kustomization.get("components", []):
        combined = _apply_component((directory / entry).resolve(), combined)
    _run_transformers(directory, kustomization, combined)
    return combined


def _load_resource_entry(directory: Path, entry: str) -> list[Resource]:
    if "://" in entry or entry.startswith("github.com/"):
        raise UnsupportedKustomizationError(f"remote resource {entry!r}")
    path = (directory / entry).resolve()
    if path.is_dir():
        return _build(path, expected_kind="Kustomization")
    if not path.is_file():
        raise FileNotFoundError(f"resource {entry!r} of {directory} does not exist")
    loaded = []
    for doc in load_yaml_documents(path):
        if doc.get("kind", "").endswith("List") and "items" in doc:
            raise UnsupportedKustomizationError(f"{path}: List documents")
        loaded.append(Resource(doc=doc, original_name=doc["metadata"]["name"]))
    return loaded


def _check_unique(resources: list[Resource], where: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for resource in resources:
        key = (resource.kind, resource.doc["metadata"].get("namespace", ""), resource.name)
        if key in seen:
            raise UnsupportedKustomizationError(f"{where}: resource {key} defined twice")
        seen.add(key)


# --- configMapGenerator ------------------------------------------------------------------------------


def _generator_options(kustomization: dict[str, Any]) -> _GeneratorOptions:
    options = kustomization.get("generatorOptions") or {}
    unknown = set(options) - {"disableNameSuffixHash", "labels", "annotations"}
    if unknown:
        raise UnsupportedKustomizationError(f"generatorOptions {sorted(unknown)}")
    return _GeneratorOptions(
        disable_hash=bool(options.get("disableNameSuffixHash", False)),
        labels=dict(options.get("labels") or {}),
        annotations=dict(options.get("annotations") or {}),
    )


def _generate_config_maps(directory: Path, kustomization: dict[str, Any], resources: list[Resource]) -> None:
    global_options = _generator_options(kustomization)
    for generator in kustomization.get("configMapGenerator", []):
        unknown = set(generator) - {"name", "namespace", "behavior", "literals", "envs", "files", "options"}
        if unknown:
            raise UnsupportedKustomizationError(
                f"configMapGenerator {generator.get('name')}: {sorted(unknown)}"
            )
        name = generator["name"]
        data = _generator_data(directory, generator)
        options = generator.get("options") or {}
        disable_hash = bool(options.get("disableNameSuffixHash", global_options.disable_hash))
        labels = {**global_options.labels, **(options.get("labels") or {})}
        annotations = {**global_options.annotations, **(options.get("annotations") or {})}
        behavior = generator.get("behavior", "create")
        if behavior == "create":
            metadata: dict[str, Any] = {"name": name}
            if generator.get("namespace"):
                metadata["namespace"] = generator["namespace"]
            if labels:
                metadata["labels"] = labels
            if annotations:
                metadata["annotations"] = annotations
            doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
            resources.append(Resource(doc=doc, original_name=name, hashed=not disable_hash, generated=True))
            continue
        if behavior not in ("merge", "replace"):
            raise UnsupportedKustomizationError(f"configMapGenerator {name}: behavior {behavior!r}")
        matches = [r for r in resources if r.kind == "ConfigMap" and r.original_name == name]
        if len(matches) != 1:
            raise UnsupportedKustomizationError(
                f"configMapGenerator {name}: behavior {behavior} needs exactly one ConfigMap {name} "
                f"from the resources, found {len(matches)}"
            )
        target = matches[0]
        if behavior == "merge":
            target.doc.setdefault("data", {}).update(data)
        else:
            target.doc["data"] = data
        metadata = target.doc["metadata"]
        if labels:
            metadata.setdefault("labels", {}).update(labels)
        if annotations:
            metadata.setdefault("annotations", {}).update(annotations)
        if "disableNameSuffixHash" in options:
            target.hashed = not disable_hash


def _generator_data(directory: Path, generator: dict[str, Any]) -> dict[str, str]:
    data: dict[str, str] = {}
    for env_file in generator.get("envs", []):
        for raw_line in (directory / env_file).read_text(encoding="utf-8").splitlines():
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            key, separator, value = line.partition("=")
            if not separator:
                raise UnsupportedKustomizationError(f"{env_file}: line {line!r} has no '='")
            data[key] = value
    for file_entry in generator.get("files", []):
        key, separator, file_path = file_entry.partition("=")
        if not separator:
            file_path, key = file_entry, Path(file_entry).name
        data[key] = (directory / file_path).read_text(encoding="utf-8")
    for literal in generator.get("literals", []):
        key, separator, value = literal.partition("=")
        if not separator:
            raise UnsupportedKustomizationError(f"literal {literal!r} has no '='")
        data[key] = value.strip('"') if len(value) >= 2 and value[0] == value[-1] == '"' else value
    return data


def config_map_hash(data: dict[str, str] | None) -> str:
    """kustomize's name suffix for a generated ConfigMap: 10 encoded hex chars of a SHA-256.

    kustomize v5 hashes the Go-JSON encoding of ``{"data", "kind", "name"}``, but looks the name up with the
    single path segment ``"metadata/name"``, which never matches, so ``name`` is always ``""``: only the data
    decides the suffix. Matched against ``kubectl kustomize`` in the tests.
    """
    encoded = json.dumps(
        {"data": data if data is not None else "", "kind": "ConfigMap", "name": ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _apply_name_hashes(resources: list[Resource]) -> None:
    renamed: dict[tuple[str, str], str] = {}
    for resource in resources:
        if resource.kind == "ConfigMap" and resource.hashed:
            new_name = f"{resource.name}-{config_map_hash(resource.doc.get('data'))}"
            namespace = resource.doc["metadata"].get("namespace", "")
            renamed[(namespace, resource.name)] = new_name
            resource.doc["metadata"]["name"] = new_name
    if not renamed:
        return
    for resource in resources:
        namespace = resource.doc["metadata"].get("namespace", "")
        for pod_spec in pod_specs(resource.doc):
            for ref in _config_map_refs(pod_spec):
                key = (namespace, ref["name"])
                if key in renamed:
                    ref["name"] = renamed[key]


def _config_map_refs(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for container in all_containers(pod_spec):
        for source in container.get("envFrom", []) or []:
            if "configMapRef" in source:
                yield source["configMapRef"]
        for variable in container.get("env", []) or []:
            ref = (variable.get("valueFrom") or {}).get("configMapKeyRef")
            if ref:
                yield ref
    for volume in pod_spec.get("volumes", []) or []:
        if "configMap" in volume:
            yield volume["configMap"]
        for source in (volume.get("projected") or {}).get("sources", []) or []:
            if "configMap" in source:
                yield source["configMap"]


# --- transformers ------------------------------------------------------------------------------------


def _run_transformers(directory: Path, kustomization: dict[str, Any], resources: list[Resource]) -> None:
    for patch in kustomization.get("patches", []):
        _apply_patch(directory, patch, resources)
    namespace = kustomization.get("namespace")
    if namespace:
        for resource in resources:
            if resource.kind not in CLUSTER_SCOPED_KINDS:
                resource.doc["metadata"]["namespace"] = namespace
    if "commonLabels" in kustomization:
        _add_labels(resources, kustomization["commonLabels"], selectors=True, templates=True)
    for entry in kustomization.get("labels", []):
        unknown = set(entry) - {"pairs", "includeSelectors", "includeTemplates"}
        if unknown:
            raise UnsupportedKustomizationError(f"labels: {sorted(unknown)}")
        selectors = bool(entry.get("includeSelectors", False))
        _add_labels(
            resources,
            entry.get("pairs", {}),
            selectors=selectors,
            templates=selectors or bool(entry.get("includeTemplates", False)),
        )
    for image in kustomization.get("images", []):
        _set_image(resources, image)
    for replica in kustomization.get("replicas", []):
        targets = [r for r in resources if r.kind in _SCALABLE_KINDS and r.name == replica["name"]]
        if not targets:
            raise UnsupportedKustomizationError(f"replicas: no workload named {replica['name']}")
        for target in targets:
            target.doc.setdefault("spec", {})["replicas"] = replica["count"]


def _add_labels(
    resources: list[Resource], pairs: dict[str, str], *, selectors: bool, templates: bool
) -> None:
    for resource in resources:
        doc = resource.doc
        doc["metadata"].setdefault("labels", {}).update(pairs)
        spec = doc.get("spec") or {}
        if templates and resource.kind in POD_TEMPLATE_KINDS:
            spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if templates and resource.kind == "CronJob":
            template = spec.setdefault("jobTemplate", {}).setdefault("spec", {}).setdefault("template", {})
            template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if selectors:
            if resource.kind in _MATCH_LABELS_SELECTOR_KINDS:
                spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)
            elif resource.kind == "Service":
                spec.setdefault("selector", {}).update(pairs)
            elif (
                resource.kind
                not in (
                    "ConfigMap",
                    "Secret",
                    "ServiceAccount",
                    "HorizontalPodAutoscaler",
                    "Ingress",
                    "Namespace",
                )
                and "selector" in spec
            ):
                raise UnsupportedKustomizationError(f"label selectors of kind {resource.kind}")


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` into its three parts (a registry port's colon is not a tag)."""
    name, _, digest = image.partition("@")
    tag = None
    last_segment = name.rsplit("/", 1)[-1]
    if ":" in last_segment:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None


def _set_image(resources: list[Resource], image: dict[str, Any]) -> None:
    unknown = set(image) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise UnsupportedKustomizationError(f"images: {sorted(unknown)}")
    for resource in resources:
        for pod_spec in pod_specs(resource.doc):
            for container in all_containers(pod_spec):
                name, tag, digest = split_image(container.get("image", ""))
                if name != image["name"]:
                    continue
                name = image.get("newName", name)
                if "digest" in image:
                    tag, digest = None, image["digest"]
                elif "newTag" in image:
                    tag, digest = str(image["newTag"]), None
                container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod specs inside an object: a Pod's own, a workload's template, a CronJob's job template."""
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        yield spec
    elif kind in POD_TEMPLATE_KINDS:
        template_spec = (spec.get("template") or {}).get("spec")
        if template_spec is not None:
            yield template_spec
    elif kind == "CronJob":
        job_spec = (spec.get("jobTemplate") or {}).get("spec") or {}
        template_spec = (job_spec.get("template") or {}).get("spec")
        if template_spec is not None:
            yield template_spec


def all_containers(pod_spec: dict[str, Any]) -> Iterable[dict[str, Any]]:
    return [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]


# --- patches -----------------------------------------------------------------------------------------


def _apply_patch(directory: Path, entry: dict[str, Any], resources: list[Resource]) -> None:
    unknown = set(entry) - {"path", "patch", "target", "options"}
    if unknown or entry.get("options"):
        raise UnsupportedKustomizationError(
            f"patches entry fields {sorted(unknown | set(entry.get('options') or {}))}"
        )
    if "path" in entry:
        text = (directory / entry["path"]).read_text(encoding="utf-8")
    elif "patch" in entry:
        text = entry["patch"]
    else:
        raise UnsupportedKustomizationError("a patches entry needs path or patch")
    documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    target = entry.get("target")
    if len(documents) == 1 and isinstance(documents[0], list):
        if not target:
            raise UnsupportedKustomizationError("a JSON 6902 patch needs a target")
        selected = _select(resources, target)
        for resource in selected:
            resource.doc = _json6902(resource.doc, documents[0])
        return
    for document in documents:
        if not isinstance(document, dict):
            raise UnsupportedKustomizationError("a patch document must be a mapping or a JSON 6902 list")
        if target:
            selected = _select(resources, target)
        else:
            selected = _select(
                resources,
                {
                    "kind": document.get("kind"),
                    "name": (document.get("metadata") or {}).get("name"),
                    "namespace": (document.get("metadata") or {}).get("namespace"),
                },
            )
        for resource in selected:
            patch = copy.deepcopy(document)
            if target:
                # A targeted patch applies whatever its own metadata names.
                patch.get("metadata", {}).pop("name", None)
                patch.get("metadata", {}).pop("namespace", None)
            resource.doc = strategic_merge(resource.doc, patch)


def _select(resources: list[Resource], target: dict[str, Any]) -> list[Resource]:
    unknown = set(target) - {"group", "version", "kind", "name", "namespace", "labelSelector"}
    if unknown:
        raise UnsupportedKustomizationError(f"patch target fields {sorted(unknown)}")
    selected = []
    for resource in resources:
        api_version = str(resource.doc.get("apiVersion", ""))
        group, _, version = api_version.rpartition("/")
        if target.get("kind") and resource.kind != target["kind"]:
            continue
        if target.get("name") and target["name"] not in (resource.name, resource.original_name):
            continue
        if target.get("namespace") and resource.doc["metadata"].get("namespace") != target["namespace"]:
            continue
        if target.get("group") is not None and target.get("group") != group:
            continue
        if target.get("version") and target["version"] != version:
            continue
        if target.get("labelSelector"):
            labels = resource.doc["metadata"].get("labels") or {}
            wanted = dict(item.split("=", 1) for item in str(target["labelSelector"]).split(","))
            if any(labels.get(key.strip()) != value.strip() for key, value in wanted.items()):
                continue
        selected.append(resource)
    if not selected:
        raise UnsupportedKustomizationError(f"patch target {target} matches no resource")
    return selected


def strategic_merge(base: Any, patch: Any, list_name: str | None = None) -> Any:
    """Kubernetes strategic merge of ``patch`` into ``base`` for the list keys in ``_LIST_MERGE_KEYS``."""
    if isinstance(patch, dict) and isinstance(base, dict):
        directive = patch.get("$patch")
        if directive == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        if directive == "delete":
            return None
        if directive is not None or any(k.startswith("$") for k in patch):
            raise UnsupportedKustomizationError(f"strategic-merge directive in {sorted(patch)}")
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = _strip_directives(value)
        return merged
    if isinstance(patch, list) and isinstance(base, list) and list_name in _LIST_MERGE_KEYS:
        return _merge_list(base, patch, _LIST_MERGE_KEYS[list_name])
    return _strip_directives(patch)


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        if any(k.startswith("$") for k in value):
            raise UnsupportedKustomizationError(f"strategic-merge directive in {sorted(value)}")
        return {k: _strip_directives(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _merge_list(base: list[Any], patch: list[Any], candidate_keys: tuple[str, ...]) -> list[Any]:
    def key_of(item: Any) -> tuple[str, Any] | None:
        if not isinstance(item, dict):
            return None
        for key in candidate_keys:
            if key in item:
                return key, item[key]
        return None

    # kustomize (kyaml) lists the patch's elements first, in the patch's order (merged with the base element
    # of the same key where there is one), then the base's remaining elements in their own order.
    merged_items = []
    patched_keys = set()
    for item in patch:
        item_key = key_of(item)
        if item_key is None:
            raise UnsupportedKustomizationError(f"list item without merge key {candidate_keys}: {item}")
        patched_keys.add(item_key)
        existing = next((e for e in base if key_of(e) == item_key), None)
        if isinstance(item, dict) and item.get("$patch") == "delete":
            continue
        merged_items.append(_strip_directives(item) if existing is None else strategic_merge(existing, item))
    return merged_items + [e for e in base if key_of(e) not in patched_keys]


def _json6902(doc: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for operation in operations:
        op, path = operation["op"], operation["path"]
        parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if op in ("add", "replace"):
            value = copy.deepcopy(operation["value"])
            if isinstance(parent, list):
                if last == "-":
                    parent.append(value)
                elif op == "add":
                    parent.insert(int(last), value)
                else:
                    parent[int(last)] = value
            else:
                if op == "replace" and last not in parent:
                    raise KeyError(f"JSON 6902 replace of missing {path}")
                parent[last] = value
        elif op == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            else:
                del parent[last]
        else:
            raise UnsupportedKustomizationError(f"JSON 6902 op {op!r}")
    return doc
