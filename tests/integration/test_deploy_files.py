"""deploy/: the files an operator copies, checked against the code they start.

Docker cannot run here, so the compose file is read as Compose reads it (YAML, with its
``${VAR:-default}`` interpolation) and checked against the code: every FLUXRUN_* variable is
a setting and its value passes the settings' validation, every command is a real `fluxrun`
command, build targets are stages of the Dockerfile, extras are those of pyproject.toml.
The systemd units go through `systemd-analyze verify` where it is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fluxrun.cli import app
from fluxrun.config import Settings
from fluxrun.errors import EXIT_CONFIG

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
INSTALLED_FLUXRUN = "/opt/fluxrun/venv/bin/fluxrun"
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


# -- reading the files as their tools do ---------------------------------------------------------
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def interpolated(value: Any) -> str:
    """A compose value with ``${VAR:-default}`` replaced by its default, as with no .env."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", str(value)).replace("$$", "$")


def settings_from(env: dict[str, str]) -> Settings:
    """The Settings these FLUXRUN_* variables make; every one must be a setting."""
    values = {key.removeprefix("FLUXRUN_").lower(): value for key, value in env.items()
              if key.startswith("FLUXRUN_") and not key.startswith("FLUXRUN_LORA_")}
    unknown = sorted(f"FLUXRUN_{name.upper()}" for name in values if name not in Settings.model_fields)
    assert not unknown, f"not fluxrun settings: {unknown}"
    return Settings(**values)


def is_fluxrun_command(argv: list[str]) -> bool:
    """Whether ``fluxrun <argv>`` names a command of the CLI with options it accepts."""
    assert argv[0] == "fluxrun", argv
    return CliRunner().invoke(app, [*argv[1:], "--help"]).exit_code == 0


def fluxrun_services() -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose()["services"].items()
            if str(service.get("image", "")).startswith("fluxrun-")}


def service_env(service: dict[str, Any]) -> dict[str, str]:
    return {key: interpolated(value) for key, value in (service.get("environment") or {}).items()}


def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit's sections as (key, value) lists, repeated keys kept."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        key, _, value = line.partition("=")
        sections[current].append((key, value))
    return sections


def unit_values(path: Path, section: str, key: str) -> list[str]:
    return [value for k, value in unit(path)[section] if k == key]


def unit_environment(path: Path, instance: str = "0") -> dict[str, str]:
    env: dict[str, str] = {}
    for value in unit_values(path, "Service", "Environment"):
        for assignment in value.split():
            name, _, text = assignment.partition("=")
            env[name] = text.replace("%i", instance)
    return env


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> the stage's text."""
    text = (DEPLOY / "Dockerfile").read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\w+)\s*$", text, flags=re.M | re.I)
    return dict(zip(parts[1::2], parts[2::2]))


def stage_command(stage: str) -> list[str]:
    [cmd] = re.findall(r"^CMD (\[.*\])$", stage, flags=re.M)
    return yaml.safe_load(cmd)  # the exec form is a JSON array


# -- compose.yaml ----------------------------------------------------------------------------------
def test_compose_runs_the_layout_in_order() -> None:
    services = compose()["services"]
    assert {"postgres", "minio", "createbucket", "migrate", "api", "lb"} <= set(services)
    assert any(name.startswith("worker") for name in services)
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert set(depends) <= set(services), (name, depends)
    conditions = {name: {target: spec["condition"] for target, spec in service["depends_on"].items()}
                  for name, service in services.items() if isinstance(service.get("depends_on"), dict)}
    # Migrations once, after the database is up; every API and worker only after them and the bucket.
    assert conditions["migrate"] == {"postgres": "service_healthy"}
    assert "healthcheck" in services["postgres"]
    for name in [n for n in services if n == "api" or n.startswith("worker")]:
        assert conditions[name] == {"migrate": "service_completed_successfully",
                                    "createbucket": "service_completed_successfully"}, name
    assert services["api"]["deploy"]["replicas"] >= 2
    assert services["migrate"]["restart"] == services["createbucket"]["restart"] == "no"


def test_every_fluxrun_variable_of_compose_is_a_setting_with_a_valid_value() -> None:
    services = fluxrun_services()
    assert {"migrate", "api"} <= set(services)
    for name, service in services.items():
        settings = settings_from(service_env(service))
        # One PostgreSQL and one bucket for every process, or they do not share the queue or the files.
        assert (settings.database_url or "").startswith("postgresql+psycopg://"), name
        assert "@postgres:5432/" in (settings.database_url or ""), name  # the compose service
        assert settings.s3_bucket == "fluxrun" and settings.s3_endpoint_url == "http://minio:9000", name
        assert service_env(service)["AWS_ACCESS_KEY_ID"] and service_env(service)["AWS_SECRET_ACCESS_KEY"], name
    api = settings_from(service_env(services["api"]))
    assert api.host == "0.0.0.0" and api.s3_url_mode == "public"
    assert api.s3_public_base_url == "http://localhost:9000/fluxrun"  # the bucket as published by `minio`
    assert "9000:9000" in compose()["services"]["minio"]["ports"]


def test_compose_commands_are_fluxrun_commands_and_build_targets_are_dockerfile_stages() -> None:
    stages = dockerfile_stages()
    for name, service in fluxrun_services().items():
        build = service["build"]
        command = service.get("command") or stage_command(stages[build["target"]])  # else the image's CMD
        assert is_fluxrun_command(command), (name, command)
        assert (DEPLOY / interpolated(build["context"]) / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert build["target"] in stages, (name, build["target"])
        expected = "worker" if name.startswith("worker") else "api"
        assert build["target"] == expected, name


def test_each_worker_reserves_its_own_gpu_and_uses_it() -> None:
    workers = {name: s for name, s in fluxrun_services().items() if name.startswith("worker")}
    assert len(workers) >= 2
    device_ids: list[str] = []
    for name, service in workers.items():
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        [gpu] = device["device_ids"]
        device_ids.append(gpu)
        assert settings_from(service_env(service)).device == "cuda", name  # the one GPU it sees
        assert service["stop_grace_period"]  # time to finish the task in hand
    assert len(set(device_ids)) == len(device_ids)


def test_the_load_balancer_targets_the_api_service_on_its_port() -> None:
    services = compose()["services"]
    [mount] = [v for v in services["lb"]["volumes"] if v.endswith(":/etc/caddy/Caddyfile:ro")]
    caddyfile = (DEPLOY / mount.split(":")[0]).read_text()
    found = re.search(r"dynamic a \{\s*name (\S+)\s*port (\d+)", caddyfile)
    assert found, caddyfile
    assert found.group(1) == "api" and settings_from(service_env(services["api"])).port == int(found.group(2))
    assert services["lb"]["ports"] == [f"{found.group(2)}:{found.group(2)}"]


# -- Dockerfile --------------------------------------------------------------------------------------
def test_each_image_installs_its_extra_and_runs_its_command() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    stages = dockerfile_stages()
    for stage, extra, command in (("api", "server", ["fluxrun", "api"]), ("worker", "gpu", ["fluxrun", "worker"])):
        installed = re.findall(r'pip install [^\n]*"\.\[(\w+)\]"', stages[stage])
        assert installed == [extra] and extra in extras, (stage, installed)
        assert stage_command(stages[stage]) == command and is_fluxrun_command(command)
    assert "fluxrun[server]" in extras["gpu"]  # the worker image has the store and storage too
    copied = re.findall(r"^COPY (.+) \./", (DEPLOY / "Dockerfile").read_text(), flags=re.M)
    for sources in copied:  # everything `pip install .` needs is in the build context
        assert all((ROOT / source).exists() for source in sources.split()), sources


# -- systemd -----------------------------------------------------------------------------------------
def test_units_start_real_commands_with_valid_settings() -> None:
    example = env_file(SYSTEMD / "fluxrun.env.example")
    # EnvironmentFile= wins over Environment=: a device in the file would pin every worker to it.
    assert "FLUXRUN_DEVICE" not in example
    for name, command in (("fluxrun-api.service", "api"), ("fluxrun-worker@.service", "worker"),
                          ("fluxrun-migrate.service", "db upgrade")):
        path = SYSTEMD / name
        [exec_start] = unit_values(path, "Service", "ExecStart")
        assert exec_start == f"{INSTALLED_FLUXRUN} {command}"
        assert is_fluxrun_command(["fluxrun", *command.split()])
        assert unit_values(path, "Service", "EnvironmentFile") == ["/etc/fluxrun/fluxrun.env"]
        settings_from({**unit_environment(path), **example})
    worker = SYSTEMD / "fluxrun-worker@.service"
    for gpu in ("0", "3"):
        assert settings_from({**unit_environment(worker, gpu), **example}).device == f"cuda:{gpu}"
    # The worker's "no such device" exit is final, as `fluxrun serve`'s supervisor treats it.
    assert str(EXIT_CONFIG) in unit_values(worker, "Service", "RestartPreventExitStatus")[0].split()
    assert unit_values(worker, "Service", "KillMode") == ["mixed"]  # SIGTERM to the worker alone


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at a stand-in for the install.
    stand_in = tmp_path / "fluxrun"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    names = []
    for path in sorted(SYSTEMD.glob("*.service")):
        name = path.name.replace("@.service", "@0.service")  # a template is verified as an instance
        (tmp_path / name).write_text(path.read_text().replace(INSTALLED_FLUXRUN, str(stand_in)))
        names.append(name)
    assert len(names) == 3
    done = subprocess.run(["systemd-analyze", "verify", *names], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
