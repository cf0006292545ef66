"""Checks of the services' Dockerfiles and of the ``.dockerignore`` that shapes their build context.

Dockerfiles are parsed with BuildKit's own parser (the ``dockerfile`` package wraps it), so a syntax error
fails here exactly as ``docker build`` would.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import dockerfile

from .services import REPO_ROOT, SERVICE_UID, ServiceSpec

#: Tools that have no business in a runtime image.
_BUILD_TOOLS = re.compile(r"\b(apt-get install|apk add|gcc|build-essential|pip install|uv (sync|pip))\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[dockerfile.Command] = field(default_factory=list)

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [i for i in self.instructions if i.cmd == cmd]


@dataclass
class ParsedDockerfile:
    path: Path
    global_args: list[dockerfile.Command]
    stages: list[Stage]


def parse_dockerfile_text(text: str, path: Path) -> ParsedDockerfile:
    commands = dockerfile.parse_string(text)
    global_args: list[dockerfile.Command] = []
    stages: list[Stage] = []
    for command in commands:
        if command.cmd == "FROM":
            value = list(command.value)
            name = value[2] if len(value) >= 3 and value[1].upper() == "AS" else None
            stages.append(Stage(base=value[0], name=name))
        elif stages:
            stages[-1].instructions.append(command)
        else:
            global_args.append(command)
    return ParsedDockerfile(path=path, global_args=global_args, stages=stages)


@cache
def parse_dockerfile(path: Path) -> ParsedDockerfile:
    return parse_dockerfile_text(path.read_text(encoding="utf-8"), path)


def _arg_defaults(instructions: Iterable[dockerfile.Command]) -> dict[str, str]:
    defaults = {}
    for instruction in instructions:
        if instruction.cmd == "ARG":
            name, separator, value = instruction.value[0].partition("=")
            if separator:
                defaults[name] = value.strip('"')
    return defaults


def _expand_args(text: str, parsed: ParsedDockerfile, stage: Stage) -> str:
    """Substitutes ``${NAME}`` / ``$NAME`` with the defaults of the ARGs in scope (global, then stage)."""
    defaults = {**_arg_defaults(parsed.global_args), **_arg_defaults(stage.instructions)}
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)",
        lambda m: defaults.get(m.group(1) or m.group(2), m.group(0)),
        text,
    )


def _env_pairs(instruction: dockerfile.Command) -> dict[str, str]:
    values = list(instruction.value)
    return {values[i]: values[i + 1].strip('"') for i in range(0, len(values) - 1, 2)}


def dockerfile_problems(parsed: ParsedDockerfile, spec: ServiceSpec) -> list[str]:
    """Multi-stage, uv from the lock, slim non-root runtime, the right port, health check and entrypoint."""
    where = (
        str(parsed.path.relative_to(REPO_ROOT)) if parsed.path.is_relative_to(REPO_ROOT) else str(parsed.path)
    )
    problems = []
    if len(parsed.stages) < 2:
        return [f"{where}: not a multi-stage build ({len(parsed.stages)} stage)"]
    builder, runtime = parsed.stages[0], parsed.stages[-1]
    stage_names = {s.name for s in parsed.stages if s.name}
    if runtime.base in stage_names:
        problems.append(f"{where}: the runtime stage starts from build stage {runtime.base}")

    build_commands = _expand_args(" ".join(" ".join(i.value) for i in builder.all("RUN")), parsed, builder)
    if not re.search(r"pip install [^&;]*[\"']?uv==[\d.]+", build_commands):
        problems.append(f"{where}: the builder must install a pinned uv (pip install uv==X.Y.Z)")
    sync_commands = [c for c in re.split(r"&&|;", build_commands) if "uv sync" in c]
    if not sync_commands:
        problems.append(f"{where}: the builder never runs uv sync")
    for command in sync_commands:
        for flag in ("--frozen", "--no-dev", f"--package {spec.package}"):
            if flag not in " ".join(shlex.split(command)):
                problems.append(f"{where}: '{command.strip()}' lacks {flag}")

    copies_from_builder = [i for i in runtime.all("COPY") if any(f.startswith("--from=") for f in i.flags)]
    if not copies_from_builder:
        problems.append(f"{where}: the runtime stage copies nothing from the builder")
    for run in runtime.all("RUN"):
        if _BUILD_TOOLS.search(" ".join(run.value)):
            problems.append(f"{where}: the runtime stage installs build tools: {' '.join(run.value)[:80]}")

    users = runtime.all("USER")
    user = users[-1].value[0].split(":")[0] if users else "root"
    if user in ("root", "0"):
        problems.append(f"{where}: the runtime stage runs as root")
    elif user != str(SERVICE_UID):
        problems.append(f"{where}: USER {user} is not the fixed UID {SERVICE_UID} the pods declare")

    exposed = {int(p.split("/")[0]) for i in runtime.all("EXPOSE") for p in i.value}
    if spec.http_port not in exposed:
        problems.append(f"{where}: EXPOSE {sorted(exposed)} lacks the service port {spec.http_port}")

    env: dict[str, str] = {}
    for instruction in runtime.all("ENV"):
        env.update(_env_pairs(instruction))
    # Connection settings belong to the deployment, not the image: only names and the listen address here.
    emage_env = {k: v for k, v in env.items() if k.startswith("EMAGE_")}
    problems += spec.env_problems(emage_env, where, require_connections=False)
    if env.get(spec.env_name("http_host")) != "0.0.0.0":  # noqa: S104 - listen beyond the container's loopback
        problems.append(f"{where}: ENV {spec.env_name('http_host')}=0.0.0.0 is missing")

    healthchecks = runtime.all("HEALTHCHECK")
    if not healthchecks:
        problems.append(f"{where}: no HEALTHCHECK")
    else:
        check = " ".join(healthchecks[-1].value)
        if (
            "/healthz" not in check
            or not re.search(r"\bpython3?\b", check)
            or str(spec.http_port) not in check
        ):
            problems.append(
                f"{where}: HEALTHCHECK must GET /healthz on {spec.http_port} with python: {check}"
            )
        if "curl" in check or "wget" in check:
            problems.append(f"{where}: HEALTHCHECK uses a tool the slim image does not have")

    entrypoints = runtime.all("ENTRYPOINT")
    if (
        not entrypoints
        or not entrypoints[-1].json
        or list(entrypoints[-1].value) != ["python", "-m", spec.module]
    ):
        problems.append(f'{where}: ENTRYPOINT must be ["python", "-m", "{spec.module}"] (exec form)')
    return problems


# --- .dockerignore -----------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go filepath.Match plus ``**``) as a regular expression on a relative path."""
    regex = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                regex += "(?:.*/)?"
            else:
                regex += ".*"
            continue
        if char == "*":
            regex += "[^/]*"
        elif char == "?":
            regex += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            regex += pattern[i : end + 1].replace("[!", "[^").replace("[^^", "[^")
            i = end
        else:
            regex += re.escape(char)
        i += 1
    return re.compile(f"^{regex}$")


@dataclass(frozen=True)
class DockerIgnore:
    rules: tuple[tuple[bool, str, re.Pattern[str]], ...]

    @classmethod
    def from_text(cls, text: str) -> DockerIgnore:
        rules = []
        for raw_line in text.splitlines():
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = line[1:].strip() if negated else line
            pattern = re.sub(r"/+$", "", pattern).lstrip("/") or "."
            rules.append((negated, pattern, _pattern_regex(pattern)))
        return cls(tuple(rules))

    def excluded(self, relative_path: str) -> bool:
        """Whether the path is left out of the context (a pattern matching a parent directory counts)."""
        parts = relative_path.strip("/").split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for negated, _, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not negated
        return excluded

    def context_files(self, root: Path, under: str = ".") -> list[str]:
        """Files of ``root/under`` that the build context would contain."""
        root = root.resolve()
        base = (root / under).resolve()
        if base.is_file():
            relative = base.relative_to(root).as_posix()
            return [] if self.excluded(relative) else [relative]
        files = []
        for directory, subdirectories, filenames in os.walk(base):
            relative_directory = Path(directory).relative_to(root).as_posix()
            prefix = "" if relative_directory == "." else relative_directory + "/"
            # Skip whole excluded trees (.git, .venv) unless an exception could re-include something in them.
            subdirectories[:] = [
                d for d in subdirectories if not self.excluded(prefix + d) or self._may_reinclude(prefix + d)
            ]
            files += [prefix + f for f in filenames if not self.excluded(prefix + f)]
        return sorted(files)

    def _may_reinclude(self, relative_directory: str) -> bool:
        return any(
            negated and (raw.startswith(relative_directory + "/") or raw.startswith("**"))
            for negated, raw, _ in self.rules
        )


def context_problems(parsed: ParsedDockerfile, ignore: DockerIgnore, root: Path = REPO_ROOT) -> list[str]:
    """Every COPY from the build context names files that exist and that .dockerignore lets through."""
    where = parsed.path.name
    problems = []
    for stage in parsed.stages:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            if any(f.startswith("--from=") for f in instruction.flags):
                continue
            for source in list(instruction.value)[:-1]:
                if not (root / source).exists():
                    problems.append(f"{where}: COPY source {source} does not exist")
                elif not ignore.context_files(root, source):
                    problems.append(f"{where}: COPY source {source} is excluded by .dockerignore")
    return problems
