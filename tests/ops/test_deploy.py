"""The Windows VM deployment, checked as far as Linux can: the compose file (with and without the
``windows`` profile), the PowerShell scripts' syntax, the per-terminal command lines, the pins.

What this does NOT prove: that Windows boots, that the scripts behave on Windows, that a broker
installer takes ``/auto``. No Windows or PowerShell runs here (see docs/operations.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.windows.plan import plan
from workers.stack import terminal_process_argvs

ROOT = Path(__file__).resolve().parents[2]
WINDOWS = ROOT / "deploy" / "windows"
SCRIPTS = sorted((WINDOWS / "oem").glob("*.ps1"))
VENV_PY = r"C:\bridge\venv\Scripts\python.exe"

SAMPLE = {
    "terminals": [
        {"name": "icm-1", "backend": "mt5", "path": r"C:\bridge\terminals\icm-1\terminal64.exe",
         "utc_offset": "+02:00", "installer": "icmarkets5setup.exe"},
        {"name": "pep-1", "backend": "mt5", "path": r"C:\bridge\terminals\pep-1\terminal64.exe", "utc_offset": 10800},
        {"name": "sim-1", "backend": "sim", "address": "127.0.0.1:18801"},
    ]
}


# -- the per-terminal processes ----------------------------------------------------------------------
def test_plan_renders_each_mt5_terminal_with_the_linux_command_lines() -> None:
    rendered = plan(SAMPLE, python=VENV_PY, root=r"C:\bridge", logs=r"\\host.lan\Data\logs\VM1")
    assert [t["name"] for t in rendered["terminals"]] == ["icm-1", "pep-1"]  # sim terminals run on Linux
    icm = rendered["terminals"][0]
    assert icm["installDir"] == r"C:\bridge\terminals\icm-1" and icm["installer"] == "icmarkets5setup.exe"
    assert icm["utcOffset"] == 7200
    by_id = {p["id"]: p for p in rendered["processes"]}
    for name in ("icm-1", "pep-1"):
        linux = terminal_process_argvs(name, VENV_PY)
        assert set(linux) == {"worker"}  # one process per terminal: the reader and the poller are its threads
        roles = [p["role"] for p in rendered["processes"] if p["terminal"] == name]
        assert roles == ["terminal", "worker"]
        for role, argv in linux.items():
            entry = by_id[f"{name}.{role}"]
            assert entry["argv"] == argv  # the very command line the Linux stack runs
            assert entry["cwd"] == r"C:\bridge\app"
            assert entry["log"] == rf"\\host.lan\Data\logs\VM1\{name}.{role}.log"
        assert by_id[f"{name}.terminal"]["argv"] == [rf"C:\bridge\terminals\{name}\terminal64.exe", "/portable"]
    worker = by_id["icm-1.worker"]["argv"]
    assert worker == [VENV_PY, "manage.py", "run_terminal_worker", "icm-1", "--settings=bridge_project.settings_terminal"]


def test_the_worker_command_is_the_pinned_solo_worker() -> None:
    from workers.management.commands.run_terminal_worker import worker_argv

    argv = worker_argv("icm-1")
    assert argv[argv.index("-Q") + 1] == "terminal.icm-1"
    assert argv[argv.index("-P") + 1] == "solo" and argv[argv.index("-c") + 1] == "1"


def test_plan_only_keeps_this_vms_terminals_and_rejects_unknown_ones() -> None:
    rendered = plan(SAMPLE, python=VENV_PY, root=r"C:\bridge", only=["pep-1"])
    assert [t["name"] for t in rendered["terminals"]] == ["pep-1"]
    assert {p["terminal"] for p in rendered["processes"]} == {"pep-1"}
    assert rendered["processes"][1]["log"] == r"C:\bridge\logs\pep-1.worker.log"
    with pytest.raises(ValueError, match="sim-1"):
        plan(SAMPLE, python=VENV_PY, root=r"C:\bridge", only=["sim-1"])
    with pytest.raises(ValueError, match="terminal64.exe"):
        plan({"terminals": [{"name": "x-1", "backend": "mt5", "path": r"C:\mt5\x.exe"}]}, python="p", root="C:\\b")


def test_plan_command_line_prints_json(tmp_path: Path) -> None:
    import json
    import sys

    terminals = tmp_path / "terminals.yaml"
    terminals.write_text(yaml.safe_dump(SAMPLE))
    out = subprocess.run(
        [sys.executable, "-m", "deploy.windows.plan", "--terminals", str(terminals), "--python", VENV_PY,
         "--only", "icm-1"], cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    assert json.loads(out) == plan(SAMPLE, python=VENV_PY, root="C:\\bridge", only=["icm-1"])


# -- PowerShell syntax ---------------------------------------------------------------------------------
def _syntax_errors(source: bytes) -> list[str]:
    """ERROR/MISSING nodes of the tree-sitter PowerShell grammar (a grammar check, not PowerShell's own
    parser: it catches unbalanced braces/quotes and malformed statements, not unknown cmdlets)."""
    import tree_sitter
    import tree_sitter_powershell

    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    errors: list[str] = []

    def walk(node) -> None:
        if node.type == "ERROR" or node.is_missing:
            errors.append(f"line {node.start_point[0] + 1}: {node.type} {node.text[:60]!r}")
        for child in node.children:
            walk(child)

    walk(parser.parse(source).root_node)
    return errors


def test_the_syntax_check_catches_broken_powershell() -> None:
    good = b"param([string]$Name)\nif ($Name) { Write-Host \"hi $Name\" } else { exit 1 }\n"
    assert _syntax_errors(good) == []
    for broken in (b"if ($a { Write-Host 'x' }\n", b"function f { Write-Host 'x'\n", b"$x = @(1, 2\n"):
        assert _syntax_errors(broken), broken


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_provisioning_scripts_parse(script: Path) -> None:
    assert _syntax_errors(script.read_bytes()) == []


def test_provisioning_scripts_reference_each_other_and_exist() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"first-boot.ps1", "every-boot.ps1", "supervise.ps1", "common.ps1", "stop.ps1"} <= names
    batch = (WINDOWS / "oem" / "install.bat").read_text()
    assert "first-boot.ps1" in batch and "-ExecutionPolicy Bypass" in batch
    for script in SCRIPTS:
        for referenced in re.findall(r"'([\w-]+\.ps1)'", script.read_text()):
            assert referenced in names, (script.name, referenced)
    every_boot = (WINDOWS / "oem" / "every-boot.ps1").read_text()
    assert "deploy.windows.plan" in every_boot and "requirements-worker.txt" in every_boot
    supervise = (WINDOWS / "oem" / "supervise.ps1").read_text()
    assert "WaitForExit" in supervise and "$backoff" in supervise  # restart on crash, with back-off


# -- requirements ---------------------------------------------------------------------------------------
def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[re.sub(r"\[.*\]", "", name).strip().lower()] = version.split(";")[0].strip()
    return pins


def test_worker_requirements_pin_the_runtime_and_metatrader5() -> None:
    text = (ROOT / "requirements.txt").read_text()
    runtime = _pins_from_text(text.split("# Tests", 1)[0])
    worker = _pins(WINDOWS / "requirements-worker.txt")
    assert {k: worker.get(k) for k in runtime} == runtime  # same versions as the Linux processes
    assert worker["metatrader5"] == "5.0.6231"
    assert 'MetaTrader5==5.0.6231; sys_platform == "win32"' in (WINDOWS / "requirements-worker.txt").read_text()


def _pins_from_text(text: str) -> dict[str, str]:
    tmp = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            tmp[re.sub(r"\[.*\]", "", name).strip().lower()] = version
    return tmp


# -- docker-compose ---------------------------------------------------------------------------------------
def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_windows_service_is_behind_its_profile_and_references_real_paths() -> None:
    compose = _compose()
    services = compose["services"]
    assert services["windows"]["profiles"] == ["windows"]
    assert [n for n, s in services.items() if s.get("profiles")] == ["windows"]  # the Linux stack needs no profile
    windows = services["windows"]
    assert "/dev/kvm" in windows["devices"] and "NET_ADMIN" in windows["cap_add"]
    assert all(p.startswith("127.0.0.1:") for p in windows["ports"])  # viewer and RDP not exposed
    for dep in windows["depends_on"]:
        assert dep in services
    mounts = {}
    for volume in windows["volumes"]:
        source, target = re.match(r"^(.+):(/[^:]*)(?::ro|:rw)?$", volume).groups()
        mounts[target] = source
    assert set(mounts) >= {"/storage", "/oem", "/data/app", "/data/config", "/data/installers", "/data/logs"}
    assert mounts["/storage"] in compose["volumes"]
    assert (ROOT / mounts["/oem"]).joinpath("install.bat").is_file()
    for target in ("/data/config", "/data/installers"):
        default = re.match(r"\$\{[A-Z_]+:-(.+)\}", mounts[target]).group(1)
        assert (ROOT / default).is_dir(), default


def _docker_compose() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


@pytest.mark.skipif(_docker_compose() is None, reason="no docker compose CLI here (the parse test above still runs)")
@pytest.mark.parametrize("profile", [[], ["--profile", "windows"]], ids=["linux", "windows-profile"])
def test_docker_compose_config_is_valid(profile: list[str], tmp_path) -> None:
    cli = _docker_compose()
    env_file = tmp_path / ".env"  # compose refuses to start without its secrets: generate them as a user would
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_env.py"), "--allowed-hosts", "bridge.example",
                    "--file", str(env_file)], check=True, capture_output=True)
    result = subprocess.run([*cli, "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"), *profile,
                             "config"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["services"]["windows"]["profiles"] == ["windows"]
    assert "web" in resolved["services"] and "worker-sim-1" in resolved["services"]
