"""Checks of ``docker-compose.yml`` against the compose specification, the Dockerfiles and the settings."""

from __future__ import annotations

import base64
import binascii
import importlib.resources
import json
import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from .dockerfile_checks import parse_dockerfile
from .services import GATEWAY, REPO_ROOT, SERVICES, ServiceSpec

Compose = dict[str, Any]

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

#: Host ports compose may publish: the gateway and the identity provider a browser logs in with, and the
#: DIMSE port modalities and PACS send C-STORE to (DICOM has no gateway in front of it).
DIMSE_PORT = 11112
ALLOWED_PUBLISHED = {GATEWAY: {8080}, "keycloak": {8180}, "ingest": {DIMSE_PORT}}

#: Marks a credential as a public local-development value (see the header of docker-compose.yml).
LOCAL_DEV_MARK = "local-dev"


def is_marked_local_dev(value: str) -> bool:
    """The mark is in the value, or in the bytes of a base64 value (binary keys such as the archive KEK)."""
    if LOCAL_DEV_MARK in value:
        return True
    try:
        return LOCAL_DEV_MARK.encode() in base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False


@cache
def compose_schema() -> dict[str, Any]:
    """The compose-spec JSON schema, as vendored by check-jsonschema (no network needed)."""
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema


def schema_problems(compose: Compose) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(compose)]


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A compose service's environment (mapping or list form) with values as strings."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = [item.partition("=") for item in raw]
        return {key: (value if sep else None) for key, sep, value in pairs}
    return {
        key: (None if value is None else str(value).lower() if isinstance(value, bool) else str(value))
        for key, value in raw.items()
    }


def _dockerfile_of(service: dict[str, Any], root: Path) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return root / build / "Dockerfile"
    return root / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def _has_healthcheck(service: dict[str, Any], root: Path) -> bool:
    healthcheck = service.get("healthcheck")
    if healthcheck is not None:
        return not healthcheck.get("disable", False) and bool(healthcheck.get("test"))
    dockerfile = _dockerfile_of(service, root)
    if dockerfile is None or not dockerfile.is_file():
        return False
    final_stage = parse_dockerfile(dockerfile).stages[-1]
    return any(
        instruction.cmd == "HEALTHCHECK" and instruction.value[:1] != ("NONE",)
        for instruction in final_stage.instructions
    )


def _is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no" and "healthcheck" not in service


def structure_problems(compose: Compose, root: Path = REPO_ROOT) -> list[str]:
    """Builds, dependencies, health checks, published ports and bind mounts."""
    problems = []
    services: dict[str, Any] = compose.get("services") or {}
    for name, service in services.items():
        dockerfile = _dockerfile_of(service, root)
        if dockerfile is not None and not dockerfile.is_file():
            problems.append(f"{name}: build points at {dockerfile.relative_to(root)}, which does not exist")
        if "image" not in service and dockerfile is None:
            problems.append(f"{name}: neither image nor build")

        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, list):
            depends_on = {target: {"condition": "service_started"} for target in depends_on}
        for target, options in depends_on.items():
            if target not in services:
                problems.append(f"{name}: depends_on {target}, which is not a service")
                continue
            condition = (options or {}).get("condition", "service_started")
            if condition == "service_healthy" and not _has_healthcheck(services[target], root):
                problems.append(f"{name}: waits for {target} to be healthy, but {target} has no healthcheck")
            if condition == "service_completed_successfully" and not _is_one_shot(services[target]):
                problems.append(f"{name}: waits for {target} to complete, but {target} is long-running")
            if condition == "service_started" and not _is_one_shot(services[target]):
                problems.append(f"{name}: depends_on {target} without waiting for it to be healthy")

        if not _is_one_shot(service) and not _has_healthcheck(service, root):
            problems.append(f"{name}: long-running service without a healthcheck")

        for port in service.get("ports") or []:
            host_ip, host_port, _container_port = _parse_port(port)
            if host_port not in ALLOWED_PUBLISHED.get(name, set()):
                problems.append(f"{name}: publishes host port {host_port}; only {ALLOWED_PUBLISHED} may be")
            if host_ip not in ("127.0.0.1", "::1", "[::1]"):
                problems.append(f"{name}: port {port} listens on every host interface, bind it to 127.0.0.1")

    return problems


def bind_mount_problems(compose: Compose, root: Path = REPO_ROOT) -> list[str]:
    """Every file or directory that compose mounts from the repository exists."""
    problems = []
    for name, service in (compose.get("services") or {}).items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")) and not (root / source).exists():
                problems.append(f"{name}: bind mount source {source} does not exist")
    return problems


def _parse_port(port: Any) -> tuple[str | None, int | None, int]:
    if isinstance(port, dict):
        published = port.get("published")
        return port.get("host_ip"), int(published) if published else None, int(port["target"])
    parts = str(port).rsplit("/", 1)[0].split(":")
    if len(parts) == 1:
        return None, None, int(parts[0])
    if len(parts) == 2:
        return None, int(parts[0]), int(parts[1])
    return ":".join(parts[:-2]), int(parts[-2]), int(parts[-1])


def _hosts_in(value: str) -> list[str]:
    """Host names in a connection string: URLs, and comma-separated host:port lists."""
    if "://" in value:
        netloc = urlsplit(value).netloc.rsplit("@", 1)[-1]
        return [entry.rsplit(":", 1)[0] for entry in netloc.split(",")]
    return [entry.strip().rsplit(":", 1)[0] for entry in value.split(",") if entry.strip()]


def emage_service_problems(compose: Compose, spec: ServiceSpec) -> list[str]:
    """One e-mage service in compose: its Dockerfile, port, env names and connection targets."""
    services: dict[str, Any] = compose.get("services") or {}
    service = services.get(spec.name)
    where = f"compose {spec.name}"
    if service is None:
        return [f"{where}: missing"]
    problems = []
    dockerfile = _dockerfile_of(service, REPO_ROOT)
    if dockerfile is None or dockerfile.resolve() != spec.dockerfile.resolve():
        problems.append(f"{where}: must be built from {spec.dockerfile.relative_to(REPO_ROOT)}")
    image = str(service.get("image", ""))
    if image and image.split(":")[0].rsplit("/", 1)[-1] != spec.image:
        problems.append(f"{where}: image {image} is not named {spec.image}")
    env = environment(service)
    problems += spec.env_problems(env, where)
    for name in sorted(spec.secret_env_names & set(env)):
        value = env[name] or ""
        userinfo = urlsplit(value).netloc.rpartition("@")[0] if "://" in value else value
        if userinfo and not is_marked_local_dev(userinfo):
            problems.append(f"{where}: {name} holds a credential not marked '{LOCAL_DEV_MARK}'")
    connection_names = spec.required_env_names - {spec.env_name("http_host")}
    for name in sorted(connection_names & set(env)):
        if name.endswith("_S3_BUCKET") or not env[name]:
            continue
        if name in spec.secret_env_names and "://" not in (env[name] or ""):
            continue
        for host in _hosts_in(env[name] or ""):
            if host not in services:
                problems.append(f"{where}: {name} points at {host}, which is not a compose service")
    expected = {spec.http_port} | ({DIMSE_PORT} if spec.name == "ingest" else set())
    for port in service.get("ports") or []:
        container_port = _parse_port(port)[2]
        if container_port not in expected:
            problems.append(f"{where}: publishes container port {container_port}, not one of {expected}")
    return problems


def credential_problems(compose: Compose) -> list[str]:
    """Every password-like value of third-party services is visibly a local-development one."""
    problems = []
    for name, service in (compose.get("services") or {}).items():
        for key, value in environment(service).items():
            if re.search(r"PASSWORD|SECRET", key) and value and LOCAL_DEV_MARK not in value:
                problems.append(f"{name}: {key} is not marked as a '{LOCAL_DEV_MARK}' value")
    return problems


def all_problems(compose: Compose) -> list[str]:
    problems = schema_problems(compose) + structure_problems(compose) + credential_problems(compose)
    problems += bind_mount_problems(compose)
    for spec in SERVICES:
        problems += emage_service_problems(compose, spec)
    return problems


# --- the infrastructure services ----------------------------------------------------------------------

#: The topics of ARCHITECTURE.md; each also has a ``<topic>.dlq`` dead-letter topic.
DOMAIN_TOPICS = (
    "emage.acquisition.v1",
    "emage.instance.stored.v1",
    "emage.study.changed.v1",
    "emage.consent.changed.v1",
    "emage.share.changed.v1",
    "emage.access.decided.v1",
)

TOPICS_FILE = REPO_ROOT / "deploy" / "compose" / "kafka" / "topics.txt"
S3_IDENTITIES_FILE = REPO_ROOT / "deploy" / "compose" / "seaweedfs" / "s3.json"
REALM_FILE = REPO_ROOT / "deploy" / "local" / "keycloak" / "realm-emage.json"


def read_topics(text: str) -> dict[str, int]:
    """``name partitions`` lines of the topics file (``#`` comments and blank lines skipped)."""
    topics = {}
    for raw_line in text.splitlines():
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        name, partitions = line.split()
        if name in topics:
            raise ValueError(f"topic {name} listed twice")
        topics[name] = int(partitions)
    return topics


def topic_problems(topics: dict[str, int]) -> list[str]:
    expected = set(DOMAIN_TOPICS) | {f"{topic}.dlq" for topic in DOMAIN_TOPICS}
    problems = [f"topic {t} is missing" for t in sorted(expected - set(topics))]
    problems += [f"topic {t} is not one of ARCHITECTURE.md" for t in sorted(set(topics) - expected)]
    problems += [f"topic {t} has {n} partitions" for t, n in sorted(topics.items()) if n < 1]
    return problems


def _bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> repository-relative source, for the service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            source, target = parts[0], parts[1] if len(parts) > 1 else parts[0]
        else:
            source, target = volume.get("source", ""), volume.get("target", "")
        if source.startswith((".", "/")):
            mounts[target] = str(Path(source))
    return mounts


def _mounted_source(service: dict[str, Any], container_path: str) -> str | None:
    """The repository file that a container path comes from, through a file or directory bind mount."""
    for target, source in _bind_mounts(service).items():
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return str(Path(source) / container_path[len(target.rstrip("/")) + 1 :])
    return None


def _command_flags(service: dict[str, Any]) -> dict[str, str]:
    command = service.get("command") or []
    words = command.split() if isinstance(command, str) else [str(word) for word in command]
    flags = {}
    for word in words:
        if word.startswith("-"):
            key, _, value = word.lstrip("-").partition("=")
            flags[key] = value
    return flags


def kafka_problems(compose: Compose) -> list[str]:
    services = compose.get("services") or {}
    kafka, init = services.get("kafka") or {}, services.get("kafka-init") or {}
    kafka_env, init_env = environment(kafka), environment(init)
    problems = []
    if kafka_env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") != "false":
        problems.append("kafka: topic auto-creation must be off (topics are created with their partitions)")
    if "PLAINTEXT://kafka:9092" not in (kafka_env.get("KAFKA_ADVERTISED_LISTENERS") or ""):
        problems.append("kafka: must advertise PLAINTEXT://kafka:9092, the address the services use")
    topics_path = init_env.get("TOPICS_FILE") or ""
    source = _mounted_source(init, topics_path)
    if source is None or (REPO_ROOT / source).resolve() != TOPICS_FILE.resolve():
        problems.append(f"kafka-init: TOPICS_FILE {topics_path} is not {TOPICS_FILE.relative_to(REPO_ROOT)}")
    entrypoint = init.get("entrypoint") or []
    script = entrypoint[-1] if isinstance(entrypoint, list) and entrypoint else ""
    if _mounted_source(init, script) is None:
        problems.append(f"kafka-init: entrypoint script {script} is not mounted from the repository")
    for spec in SERVICES:
        condition = ((services.get(spec.name) or {}).get("depends_on") or {}).get("kafka-init", {})
        if (condition or {}).get("condition") != "service_completed_successfully":
            problems.append(f"{spec.name}: must start after kafka-init has created the topics")
        bootstrap = environment(services.get(spec.name) or {}).get(spec.env_name("kafka_bootstrap_servers"))
        if bootstrap is not None and bootstrap != "kafka:9092":
            problems.append(f"{spec.name}: Kafka bootstrap {bootstrap} is not the advertised kafka:9092")
    return problems


def object_store_problems(compose: Compose, identities: dict[str, Any]) -> list[str]:
    """SeaweedFS: an identities file is mounted, the bucket exists, ingest's key may use that bucket."""
    services = compose.get("services") or {}
    store = services.get("seaweedfs") or {}
    flags = _command_flags(store)
    problems = []
    config_path = flags.get("s3.config")
    if not config_path:
        problems.append("seaweedfs: no -s3.config identities file, so any key would be accepted")
    else:
        source = _mounted_source(store, config_path)
        if source is None or (REPO_ROOT / source).resolve() != S3_IDENTITIES_FILE.resolve():
            problems.append(
                f"seaweedfs: -s3.config={config_path} is not the mounted {S3_IDENTITIES_FILE.name}"
            )
    ingest = environment(services.get("ingest") or {})
    bucket = ingest.get("EMAGE_INGEST_S3_BUCKET")
    if bucket not in (flags.get("bucket") or "").split(","):
        problems.append(f"seaweedfs: -bucket does not create ingest's bucket {bucket}")
    endpoint = urlsplit(ingest.get("EMAGE_INGEST_S3_ENDPOINT_URL") or "")
    if endpoint.hostname != "seaweedfs" or str(endpoint.port) != flags.get("s3.port"):
        problems.append(f"ingest: S3 endpoint {endpoint.geturl()} is not seaweedfs:{flags.get('s3.port')}")
    key, secret = ingest.get("EMAGE_INGEST_S3_ACCESS_KEY_ID"), ingest.get("EMAGE_INGEST_S3_SECRET_ACCESS_KEY")
    granted: set[str] = set()
    for identity in identities.get("identities", []):
        if any(
            c.get("accessKey") == key and c.get("secretKey") == secret
            for c in identity.get("credentials", [])
        ):
            granted.update(identity.get("actions", []))
    for action in ("Read", "Write", "List"):
        if action not in granted and f"{action}:{bucket}" not in granted:
            problems.append(
                f"ingest's S3 key may not {action} bucket {bucket} (deploy/compose/seaweedfs/s3.json)"
            )
    return problems


def keycloak_problems(compose: Compose) -> list[str]:
    """The gateway validates the issuer Keycloak puts in tokens, and reaches it on the same address."""
    services = compose.get("services") or {}
    keycloak = services.get("keycloak") or {}
    env = environment(keycloak)
    issuer = environment(services.get(GATEWAY) or {}).get("EMAGE_ACCESS_OIDC_ISSUER") or ""
    problems = []
    hostname = (env.get("KC_HOSTNAME") or "").rstrip("/")
    if issuer != f"{hostname}/realms/emage":
        problems.append(f"access: OIDC issuer {issuer} is not Keycloak's {hostname}/realms/emage")
    issuer_url = urlsplit(issuer)
    if issuer_url.hostname != "keycloak" or str(issuer_url.port) != env.get("KC_HTTP_PORT"):
        problems.append(f"access: OIDC issuer {issuer} is not keycloak:{env.get('KC_HTTP_PORT')}")
    published = {_parse_port(p)[2] for p in keycloak.get("ports") or []}
    if env.get("KC_HTTP_PORT") and int(env["KC_HTTP_PORT"]) not in published:
        problems.append("keycloak: its HTTP port is not the published one")
    command = keycloak.get("command") or []
    if "--import-realm" not in command:
        problems.append("keycloak: start without --import-realm")
    realm = _mounted_source(keycloak, "/opt/keycloak/data/import/realm-emage.json")
    if realm is None or (REPO_ROOT / realm).resolve() != REALM_FILE.resolve():
        problems.append(f"keycloak: {REALM_FILE.relative_to(REPO_ROOT)} is not mounted for import")
    if env.get("KC_HEALTH_ENABLED") != "true":
        problems.append("keycloak: health endpoints are off, so its healthcheck can never pass")
    return problems


def mongo_problems(compose: Compose, init_script: str) -> list[str]:
    services = compose.get("services") or {}
    mongo = services.get("mongo") or {}
    command = [str(word) for word in mongo.get("command") or []]
    problems = []
    replica_set = command[command.index("--replSet") + 1] if "--replSet" in command else None
    if replica_set is None:
        problems.append("mongo: not started as a replica set (--replSet)")
    if f'_id: "{replica_set}"' not in init_script or 'host: "mongo:27017"' not in init_script:
        problems.append(f"mongo: the init script does not initiate {replica_set} with member mongo:27017")
    test = " ".join(str(word) for word in (mongo.get("healthcheck") or {}).get("test", []))
    script = next((word for word in test.split() if word.endswith(".js")), None)
    if script is None or _mounted_source(mongo, script) is None:
        problems.append("mongo: the healthcheck does not run the mounted init-replica-set.js")
    for spec in SERVICES:
        uri = environment(services.get(spec.name) or {}).get(spec.env_name("mongo_uri")) or ""
        if f"replicaSet={replica_set}" not in uri or urlsplit(uri).hostname != "mongo":
            problems.append(f"{spec.name}: Mongo URI {uri} must name host mongo and replicaSet={replica_set}")
    return problems
