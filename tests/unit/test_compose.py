"""docker/compose.yaml and docker/Dockerfile run only commands the `streams` CLI has.

`make docker-check` validates both files with Compose's own parser, the compose
specification's schema and hadolint; these tests check what those tools cannot know: that every
command, flag and setting they name exists in this project.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from streams.cli import main
from streams.config import Settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = {name: s for name, s in SERVICES.items() if s["image"].startswith("call-transcriber")}


def _dockerfile(instruction: str) -> list[str]:
    lines = re.findall(rf"^{instruction} (.+)$", (DOCKER / "Dockerfile").read_text(), re.M)
    assert len(lines) == 1, f"expected one {instruction} in the Dockerfile, got {lines}"
    parsed: list[str] = json.loads(lines[0])
    return parsed


def _invocations() -> list[tuple[str, list[str]]]:
    """Every argument list our image is started with: commands and health checks."""
    found = [("Dockerfile CMD", _dockerfile("CMD"))]
    for name, service in OURS.items():
        found.append((f"{name} command", service["command"]))
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[:2] == ["CMD", "streams"], f"{name}: health check must be a streams command"
            found.append((f"{name} healthcheck", test[2:]))
    return found


def test_the_image_entry_point_is_the_streams_command() -> None:
    """ENTRYPOINT is the console script, so a service's command is a streams subcommand."""
    assert _dockerfile("ENTRYPOINT") == ["streams"]


@pytest.mark.parametrize(("where", "args"), _invocations(), ids=[w for w, _ in _invocations()])
def test_every_command_is_a_cli_subcommand_with_valid_options(where: str, args: list[str]) -> None:
    """Each command names a subcommand and its arguments parse (click's own table)."""
    with click.Context(main) as ctx:
        command = main.get_command(ctx, args[0])
    assert command is not None, f"{where}: `streams {args[0]}` does not exist"
    if command.context_settings.get("ignore_unknown_options"):
        # A pass-through command (its own argparse): every flag must appear in its --help.
        out = subprocess.run(
            [sys.executable, "-m", "streams", *args[:1], "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for flag in (a for a in args[1:] if a.startswith("--")):
            assert flag in out, f"{where}: `streams {args[0]}` has no {flag}"
        engine = args[args.index("--engine") + 1] if "--engine" in args else None
        assert engine is None or engine in out, f"{where}: unknown engine {engine!r}"
    else:
        with click.Context(main) as parent:
            command.make_context(args[0], list(args[1:]), parent=parent)


def test_every_setting_in_the_environment_exists() -> None:
    """Each STREAMS_* variable given to a container is a field of Settings."""
    fields = {f"STREAMS_{name.upper()}" for name in Settings.model_fields}
    fields |= {"STREAMS_LOG_LEVEL"}  # read by the CLI's --log-level
    for name, service in OURS.items():
        for variable in service.get("environment", {}):
            if variable.startswith("STREAMS_"):
                assert variable in fields, f"{name}: {variable} is no setting"


def test_workers_scale() -> None:
    """Workers have no fixed name and no fixed host port, so --scale can start several."""
    worker = SERVICES["worker"]
    assert "container_name" not in worker
    for port in worker.get("ports", []):
        assert ":" not in str(port), f"fixed host port {port!r} would stop --scale"


def test_dependencies_wait_for_health_and_topics() -> None:
    """Workers start after the topics exist and the ASR server is healthy."""
    depends = SERVICES["worker"]["depends_on"]
    assert depends["topics"]["condition"] == "service_completed_successfully"
    assert depends["asr-server"]["condition"] == "service_healthy"
    for service in SERVICES.values():
        for target, rule in service.get("depends_on", {}).items():
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{target} has no health check"


def test_kafka_ui_and_services_use_the_internal_listener() -> None:
    """Containers reach Kafka on the listener it advertises inside the compose network."""
    advertised = SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    internal = re.search(r"PLAINTEXT://(kafka:\d+)", advertised)
    assert internal is not None
    ui = SERVICES["kafka-ui"]["environment"]
    assert ui["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] == internal.group(1)
    assert COMPOSE["x-streams"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == internal.group(1)


def test_compose_usage_lines_name_real_commands() -> None:
    """The usage comment at the top of compose.yaml runs commands that exist."""
    for line in (DOCKER / "compose.yaml").read_text().splitlines():
        if "docker compose" in line and " run " in line:
            words = shlex.split(line.lstrip("# "))
            subcommand = words[words.index("worker") + 1]
            with click.Context(main) as ctx:
                assert subcommand in main.list_commands(ctx), line
