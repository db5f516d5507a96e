"""The deployment files in deploy/, checked without a container engine.

No machine here has a Docker engine, so these tests read the files: the compose file
against the Compose Specification's JSON schema (``deploy/compose-spec.json``, the schema
Docker Compose v5.6.1 embeds, see deploy/README.md), its variables against
``deploy/.env.example``, its health checks, dependencies, volumes, secrets, ports and the
gateway's settings; each Dockerfile parsed into stages (dockerfile-parse), its COPY sources
against the build context and its ``.dockerignore``, and the gateway image kept free of
torch.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from sqlalchemy.engine import make_url

from facerec.cli.main import build_parser
from gateway.settings import Settings
from tests.support.data import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
SCHEMA = DEPLOY / "compose-spec.json"
DOCKERFILES = {"gateway": DEPLOY / "gateway.Dockerfile", "triton": DEPLOY / "triton.Dockerfile"}

# Variables that carry secrets: never a real value in .env.example, and Compose must stop
# (`${VAR:?...}`) rather than start with an empty one.
SECRET_VARIABLES = {"FACEREC_MASTER_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"}
PLACEHOLDER = "change-me"
STATEFUL = {"etcd", "minio", "milvus", "postgres", "gateway"}
INSTRUCTIONS = {
    "FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "EXPOSE", "HEALTHCHECK", "CMD",
    "ENTRYPOINT", "LABEL", "SHELL", "VOLUME", "STOPSIGNAL",
}  # fmt: skip


# --- compose ------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariableError(LookupError):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation: ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``$$``."""

    def replace(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["named"]
        value, op, arg = env.get(name), m["op"] or "", m["arg"] or ""
        unset = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if unset else str(value)
        if op.endswith("?"):
            if unset:
                raise MissingVariableError(f"{name}: {arg}")
            return str(value)
        if op.endswith("+"):
            return "" if unset else arg
        return value or ""

    return _VARIABLE.sub(replace, text)


def variables_in(text: str) -> dict[str, set[str]]:
    """Each variable the text interpolates, with the operators it is used with."""
    found: dict[str, set[str]] = {}
    for m in _VARIABLE.finditer(text):
        if not m["escaped"]:
            found.setdefault(m["braced"] or m["named"], set()).add(m["op"] or "")
    return found


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


@cache
def raw_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@cache
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


def compose_with(env: Mapping[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), env))
    return data


@cache
def schema_validator() -> Any:
    return jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = raw_compose()["services"]
    return result


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    return {name: {} for name in deps} if isinstance(deps, list) else dict(deps)


def schema_errors(document: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}"
        for e in schema_validator().iter_errors(document)
    ]


def test_compose_file_is_valid_under_the_compose_specification() -> None:
    assert schema_errors(raw_compose()) == []
    assert schema_errors(compose_with(env_example())) == []


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        (("services", "gateway"), "helthcheck", {"test": ["CMD", "true"]}),
        (("services", "gateway", "depends_on", "triton"), "condition", "service_ready"),
        (("services", "triton", "deploy", "resources", "reservations"), "devices", "gpu"),
        (("volumes",), "Bad Name", {}),
    ],
)
def test_schema_rejects_broken_variants(where: tuple[str, ...], key: str, value: Any) -> None:
    broken = copy.deepcopy(raw_compose())
    node = broken
    for part in where:
        node = node[part]
    node[key] = value
    assert schema_errors(broken), f"the schema accepted {where}.{key} = {value!r}"


def test_every_variable_is_defined_in_env_example_and_none_is_stale() -> None:
    used = set(variables_in(COMPOSE.read_text()))
    used |= {s["environment"] for s in raw_compose().get("secrets", {}).values()}
    defined = set(env_example())
    assert used - defined == set(), "used in docker-compose.yml, missing from .env.example"
    assert defined - used == set(), "in .env.example, used nowhere in docker-compose.yml"


def test_secrets_are_required_and_env_example_holds_none() -> None:
    uses = variables_in(COMPOSE.read_text())
    for name in SECRET_VARIABLES:
        assert env_example()[name] == PLACEHOLDER, f"{name} must stay {PLACEHOLDER!r}"
        assert uses.get(name, {":?"}) == {":?"}, f"{name} must be used as ${{{name}:?...}}"
        if name in uses:
            env = dict(env_example())
            del env[name]
            with pytest.raises(MissingVariableError, match=name):
                compose_with(env)
    assert env_example()["FACEREC_ADMIN_KEY"] in ("", PLACEHOLDER)
    # The real file stays out of git (deploy/.gitignore).
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/.env"], cwd=ROOT, check=False, timeout=10
    )
    assert ignored.returncode == 0, "deploy/.env is not git-ignored"


def test_every_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable", False), name
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    gateway = " ".join(services()["gateway"]["healthcheck"]["test"])
    triton = " ".join(services()["triton"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/healthz" in gateway
    assert "http://127.0.0.1:8000/v2/health/ready" in triton


def test_dependencies_exist_wait_for_health_and_start_in_order() -> None:
    all_services = services()
    for name, service in all_services.items():
        for dep, spec in depends_on(service).items():
            assert dep in all_services, f"{name} depends on unknown service {dep}"
            assert spec.get("condition") == "service_healthy", f"{name} -> {dep}"
            assert "healthcheck" in all_services[dep], f"{dep} cannot become healthy"
    assert set(depends_on(all_services["gateway"])) == {"triton", "milvus", "postgres"}
    assert set(depends_on(all_services["milvus"])) == {"etcd", "minio"}
    # A start order exists (no cycle).
    started: list[str] = []
    pending = dict(all_services)
    while pending:
        ready = [n for n, s in pending.items() if set(depends_on(s)) <= set(started)]
        assert ready, f"dependency cycle among {sorted(pending)}"
        started += ready
        for n in ready:
            del pending[n]


def _named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """``{volume name: container path}`` of a service's named volumes."""
    named = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, _, rest = entry.partition(":")
            target = rest.split(":")[0]
            kind = "bind" if source.startswith(("/", ".", "~", "$")) else "volume"
        else:
            source, target, kind = entry.get("source", ""), entry["target"], entry["type"]
        if kind == "volume" and source:
            named[source] = target
    return named


def test_named_volumes_are_declared_used_and_hold_the_state() -> None:
    declared = set(raw_compose().get("volumes", {}))
    used: set[str] = set()
    for name, service in services().items():
        volumes = _named_volumes(service)
        assert set(volumes) <= declared, f"{name} uses undeclared volumes"
        assert name not in STATEFUL or volumes, f"{name} keeps its data in the container"
        used |= set(volumes)
    assert declared == used, f"declared but unused: {declared - used}"
    assert _named_volumes(services()["postgres"]).popitem()[1] == "/var/lib/postgresql/data"
    assert _named_volumes(services()["gateway"]).popitem()[1] == "/var/lib/facerec"


def test_secrets_are_declared_and_reach_the_services_as_files() -> None:
    top = raw_compose()["secrets"]
    for name, service in services().items():
        for ref in service.get("secrets", []):
            source = ref if isinstance(ref, str) else ref["source"]
            assert source in top, f"{name} uses undeclared secret {source}"
    gateway_env = services()["gateway"]["environment"]
    assert "FACEREC_MASTER_KEY" not in gateway_env, "the master key goes in as a file"
    assert gateway_env["FACEREC_MASTER_KEY_FILE"] == "/run/secrets/facerec_master_key"
    assert top["facerec_master_key"] == {"environment": "FACEREC_MASTER_KEY"}
    postgres_env = services()["postgres"]["environment"]
    assert postgres_env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert top["postgres_password"] == {"environment": "POSTGRES_PASSWORD"}


def networks_of(service: dict[str, Any]) -> set[str]:
    networks = service["networks"]
    return set(networks) if isinstance(networks, (list, dict)) else set()


def test_only_the_load_balancer_publishes_a_port_on_loopback_by_default() -> None:
    published = {n for n, s in services().items() if s.get("ports")}
    assert published == {"lb"}
    for env in (env_example(), {k: v for k, v in env_example().items() if "GATEWAY" not in k}):
        (port,) = compose_with(env)["services"]["lb"]["ports"]
        host_ip, host_port, container_port = str(port).split(":")
        assert (host_ip, container_port) == ("127.0.0.1", "8000"), port
        assert host_port.isdigit(), port
    networks = raw_compose()["networks"]
    assert networks["backend"].get("internal") is True
    assert networks["edge"].get("internal") is True
    expected = {
        "lb": {"frontend", "edge"},  # clients in, replicas out
        "gateway": {"edge", "backend"},  # the API replicas: reached through the lb only
        "worker": {"backend", "frontend"},  # pulls the cameras' streams
    }
    for name, service in services().items():
        assert networks_of(service) == expected.get(name, {"backend"}), name


def test_the_load_balancer_runs_the_tested_configuration_before_the_replicas() -> None:
    lb = services()["lb"]
    (mount,) = lb["volumes"]
    assert (COMPOSE.parent / mount["source"]).resolve() == DEPLOY / "haproxy.cfg"
    assert mount["target"] == "/usr/local/etc/haproxy/haproxy.cfg" and mount["read_only"]
    assert depends_on(lb) == {"gateway": {"condition": "service_healthy"}}
    address = lb["networks"]["edge"]["ipv4_address"]
    for name in ("gateway", "worker"):  # X-Forwarded-For believed from the lb only
        assert services()[name]["environment"]["FACEREC_TRUSTED_PROXIES"] == address
    assert services()["gateway"]["command"][:3] == ["facerec", "serve", "--no-workers"]
    assert services()["worker"]["command"] == ["facerec", "worker"]
    config = (DEPLOY / "haproxy.cfg").read_text()
    assert "option httpchk GET /readyz" in config
    if shutil.which("haproxy"):  # the tests' own HAProxy checks the file as compose runs it
        env = {**os.environ, "FACEREC_LB_BIND": ":8000", "FACEREC_LB_STATS_BIND": "127.0.0.1:8404"}
        checked = subprocess.run(
            ["haproxy", "-c", "-f", str(DEPLOY / "haproxy.cfg")],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_triton_reserves_one_nvidia_gpu() -> None:
    devices = services()["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name, service in services().items():  # the others may only say how many run
        if name != "triton":
            assert set(service.get("deploy", {})) <= {"replicas"}, name
    replicas = compose_with(env_example())["services"]
    assert (
        replicas["gateway"]["deploy"]["replicas"],
        replicas["worker"]["deploy"]["replicas"],
    ) == (
        3,
        2,
    )


def test_gateway_environment_names_real_settings_and_real_services() -> None:
    env = compose_with(env_example())["services"]["gateway"]["environment"]
    fields = set(Settings.model_fields)
    names = {f"FACEREC_{f.upper()}" for f in fields}
    unknown = {k for k in env if k.startswith("FACEREC_")} - names
    assert unknown == set(), "not settings of gateway/settings.py"
    assert env["FACEREC_BACKEND"] == "triton"
    assert env["FACEREC_ENV"] == "production"
    url = make_url(env["FACEREC_DATABASE_URL"])
    postgres = services()["postgres"]["environment"]
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == ("postgres", 5432)
    assert (url.username, url.database) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])
    assert url.password == env_example()["POSTGRES_PASSWORD"]
    assert env["FACEREC_MILVUS_URI"] == "http://milvus:19530"
    assert env["FACEREC_TRITON_URL"] == "triton:8001"  # gRPC
    assert env.get("FACEREC_TRITON_PROTOCOL", "grpc") == "grpc"


def test_compose_builds_each_image_from_the_repository_root() -> None:
    for name, dockerfile in DOCKERFILES.items():
        build = services()[name]["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).resolve() == dockerfile
        assert dockerfile.with_name(dockerfile.name + ".dockerignore").is_file()


# --- Dockerfiles --------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


@cache
def stages(which: str) -> tuple[Stage, ...]:
    parser = DockerfileParser(fileobj=io.BytesIO(DOCKERFILES[which].read_bytes()))
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "COMMENT":
            continue
        assert instruction in INSTRUCTIONS, f"{which}: line {item['startline'] + 1}: {instruction}"
        if instruction == "ARG" and not result:
            key, _, default = value.partition("=")
            global_args[key] = default
        elif instruction == "FROM":
            image, *alias = value.split()
            assert len(alias) == 2 and alias[0].upper() == "AS", f"{which}: unnamed stage {value}"
            result.append(Stage(alias[1], interpolate(image, global_args)))
        else:
            assert result, f"{which}: {instruction} before FROM"
            result[-1].instructions.append((instruction, value))
    return tuple(result)


def _dockerignore(which: str) -> list[str]:
    path = DOCKERFILES[which].with_name(DOCKERFILES[which].name + ".dockerignore")
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _pattern(pattern: str) -> re.Pattern[str]:
    out = ""
    for token in re.split(r"(\*\*/|\*|\?)", pattern.strip("/")):
        out += {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(out)


def excluded(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its
    parent directories decides; ``!`` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern(pattern[1:] if negated else pattern)
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not negated
    return verdict


def shell_commands(stage: Stage) -> list[str]:
    """The commands of a stage's RUN instructions, split at ``&&``, ``||`` and ``;``."""
    commands = []
    for run in stage.values("RUN"):
        commands += [c.strip() for c in re.split(r"&&|\|\||;", run) if c.strip()]
    return commands


def _exec_form(value: str) -> list[str]:
    command = json.loads(value)
    assert isinstance(command, list) and all(isinstance(c, str) for c in command), value
    return command


@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_dockerfile_parses_into_named_stages(which: str) -> None:
    parsed = stages(which)
    names = [s.name for s in parsed]
    assert len(parsed) >= 2 and len(set(names)) == len(names), names
    assert names[-1] == which
    final = parsed[-1]
    assert len(final.values("CMD")) == 1
    _exec_form(final.values("CMD")[0])
    user = final.values("USER")[-1].split(":")[0]
    assert user not in ("root", "0"), f"{which} runs as root"
    (check,) = final.values("HEALTHCHECK")
    assert re.search(r"\bCMD\s*\[", check), check


@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_copy_sources_exist_or_come_from_an_earlier_stage(which: str) -> None:
    patterns = _dockerignore(which)
    parsed = stages(which)
    for index, stage in enumerate(parsed):
        assert not stage.values("ADD"), "use COPY"
        for value in stage.values("COPY"):
            words = shlex.split(value)
            flags = [w for w in words if w.startswith("--")]
            sources = [w for w in words if not w.startswith("--")][:-1]
            assert sources, value
            origin = [f.split("=", 1)[1] for f in flags if f.startswith("--from=")]
            if origin:
                earlier = {s.name for s in parsed[:index]}
                assert origin[0] in earlier, f"{which}: COPY --from={origin[0]} is no earlier stage"
                assert all(s.startswith("/") for s in sources), value
                continue
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"{which}: COPY source {source} is not in the repository"
                assert not excluded(source.rstrip("/"), patterns), f"{which}: {source} ignored"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                for file in files:
                    relative = file.relative_to(ROOT).as_posix()
                    if "__pycache__" not in relative and ".egg-info" not in relative:
                        assert not excluded(relative, patterns), f"{which}: {relative} ignored"
    for private in ("deploy/.env", ".env", ".venv/bin/python", "results/x.json", ".git/HEAD"):
        assert excluded(private, patterns), f"{which}: {private} would enter the build context"


def test_gateway_image_installs_no_torch() -> None:
    *builders, final = stages("gateway")
    assert final.base == "python:3.11-slim"
    installs = [c for c in shell_commands(final) if c.startswith("pip install")]
    assert installs and not any("torch" in c or "export" in c for c in installs), installs
    assert any(c.endswith('[gateway,triton]"') for c in installs), installs
    # ... and the build fails should a dependency bring torch along.
    assert any("pip show torch" in c for c in shell_commands(final))
    copied = [shlex.split(v) for v in final.values("COPY")]
    assert all(c[0].startswith("--from=") for c in copied), "the final stage copies no sources"
    assert ["/opt/facerec/models/", "/opt/facerec/models/"] in [c[1:] for c in copied]
    env = " ".join(final.values("ENV"))
    assert "FACEREC_HOME=/opt/facerec" in env
    # The conversion happens in the builder, with the CPU build of torch.
    builder_runs = " ".join(v for s in builders for v in s.values("RUN"))
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in builder_runs
    assert "facerec models" in builder_runs


def test_triton_image_is_tritonserver_24_10_with_the_model_repository() -> None:
    *builders, final = stages("triton")
    assert final.base == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert _exec_form(final.values("CMD")[0]) == ["tritonserver", "--model-repository=/models"]
    copied = [shlex.split(v) for v in final.values("COPY")]
    assert ["--from=models", "/models/", "/models/"] in copied
    builder_runs = " ".join(v for s in builders for v in s.values("RUN"))
    assert "facerec triton repo --target gpu --out /models" in builder_runs
    installs = [c for c in shell_commands(final) if c.startswith("pip install")]
    assert any("onnxruntime-gpu" in c for c in installs), installs
    assert any('"numpy<2"' in c for c in installs), "Triton 2.51's Python backend needs numpy<2"
    assert not any("torch" in c or "[" in c for c in installs), "the core only, no extras"
    (check,) = final.values("HEALTHCHECK")
    assert "http://127.0.0.1:8000/v2/health/ready" in check


def test_commands_use_real_facerec_flags() -> None:
    final = stages("gateway")[-1]
    command = _exec_form(final.values("CMD")[0])
    assert command[0] == "facerec"
    args = build_parser().parse_args(command[1:])
    assert (args.command, args.host) == ("serve", "0.0.0.0")
    (check,) = final.values("HEALTHCHECK")
    port = re.search(r"http://127\.0\.0\.1:(\d+)/healthz", check)
    assert port and int(port[1]) == (args.port or Settings.model_fields["port"].default)
    calls = [
        shlex.split(c)[1:]
        for which in DOCKERFILES
        for s in stages(which)
        for c in shell_commands(s)
        if c.startswith("facerec ")
    ]
    assert {c[0] for c in calls} == {"models", "triton"}, calls
    for call in calls:
        build_parser().parse_args(call)  # exits (SystemExit) on an unknown flag
