"""docker-compose.yml runs, per configured terminal, exactly the roles the embedded stack runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from terminals.config import parse_sim_broker, parse_terminals
from tests.procs import free_port
from workers.stack import terminal_process_argvs

ROOT = Path(__file__).resolve().parents[2]


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_compose_has_every_role_of_every_terminal_with_the_same_command() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    env = services["web"]["environment"]
    terminals_file = env["BRIDGE_TERMINALS_FILE"].removeprefix("/app/")
    document = yaml.safe_load((ROOT / terminals_file).read_text())
    terminals, broker = parse_terminals(document), parse_sim_broker(document)
    assert terminals and broker is not None  # compose runs one emulated broker
    broker_host, _, broker_port = broker.address.rpartition(":")
    broker_command = services[broker_host]["command"]
    assert broker_command[:4] == ["python", "-m", "mt5sim", "broker"]
    assert _option(broker_command, "--address") == f"0.0.0.0:{broker_port}"  # it listens where the file says
    # with each server name and its clock
    assert [a for i, a in enumerate(broker_command) if broker_command[i - 1] == "--server"] == [
        f"{name}={offset}" for name, offset in broker.servers]
    # its journal outlives the container
    assert services[broker_host]["volumes"][0].split(":")[0] in compose["volumes"]
    for terminal in terminals:
        host, _, port = terminal.address.rpartition(":")
        sim = services[host]
        assert sim["command"][:4] == ["python", "-m", "mt5sim", "serve"]
        assert _option(sim["command"], "--address") == f"0.0.0.0:{port}"  # the emulator listens where the file says
        # a terminal of the broker, on the server name (and so the clock) the terminals file declares
        assert _option(sim["command"], "--broker") == broker.address
        assert _option(sim["command"], "--server") == terminal.server
        assert broker.offset_of(terminal.server) == terminal.utc_offset
        assert broker_host in sim["depends_on"]
        for role, argv in terminal_process_argvs(terminal.name).items():
            service = services[f"{role}-{terminal.name}"]
            assert service["command"] == argv
            assert service["environment"]["BRIDGE_TERMINALS_FILE"] == env["BRIDGE_TERMINALS_FILE"]
    for name in ("redis", "postgres", "web", "beat", "maintenance", "migrate", "sim-broker"):
        assert name in services


# -- production by default (docs/operations.md "Production defaults") ---------------------------------------
REQUIRED_SECRETS = ("SECRET_KEY", "BRIDGE_CREDENTIALS_KEY", "ALLOWED_HOSTS", "POSTGRES_PASSWORD", "REDIS_PASSWORD",
                    "BRIDGE_WINDOWS_PASSWORD")
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class MissingVariable(Exception):
    pass


def interpolate(value: object, env: dict[str, str]) -> object:
    """Compose's variable substitution ($$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err})."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        present = name in env and (env[name] != "" or op in (None, "-", "?"))
        if op in (":?", "?") and not present:
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and not present:
            return str(interpolate(arg, env))
        return env.get(name, "")

    return _VARIABLE.sub(one, value)


def _compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


def _generated_env(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "compose.env"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_env.py"), "--allowed-hosts",
                             "bridge.example.com", "--file", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert path.stat().st_mode & 0o077 == 0  # secrets: owner only
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_compose_runs_the_bridge_in_production_with_every_secret_required() -> None:
    compose = yaml.safe_load(_compose_text())
    services = compose["services"]
    for name in ("web", "events", "beat", "maintenance", "migrate", "worker-sim-1", "worker-sim-2"):
        env = services[name]["environment"]
        assert env["BRIDGE_ENV"] == "production", name
        for var in ("SECRET_KEY", "BRIDGE_CREDENTIALS_KEY", "ALLOWED_HOSTS"):
            assert re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", env[var]), (name, var, env[var])
        assert re.fullmatch(r"postgres://bridge:\$\{POSTGRES_PASSWORD:\?[^}]+\}@postgres:5432/bridge",
                            env["DATABASE_URL"]), env["DATABASE_URL"]
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/0", env["REDIS_URL"]), env["REDIS_URL"]
        assert env["BRIDGE_ADMIN_PATH"] == "${BRIDGE_ADMIN_PATH:-admin/}"
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", services["postgres"]["environment"]["POSTGRES_PASSWORD"])
    assert re.fullmatch(r"\$\{BRIDGE_WINDOWS_PASSWORD:\?[^}]+\}", services["windows"]["environment"]["PASSWORD"])


def test_compose_has_no_literal_password() -> None:
    compose = yaml.safe_load(_compose_text())

    def secrets_of(node: object, path: str = "") -> list[tuple[str, str]]:
        if isinstance(node, dict):
            return [s for k, v in node.items() for s in secrets_of(v, f"{path}.{k}")]
        if isinstance(node, list):
            return [s for i, v in enumerate(node) for s in secrets_of(v, f"{path}[{i}]")]
        return [(path, str(node))]

    for path, value in secrets_of(compose):
        name = path.rsplit(".", 1)[-1].upper()
        if any(word in name for word in ("PASSWORD", "SECRET", "_KEY", "TOKEN", "REDISCLI_AUTH")):
            # the whole value is one variable: required, or (the ops token) empty by default
            assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]+|:-)\}", value), (path, value)
        for userinfo in re.findall(r"://([^/@\s]*)@", value):  # credentials inside URLs
            assert re.fullmatch(r"[a-z]*:\$\{[A-Z_]+:\?[^}]+\}", userinfo), (path, value)
    text = _compose_text()
    assert not re.search(r"(PASSWORD|SECRET|_KEY)[A-Z_]*:?-", text) and "change-me" not in text.lower()


def test_compose_redis_requires_the_password() -> None:
    redis = yaml.safe_load(_compose_text())["services"]["redis"]
    command = " ".join(redis["command"])
    assert "requirepass" in command and "$$REDIS_PASSWORD" in command  # the container's variable, at run time
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")  # the healthcheck authenticates
    assert "docker-entrypoint.sh redis-server" in command  # the image's entrypoint drops root


def test_compose_refuses_without_the_secrets_and_renders_with_generated_ones(tmp_path: Path) -> None:
    compose = yaml.safe_load(_compose_text())
    for missing in REQUIRED_SECRETS:
        env = {k: v for k, v in _generated_env(tmp_path).items() if k != missing}
        with pytest.raises(MissingVariable, match=missing):
            interpolate(compose, env)
        with pytest.raises(MissingVariable, match=missing):
            interpolate(compose, {**env, missing: ""})  # empty is missing too (":?")
    rendered = interpolate(compose, _generated_env(tmp_path))
    web = rendered["services"]["web"]["environment"]
    assert web["BRIDGE_ENV"] == "production" and web["BRIDGE_ADMIN_PATH"] == "admin/"
    assert web["SECURE_SSL_REDIRECT"] == "true"


def test_the_environment_compose_renders_passes_the_production_checks(tmp_path: Path) -> None:
    """The web service's rendered environment (with gen_env.py's secrets) loads the production settings."""
    web = interpolate(yaml.safe_load(_compose_text()), _generated_env(tmp_path))["services"]["web"]["environment"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "REDIS", "DATABASE", "CELERY"))}
    env.update({k: str(v) for k, v in web.items()})
    env["BRIDGE_VAR_DIR"] = str(tmp_path / "var")  # not the container's /var/lib/bridge
    code = "import django; django.setup(); from django.conf import settings as s; print(s.SECURE_HSTS_SECONDS)"
    result = subprocess.run([sys.executable, "-c", code], env={**env, "DJANGO_SETTINGS_MODULE": "bridge_project.settings"},
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "31536000"


# The services that run the bridge's own code (the sim-* services run mt5sim, the windows VM its own).
BRIDGE_SERVICES = ("migrate", "web", "events", "beat", "maintenance", "worker-sim-1", "worker-sim-2")
_SETTINGS_OPTION = re.compile(r"--settings=(\S+)")


def _service_env(rendered: dict, name: str, tmp_path: Path) -> dict[str, str]:
    """The service's environment as compose renders it, on this host: the surrounding run's bridge
    variables removed, the container's paths (/app, /var/lib/bridge) mapped to the checkout and a temp dir."""
    service = rendered["services"][name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "REDIS", "DATABASE", "CELERY"))}
    env.update({k: str(v).replace("/app/", f"{ROOT}/") for k, v in service["environment"].items()})
    env["BRIDGE_VAR_DIR"] = str(tmp_path / "var")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def _service_argv(rendered: dict, name: str, tmp_path: Path) -> list[str]:
    """The service's command as compose runs it, with this venv's interpreter, bound to a free port."""
    argv = [str(a).replace("/var/lib/bridge", str(tmp_path / "var")) for a in rendered["services"][name]["command"]]
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] in ("gunicorn", "celery"):
        argv[:1] = [sys.executable, "-m", argv[0]]
    if name == "web":
        argv[argv.index("-b") + 1] = f"127.0.0.1:{free_port()}"
    if name == "events":
        argv[argv.index("-b") + 1], argv[argv.index("-p") + 1] = "127.0.0.1", str(free_port())
    return argv


def test_compose_with_the_development_secret_refuses_to_start_every_bridge_service(tmp_path: Path) -> None:
    """Compose renders a .env whose SECRET_KEY is the development key (a value is set: ``${VAR:?}`` lets it
    through), so the refusal must come from the bridge: each service's own command, run with the environment
    compose gives it, exits on the production check naming SECRET_KEY. With gen_env.py's key instead, the
    same environments load the settings (so the refusal is the secret's, not the environment's)."""
    from bridge_project.settings import DEV_SECRET_KEY

    compose = yaml.safe_load(_compose_text())
    good = _generated_env(tmp_path)
    (tmp_path / "var").mkdir()
    rendered = interpolate(compose, {**good, "SECRET_KEY": DEV_SECRET_KEY})
    accepted = interpolate(compose, good)
    services = {n for n, s in compose["services"].items()
                if (s.get("environment") or {}).get("BRIDGE_ENV") == "production"
                and "mt5sim" not in s.get("command", [])}
    assert services == set(BRIDGE_SERVICES), services  # a new service must be checked here too
    for name in BRIDGE_SERVICES:
        assert rendered["services"][name]["environment"]["SECRET_KEY"] == DEV_SECRET_KEY
        argv = _service_argv(rendered, name, tmp_path)
        result = subprocess.run(argv, env=_service_env(rendered, name, tmp_path), cwd=ROOT, capture_output=True,
                                text=True, timeout=90)
        output = result.stdout + result.stderr
        assert result.returncode != 0, (name, argv, output[-3000:])
        assert "BRIDGE_ENV=production refuses to start" in output and "SECRET_KEY is the development key" in output, \
            (name, argv, output[-3000:])
        settings_module = next((m[1] for a in argv if (m := _SETTINGS_OPTION.fullmatch(a))), "bridge_project.settings")
        code = "import django; django.setup(); from django.conf import settings as s; print(s.SECRET_KEY[:4])"
        loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                                env={**_service_env(accepted, name, tmp_path), "DJANGO_SETTINGS_MODULE": settings_module})
        assert loaded.returncode == 0, (name, loaded.stderr[-2000:])
        assert loaded.stdout.split()[-1] == good["SECRET_KEY"][:4], name


def test_every_daphne_of_compose_and_the_image_runs_with_the_bridge_http_limits() -> None:
    """A plain ``daphne`` drops a header line over 16 KiB with no answer and parses multipart bodies before
    auth (docs/operations.md, "The web servers"): compose's daphne and the image's CMD go through workers.stack."""
    commands = {name: [str(a) for a in service.get("command", [])]
                for name, service in yaml.safe_load(_compose_text())["services"].items()}
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd, "the Dockerfile has a CMD"
    commands["Dockerfile CMD"] = json.loads(cmd.group(1))
    daphnes = {name: argv for name, argv in commands.items() if any("daphne" in a for a in argv)}
    assert {"events", "Dockerfile CMD"} <= daphnes.keys(), daphnes
    for name, argv in daphnes.items():
        assert argv[:4] == ["python", "-m", "workers.stack", "daphne"], (name, argv)


def _docker_compose() -> list[str] | None:
    custom = os.environ.get("BRIDGE_TEST_COMPOSE_CLI")  # e.g. a compose installed outside PATH
    if custom:
        return custom.split()
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


@pytest.mark.skipif(_docker_compose() is None, reason="no docker compose CLI here (the checks above still run)")
def test_docker_compose_config_refuses_without_the_secrets(tmp_path: Path) -> None:
    cli = _docker_compose()
    empty = tmp_path / "empty.env"
    empty.write_text("")
    base = {k: v for k, v in os.environ.items() if k not in REQUIRED_SECRETS}
    argv = [*cli, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml")]
    refused = subprocess.run([*argv, "--env-file", str(empty), "config"], env=base, capture_output=True, text=True)
    assert refused.returncode != 0 and "set " in refused.stderr, refused.stderr
    generated = tmp_path / "generated.env"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_env.py"), "--allowed-hosts", "bridge.example.com",
                    "--file", str(generated)], check=True, capture_output=True)
    accepted = subprocess.run([*argv, "--env-file", str(generated), "config"], env=base, capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr
    resolved = yaml.safe_load(accepted.stdout)
    assert resolved["services"]["web"]["environment"]["BRIDGE_ENV"] == "production"
