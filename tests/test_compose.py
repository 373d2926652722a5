"""The deployment files: docker-compose.yml, the Dockerfile, docker/gateway.toml, and the
runbook and metrics docs that describe them.

No container engine runs here, so the checks are the next best thing: Debian's
docker-compose validates and normalises the compose file (`docker-compose config`), the
services, mounts and secrets are then compared with what the runbook promises, the
gateway's and verifier's real settings loaders read the containers' configuration, every
path the Dockerfile copies is in the build context, and each health probe is run against
a real gateway and a real verifier on loopback. Last, every command the runbook shows is
parsed by the program it names, and docs/metrics.md is compared with the metrics code.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import gateway.__main__ as gateway_main
import keys.__main__ as keys_main
import orgs.__main__ as orgs_main
import verifier.__main__ as verifier_main
from gateway import queue_cli
from gateway import settings as gateway_settings
from gateway.metrics import Metrics
from keys import store as key_store
from tests.support import free_port, stop
from verifier import metrics as verifier_metrics
from verifier import settings as verifier_settings
from verifier.shared import SharedState

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
OPERATIONS_DOC = REPO / "docs" / "operations.md"
METRICS_DOC = REPO / "docs" / "metrics.md"
GATEWAY_TOML = REPO / "docker" / "gateway.toml"
GATEWAY_TOML_IN_CONTAINER = "/etc/sealpost/gateway.toml"
SEALPOST_SERVICES = ("keys-init", "log-init", "keys", "orgs", "gateway", "verifier")
SECRETS_DIR = "/run/secrets/"
# Inside a container a listener must face the compose network, not the container's loopback.
ANY_ADDRESS = "0.0.0.0"  # noqa: S104


# ----------------------------------------------------------------------------- compose


def _clean_env() -> dict[str, str]:
    """The test's environment without anything that would change what compose or the
    services read (a developer's SEALPOST_* or COMPOSE_* variables)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SEALPOST_", "COMPOSE_"))}


def _yaml_to_data(compose_binary: str, text: str) -> dict[str, Any]:
    """PyYAML is no project dependency; Debian's docker-compose is a Python program that
    depends on python3-yaml, so its own interpreter turns its output into JSON."""
    first_line = Path(compose_binary).read_text(encoding="utf-8", errors="replace").split("\n")[0]
    interpreter = first_line[2:].strip() if first_line.startswith("#!") else "/usr/bin/python3"
    converted = subprocess.run(
        [
            *interpreter.split(),
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    data: dict[str, Any] = json.loads(converted.stdout)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """`docker-compose config` output: the file validated, anchors merged, paths absolute."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed; on Debian 12: apt-get install docker-compose")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return _yaml_to_data(binary, result.stdout)


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"][name]
    return service


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    mode: str  # "ro" or "rw"


def _mounts(service: dict[str, Any]) -> dict[str, Mount]:
    """Mounts by target; `docker-compose config` writes them as source:target:mode."""
    found = {}
    for text in service.get("volumes", []):
        source, target, *rest = text.split(":")
        found[target] = Mount(source, target, rest[0] if rest else "rw")
    return found


def _ports(service: dict[str, Any]) -> dict[int, int]:
    """Published host port -> container port. `docker-compose config` writes a mapping
    when no host address is given, else "address:published:target/protocol"."""
    found = {}
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found[int(port["published"])] = int(port["target"])
        else:
            published, target = port.split("/")[0].split(":")[-2:]
            found[int(published)] = int(target)
    return found


def _gateway_toml() -> dict[str, Any]:
    return tomllib.loads(GATEWAY_TOML.read_text(encoding="utf-8"))


def _keys_init_domain(compose: dict[str, Any]) -> str:
    command: list[str] = _service(compose, "keys-init")["command"]
    return command[command.index("--domain") + 1]


def _log_init_option(compose: dict[str, Any], option: str) -> str:
    command: list[str] = _service(compose, "log-init")["command"]
    return command[command.index(option) + 1]


def test_the_compose_file_validates_and_has_the_seven_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*SEALPOST_SERVICES, "mailpit"}
    assert set(compose["volumes"]) == {
        "keys",
        "public",
        "log-key",
        "statement-log",
        "spool",
        "tls",
        "orgs",
    }


def test_keys_init_is_a_one_shot_that_writes_the_store_and_the_public_archive(
    compose: dict[str, Any],
) -> None:
    service = _service(compose, "keys-init")
    assert service["entrypoint"] == ["sealpost-keys"]
    assert service["command"][0] == "init"
    assert "--exist-ok" in service["command"]
    assert service["restart"] == "no"
    assert service["network_mode"] == "none"
    env = service["environment"]
    mounts = _mounts(service)
    assert mounts[env["SEALPOST_KEYS_STORE"]] == Mount("keys", env["SEALPOST_KEYS_STORE"], "rw")
    assert mounts[env["SEALPOST_KEYS_PUBLIC"]] == Mount("public", env["SEALPOST_KEYS_PUBLIC"], "rw")


def test_log_init_is_a_one_shot_that_makes_the_gateways_log_key_after_keys_init(
    compose: dict[str, Any],
) -> None:
    service = _service(compose, "log-init")
    assert service["entrypoint"] == ["sealpost-keys"]
    assert service["command"][0] == "log-key"
    assert "--exist-ok" in service["command"]
    assert service["restart"] == "no"
    assert service["network_mode"] == "none"
    assert service["depends_on"] == {"keys-init": {"condition": "service_completed_successfully"}}
    # It registers the log in the store and the public archive, and writes the key file.
    env = service["environment"]
    key_file = _log_init_option(compose, "--out")
    key_dir = str(Path(key_file).parent)
    assert _mounts(service) == {
        env["SEALPOST_KEYS_STORE"]: Mount("keys", env["SEALPOST_KEYS_STORE"], "rw"),
        env["SEALPOST_KEYS_PUBLIC"]: Mount("public", env["SEALPOST_KEYS_PUBLIC"], "rw"),
        key_dir: Mount("log-key", key_dir, "rw"),
    }
    # No passphrase: registering a log touches no encrypted key.
    assert "secrets" not in service
    assert not any("PASSPHRASE" in name for name in env)
    # The key it writes is the one the gateway's configuration reads.
    assert key_file == _gateway_toml()["log"]["key"]
    # The node's origin is in the fund's signing domain and names its own directory.
    origin = _log_init_option(compose, "--origin")
    assert origin.startswith(_keys_init_domain(compose) + "/statements/")
    assert key_store.log_directory(origin).startswith("log/")


def test_the_ops_key_tool_is_only_started_on_demand(compose: dict[str, Any]) -> None:
    service = _service(compose, "keys")
    assert service["profiles"] == ["ops"]
    assert service["entrypoint"] == ["sealpost-keys"]
    assert _mounts(service) == _mounts(_service(compose, "keys-init"))


def test_the_registry_of_insurers_is_kept_by_an_ops_tool_and_read_by_the_gateway(
    compose: dict[str, Any],
) -> None:
    service = _service(compose, "orgs")
    assert service["profiles"] == ["ops"]
    assert service["entrypoint"] == ["sealpost-orgs"]
    registry = _gateway_toml()["orgs"]["registry"]
    directory = str(Path(registry).parent)
    assert _mounts(service)[directory] == Mount("orgs", directory, "rw")
    assert _mounts(_service(compose, "gateway"))[directory] == Mount("orgs", directory, "rw")
    # The tool's default (the image's SEALPOST_ORGS_REGISTRY) is the gateway's file.
    _global, stages = _dockerfile()
    env = " ".join(a for i, a in stages[-1].instructions if i == "ENV")
    assert f"SEALPOST_ORGS_REGISTRY={registry}" in env


def test_the_gateway_mounts_the_private_store_read_only_and_spools_on_a_named_volume(
    compose: dict[str, Any],
) -> None:
    service = _service(compose, "gateway")
    config = _gateway_toml()
    mounts = _mounts(service)
    store = config["keys"]["store"]
    assert mounts[store] == Mount("keys", store, "ro")
    spool = config["spool"]["path"]
    assert mounts[spool] == Mount("spool", spool, "rw")
    assert mounts[spool].source in compose["volumes"]
    tls_dir = str(Path(config["tls"]["certificate"]).parent)
    assert mounts[tls_dir].source == "tls"
    assert mounts[GATEWAY_TOML_IN_CONTAINER] == Mount(
        str(GATEWAY_TOML), GATEWAY_TOML_IN_CONTAINER, "ro"
    )
    assert service["command"] == ["sealpost-gateway", "--config", GATEWAY_TOML_IN_CONTAINER]
    # The store is created by keys-init, never by a gateway that could not write it anyway.
    assert config["keys"]["init_domain"] == ""


def test_the_gateway_writes_the_statement_log_but_not_the_public_archive(
    compose: dict[str, Any],
) -> None:
    service = _service(compose, "gateway")
    config = _gateway_toml()
    mounts = _mounts(service)
    # The log's key, made by log-init, read-only.
    key_dir = str(Path(config["log"]["key"]).parent)
    assert mounts[key_dir] == Mount("log-key", key_dir, "ro")
    # Every log's directory is <public archive>/log/<origin>: its own volume, read-write.
    log_dir = str(Path(config["keys"]["public_archive"]) / "log")
    assert mounts[log_dir] == Mount("statement-log", log_dir, "rw")
    # The rest of the public archive (archive.json above all) is not the gateway's to write:
    # it does not even see it.
    assert "public" not in {mount.source for mount in mounts.values()}
    assert not any(
        Path(config["keys"]["public_archive"]).is_relative_to(target)
        for target, mount in mounts.items()
        if mount.mode == "rw"
    )
    assert service["depends_on"]["log-init"] == {"condition": "service_completed_successfully"}


def test_only_log_init_writes_the_log_key_and_only_the_gateway_reads_it(
    compose: dict[str, Any],
) -> None:
    for name in SEALPOST_SERVICES:
        sources = {m.source: m for m in _mounts(_service(compose, name)).values()}
        if name == "log-init":
            assert sources["log-key"].mode == "rw"
        elif name == "gateway":
            assert sources["log-key"].mode == "ro"
        else:
            assert "log-key" not in sources, name


def test_the_gateway_publishes_25_and_587_on_its_relay_and_submission_listeners(
    compose: dict[str, Any],
) -> None:
    config = _gateway_toml()
    relay_port = gateway_settings.parse_listen(config["relay"]["listen"])[1]
    submission_port = gateway_settings.parse_listen(config["submission"]["listen"])[1]
    assert _ports(_service(compose, "gateway")) == {25: relay_port, 587: submission_port}
    for name in ("relay", "submission"):
        assert gateway_settings.parse_listen(config[name]["listen"])[0] == ANY_ADDRESS


def test_the_gateway_starts_after_keys_init_has_completed(compose: dict[str, Any]) -> None:
    for name in ("gateway", "verifier"):
        depends = _service(compose, name)["depends_on"]
        assert depends["keys-init"] == {"condition": "service_completed_successfully"}


def test_the_verifier_sees_only_the_public_archive_the_log_and_the_registry(
    compose: dict[str, Any],
) -> None:
    service = _service(compose, "verifier")
    archive = service["environment"]["SEALPOST_VERIFIER_ARCHIVE_DIR"]
    log_dir = f"{archive}/log"
    registry = Path(service["environment"]["SEALPOST_VERIFIER_ORGS_REGISTRY"])
    # The statement log at the place the gateway writes it, inside the archive it reads;
    # the registry where the orgs service keeps it (an SQLite WAL reader needs write access).
    assert _mounts(service) == {
        archive: Mount("public", archive, "ro"),
        log_dir: Mount("statement-log", log_dir, "ro"),
        str(registry.parent): Mount("orgs", str(registry.parent), "rw"),
    }
    assert _mounts(_service(compose, "orgs"))[str(registry.parent)].source == "orgs"
    assert _mounts(_service(compose, "gateway"))[log_dir].source == "statement-log"
    assert "secrets" not in service
    assert not any("KEYS" in name for name in service["environment"])


def test_the_mail_catcher_is_the_gateways_downstream(compose: dict[str, Any]) -> None:
    delivery = _gateway_toml()["delivery"]
    assert delivery["route"] == "smarthost"
    host, port = gateway_settings.parse_listen(delivery["smarthost"])
    assert host == "mailpit"
    assert port == 1025  # mailpit's SMTP port
    assert "mailpit" in _service(compose, "gateway")["depends_on"]
    assert _service(compose, "mailpit")["image"].startswith("axllent/mailpit:v")


def test_the_passphrase_comes_only_from_a_compose_secret_file(compose: dict[str, Any]) -> None:
    secret = compose["secrets"]["keys_passphrase"]
    assert set(secret) == {"file"}
    secret_path = Path(secret["file"])
    assert secret_path.is_relative_to(REPO / "secrets")
    assert not _in_build_context(str(secret_path.relative_to(REPO)))
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        # Never a passphrase value in the file: only the name of a mounted secret file.
        assert "SEALPOST_KEYS_PASSPHRASE" not in env, name
        if "SEALPOST_KEYS_PASSPHRASE_FILE" in env:
            assert env["SEALPOST_KEYS_PASSPHRASE_FILE"] == SECRETS_DIR + "keys_passphrase"
            assert service["secrets"] == [{"source": "keys_passphrase"}]
        else:
            assert "secrets" not in service, name
    # The gateway needs no passphrase: only the root CA key is encrypted.
    assert "secrets" not in _service(compose, "gateway")


def test_every_sealpost_container_is_locked_down(compose: dict[str, Any]) -> None:
    for name in SEALPOST_SERVICES:
        service = _service(compose, name)
        assert service["image"] == "sealpost:local", name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "user" not in service, name  # the image's non-root user applies


def test_gateway_and_verifier_have_health_checks_on_their_real_endpoints(
    compose: dict[str, Any],
) -> None:
    gateway = _service(compose, "gateway")
    metrics_port = gateway_settings.parse_listen(_gateway_toml()["metrics"]["listen"])[1]
    gateway_url = urlsplit(gateway["environment"]["HEALTHCHECK_URL"])
    assert (gateway_url.hostname, gateway_url.port, gateway_url.path) == (
        "127.0.0.1",
        metrics_port,
        "/metrics",
    )
    verifier = _service(compose, "verifier")
    verifier_url = urlsplit(verifier["environment"]["HEALTHCHECK_URL"])
    port = int(verifier["environment"]["SEALPOST_VERIFIER_PORT"])
    assert (verifier_url.hostname, verifier_url.port, verifier_url.path) == (
        "127.0.0.1",
        port,
        "/healthz",
    )
    for service in (gateway, verifier):
        assert service["healthcheck"]["test"][:3] == ["CMD", "python", "-c"]
    # The gateway must be given longer to stop than it gives its SMTP sessions.
    grace = _gateway_toml()["gateway"]["shutdown_grace"]
    assert _seconds(gateway["stop_grace_period"]) > grace


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match is not None, duration
    return float(match.group(1))


def test_the_gateway_config_loads_with_the_compose_environment(compose: dict[str, Any]) -> None:
    env = _service(compose, "gateway")["environment"]
    settings = gateway_settings.load(GATEWAY_TOML, environ=env)
    domain = _keys_init_domain(compose)
    (client,) = [c for c in settings.clients if c.networks]
    assert client.sender_domains == (domain,)
    subnet = compose["networks"]["sealpost"]["ipam"]["config"][0]["subnet"]
    assert client.networks == (subnet,)
    assert _service(compose, "gateway")["hostname"].endswith("." + domain)
    # The retired-key overlap in the runbook assumes at most 5 days in the queue.
    assert settings.delivery.max_lifetime == 5 * 86400


def test_the_verifier_environment_parses_into_its_settings(compose: dict[str, Any]) -> None:
    env = _service(compose, "verifier")["environment"]
    settings = verifier_settings.from_env(env)
    assert settings.host == ANY_ADDRESS
    assert _ports(_service(compose, "verifier")) == {8080: settings.port}
    # Published on the host's loopback only, unless SEALPOST_VERIFIER_PUBLISH says otherwise.
    assert _service(compose, "verifier")["ports"] == ["127.0.0.1:8080:8080/tcp"]
    assert str(settings.archive_dir) == env["SEALPOST_VERIFIER_ARCHIVE_DIR"]


def test_the_compose_commands_are_the_projects_entry_points(compose: dict[str, Any]) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    for name in SEALPOST_SERVICES:
        service = _service(compose, name)
        program = (service.get("entrypoint") or service["command"])[0]
        assert program in scripts, name


# ----------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Stage:
    base: str
    name: str
    instructions: tuple[tuple[str, str], ...]  # (INSTRUCTION, arguments)


def _dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined = (pending + line).strip()
        pending = ""
        if joined:
            logical.append(joined)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[tuple[str, str]] | None = None
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = arguments.split()
            base = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            current = []
            stages.append(Stage(base, name, ()))
            continue
        if current is None:
            if instruction == "ARG":
                key, _, value = arguments.partition("=")
                global_args[key] = value
            continue
        current.append((instruction, arguments.strip()))
        stages[-1] = Stage(stages[-1].base, stages[-1].name, tuple(current))
    return global_args, stages


def _expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def _stage_args(stage: Stage) -> dict[str, str]:
    found = {}
    for instruction, arguments in stage.instructions:
        if instruction == "ARG":
            key, _, value = arguments.partition("=")
            found[key] = value
    return found


def test_the_dockerfile_is_multi_stage_on_slim_python_311() -> None:
    global_args, stages = _dockerfile()
    assert [s.name for s in stages] == ["build", "runtime"]
    for stage in stages:
        base = _expand(stage.base, global_args)
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base


def test_the_final_stage_runs_as_a_non_root_user() -> None:
    _global, stages = _dockerfile()
    runtime = stages[-1]
    users = [arguments for instruction, arguments in runtime.instructions if instruction == "USER"]
    assert users, "the final stage sets no USER: the containers would run as root"
    user, _, group = _expand(users[-1], _stage_args(runtime)).partition(":")
    assert user.isdigit(), user
    assert int(user) != 0
    assert group.isdigit(), group
    assert int(group) != 0
    # ... and that uid is a real account of the image (getpass and audit logs need one).
    runs = " ".join(a for i, a in runtime.instructions if i == "RUN")
    assert f"--uid {user}" in _expand(runs, _stage_args(runtime)).replace('"', "")


def test_the_final_stage_copies_only_the_venv_and_installs_no_build_tools() -> None:
    _global, stages = _dockerfile()
    build, runtime = stages
    copies = [a for i, a in runtime.instructions if i in ("COPY", "ADD")]
    assert copies == ["--from=build /opt/sealpost /opt/sealpost"]
    runs = " ".join(a for i, a in runtime.instructions if i == "RUN")
    for tool in ("apt-get", "apt ", "gcc", "build-essential", "pip install"):
        assert tool not in runs, tool
    assert "python -m venv /opt/sealpost" in " ".join(a for i, a in build.instructions)
    env = " ".join(a for i, a in runtime.instructions if i == "ENV")
    assert "PATH=/opt/sealpost/bin:" in env


def test_every_named_volume_mounts_on_a_directory_the_image_gives_its_user(
    compose: dict[str, Any],
) -> None:
    """A new named volume starts as a copy of the image directory it is mounted on,
    owner included; on a path the image lacks it would belong to root, and the non-root
    services could not write it."""
    _global, stages = _dockerfile()
    runtime = stages[-1]
    created = " ".join(
        a for i, a in runtime.instructions if i == "RUN" and "install -d -o sealpost" in a
    )
    for name in SEALPOST_SERVICES:
        for mount in _mounts(_service(compose, name)).values():
            if mount.source in compose["volumes"]:
                assert re.search(rf"\s{re.escape(mount.target)}(\s|$)", created), mount


def _in_build_context(relative: str) -> bool:
    """Whether .dockerignore lets `relative` into the build context: the last pattern that
    matches the path or one of its parent directories decides, as in Docker."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    parts = Path(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(candidate, glob) for candidate in candidates):
            included = negated
    return included


def _copy_sources() -> list[str]:
    """Sources of every COPY/ADD from the build context (not --from another stage)."""
    _global, stages = _dockerfile()
    sources = []
    for stage in stages:
        for instruction, arguments in stage.instructions:
            if instruction not in ("COPY", "ADD"):
                continue
            words = [w for w in arguments.split() if not w.startswith("--")]
            if any(w.startswith("--from") for w in arguments.split()):
                continue
            sources.extend(words[:-1])
    return sources


def test_every_path_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    sources = _copy_sources()
    assert sources, "the Dockerfile copies nothing from the repository"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
        assert _in_build_context(source.rstrip("/")), f"COPY {source}: .dockerignore drops it"


def test_the_build_context_holds_what_the_wheel_needs_and_no_secrets() -> None:
    copied = {s.rstrip("/") for s in _copy_sources()}
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied
    assert project["project"]["readme"] in copied  # setuptools reads it for the metadata
    for private in ("var/keys/state.json", "secrets/keys_passphrase", ".venv/bin/python", ".git"):
        assert not _in_build_context(private), private
    assert not _in_build_context("keys/__pycache__/store.cpython-311.pyc")


def test_every_runtime_dependency_is_pinned_by_the_lock_file() -> None:
    """The build stage installs with the lock as a constraint: an unpinned dependency would
    float to whatever the index has on build day."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    locked = {
        line.split("==")[0].strip().lower().replace("_", "-")
        for line in (REPO / "requirements.lock").read_text(encoding="utf-8").splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    }
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in locked, requirement


# ----------------------------------------------------------------------------- health probes


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited during start-up"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    pytest.fail(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def _running(argv: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        stop(process, grace=15)


def _probe(service: dict[str, Any], port: int) -> int:
    """Runs the service's health check command, its URL aimed at `port`; the exit status."""
    argv = list(service["healthcheck"]["test"][1:])
    assert argv[0] == "python"
    argv[0] = sys.executable
    url = urlsplit(service["environment"]["HEALTHCHECK_URL"])
    moved = urlunsplit(url._replace(netloc=f"127.0.0.1:{port}"))
    env = {**_clean_env(), "HEALTHCHECK_URL": moved}
    return subprocess.run(argv, env=env, capture_output=True, timeout=20).returncode


@dataclass(frozen=True)
class KeyDirs:
    store: Path
    public: Path
    log_key: Path


@pytest.fixture(scope="module")
def key_store_dirs(compose: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> KeyDirs:
    """A store as keys-init and then log-init leave it (same domain, same log origin)."""
    root = tmp_path_factory.mktemp("keys")
    store, public, log_key = root / "keys", root / "public", root / "log-key" / "log.key"
    domain = _keys_init_domain(compose)
    key_store.init_domain(store, public, domain, passphrase=b"test passphrase")
    origin = _log_init_option(compose, "--origin")
    argv = ["--store", str(store), "--public", str(public), "log-key", "--origin", origin]
    assert keys_main.main([*argv, "--out", str(log_key), "--exist-ok"]) == 0
    # log-init on a later `up` changes nothing.
    assert keys_main.main([*argv, "--out", str(log_key), "--exist-ok"]) == 0
    assert log_key.stat().st_mode & 0o777 == 0o600
    return KeyDirs(store, public, log_key)


def test_the_verifier_probe_passes_on_a_running_verifier_and_fails_without_archive(
    compose: dict[str, Any], key_store_dirs: KeyDirs, tmp_path: Path
) -> None:
    service = _service(compose, "verifier")
    public = key_store_dirs.public
    for archive, expected_healthy in ((public, True), (tmp_path / "empty", False)):
        archive.mkdir(exist_ok=True)
        port = free_port()
        env = {
            **_clean_env(),
            **{k: v for k, v in service["environment"].items() if k != "HEALTHCHECK_URL"},
            "SEALPOST_VERIFIER_HOST": "127.0.0.1",
            "SEALPOST_VERIFIER_PORT": str(port),
            "SEALPOST_VERIFIER_ARCHIVE_DIR": str(archive),
            "SEALPOST_VERIFIER_WORKERS": "1",
        }
        with _running([sys.executable, "-m", "verifier"], env, tmp_path) as process:
            _wait_for_port(port, process)
            assert (_probe(service, port) == 0) is expected_healthy, archive
        # Nothing listens any more: the probe must say so rather than hang.
        assert _probe(service, port) != 0


def test_the_gateway_probe_passes_on_a_gateway_started_from_the_container_config(
    compose: dict[str, Any], key_store_dirs: KeyDirs, tmp_path: Path
) -> None:
    service = _service(compose, "gateway")
    store, public = key_store_dirs.store, key_store_dirs.public
    metrics_port = free_port()
    prefix = gateway_settings.ENV_PREFIX
    # docker/gateway.toml as it is, with only its container paths and ports moved here.
    overrides = {
        "KEYS_STORE": str(store),
        "KEYS_PUBLIC_ARCHIVE": str(public),
        "LOG_KEY": str(key_store_dirs.log_key),
        "SPOOL_PATH": str(tmp_path / "spool"),
        "ORGS_REGISTRY": str(tmp_path / "orgs" / "registry.sqlite"),
        "TLS_CERTIFICATE": str(tmp_path / "tls" / "cert.pem"),
        "TLS_KEY": str(tmp_path / "tls" / "key.pem"),
        "RELAY_LISTEN": "127.0.0.1:0",
        "SUBMISSION_LISTEN": "127.0.0.1:0",
        "METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "SEALING_WORKERS": "0",
    }
    env = {**_clean_env(), **{prefix + k: v for k, v in overrides.items()}}
    argv = [sys.executable, "-m", "gateway", "--config", str(GATEWAY_TOML)]
    # Its statement log goes where the statement-log volume is mounted, <archive>/log/...
    log_dir = public / key_store.log_directory(_log_init_option(compose, "--origin"))
    with _running(argv, env, tmp_path) as process:
        _wait_for_port(metrics_port, process)
        assert _probe(service, metrics_port) == 0
        deadline = time.monotonic() + 20
        while not (log_dir / "checkpoint").is_file():
            assert time.monotonic() < deadline, f"no checkpoint in {log_dir}"
            assert process.poll() is None, "the gateway exited"
            time.sleep(0.1)
    assert _probe(service, metrics_port) != 0


# ----------------------------------------------------------------------------- docs


def _documented_commands() -> list[tuple[str, list[str]]]:
    """(program, arguments) of every Sealpost command in the runbook's ```sh blocks,
    including those run through docker-compose."""
    commands = []
    in_block = False
    for line in OPERATIONS_DOC.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_block = stripped == "```sh" if not in_block else False
            continue
        if not in_block:
            continue
        words = shlex.split(stripped, comments=True)
        programs = [i for i, w in enumerate(words) if w.startswith("sealpost-")]
        if programs:
            commands.append((words[programs[0]], words[programs[0] + 1 :]))
        elif words[:1] == ["docker-compose"] and "keys" in words:
            commands.append(("sealpost-keys", words[words.index("keys") + 1 :]))
    return commands


def _parses(program: str, arguments: list[str]) -> None:
    """Raises SystemExit (argparse's way) when `program` would refuse `arguments`."""
    if program == "sealpost-keys":
        keys_main.build_parser().parse_args(arguments)
    elif program == "sealpost-gateway":
        namespace = gateway_main.build_parser().parse_args(arguments)
        if namespace.command == "queue":
            queue_cli.parser().parse_args(namespace.args)
    elif program == "sealpost-verifier":
        verifier_main.parse_args(arguments, verifier_settings.Settings())
    elif program == "sealpost-orgs":
        orgs_main.build_parser().parse_args(arguments)
    else:
        pytest.fail(f"the runbook names an unknown program {program}")


def test_every_command_in_the_runbook_is_accepted_by_its_program() -> None:
    commands = _documented_commands()
    programs = {program for program, _ in commands}
    assert programs == {"sealpost-keys", "sealpost-gateway", "sealpost-verifier", "sealpost-orgs"}
    keys_commands = {arguments[0] for program, arguments in commands if program == "sealpost-keys"}
    # The lifecycle the runbook walks through, every step shown as a command.
    assert {"init", "dns", "rotate", "activate", "withdraw", "revoke", "list"} <= keys_commands
    for program, arguments in commands:
        try:
            _parses(program, arguments)
        except SystemExit:
            pytest.fail(f"{program} refuses the documented command: {shlex.join(arguments)}")


def _rejection_reasons() -> set[str]:
    """Every `reason` label the gateway can count: the policy's Rejection(..., reason)
    constants and the handler's own rejected.inc("...") calls."""
    reasons = set()
    for module in ("policy.py", "smtp_handler.py"):
        tree = ast.parse((REPO / "gateway" / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            argument = node.args[-1] if name == "Rejection" else node.args[0]
            if name in ("Rejection", "inc") and isinstance(argument, ast.Constant):
                reasons.add(str(argument.value))
    return reasons


async def test_docs_metrics_names_every_gateway_metric_and_rejection_reason() -> None:
    metrics = Metrics()

    async def depth() -> int:
        return 0

    metrics.queue_depth = depth
    metrics.signing = lambda: [("caisses.example", "202611", 1.8e9)]
    metrics.destinations = list  # no destination listed: the families still render
    rendered = await metrics.render()
    names = {line.split()[2] for line in rendered.splitlines() if line.startswith("# TYPE ")}
    verifier_text = verifier_metrics.render(SharedState.in_memory())
    names |= {line.split()[2] for line in verifier_text.splitlines() if line.startswith("# TYPE ")}
    text = METRICS_DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"`(sealpost_[a-z_]+)`", text))
    assert documented == names
    reasons = _rejection_reasons()
    assert "relay_denied" in reasons  # the AST walk found the policy's reasons
    for reason in reasons:
        assert f"`{reason}`" in text, f"docs/metrics.md does not explain reason {reason}"
