"""The local ASR server's settings: flags and environment map onto one frozen object."""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

import pytest
from pydantic import ValidationError

import streams.asr_server
from streams.asr_server import errors
from streams.asr_server.faults import ScriptedFault
from streams.asr_server.main import parse_settings
from streams.asr_server.settings import AsrServerSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STREAMS_") or name == "DASHSCOPE_API_KEY":
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("flags", "env", "field", "value"),
    [
        pytest.param(["--quota-rpm", "60"], {"QUOTA_RPM": "60"}, "quota_rpm", 60, id="quota"),
        pytest.param(
            ["--allow-private-hosts", "127.0.0.1, 10.0.0.0/8"],
            {"ALLOW_PRIVATE_HOSTS": "127.0.0.1, 10.0.0.0/8"},
            "allow_private_hosts",
            ("127.0.0.1", "10.0.0.0/8"),
            id="private-hosts",
        ),
        pytest.param(["--model", "tiny.en"], {"MODEL_DIR": "tiny.en"}, "model_dir", "tiny.en"),
        pytest.param(["--workers", "3"], {"WORKERS": "3"}, "workers", 3, id="workers"),
        pytest.param(["--vad-filter"], {"VAD_FILTER": "1"}, "vad_filter", True, id="vad"),
        pytest.param(["--first-delta-s", "0.5"], {"FIRST_DELTA_S": "0.5"}, "first_delta_s", 0.5),
        pytest.param(
            ["--faults", '{"fault": "429"}'],
            {"FAULTS": '[{"fault": "429"}]'},
            "faults",
            ({"fault": "429"},),
            id="faults",
        ),
    ],
)
def test_flag_and_environment_give_the_same_setting(
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    env: dict[str, str],
    field: str,
    value: object,
) -> None:
    """A flag and its STREAMS_ASR_* variable set the same field to the same value."""
    from_flags = parse_settings(["--no-auth", *flags])
    for name, text in env.items():
        monkeypatch.setenv(f"STREAMS_ASR_{name}", text)
    from_env = parse_settings(["--no-auth"])
    assert getattr(from_flags, field) == getattr(from_env, field) == value
    assert from_flags == from_env


def test_flag_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag given on the command line overrides its environment variable."""
    monkeypatch.setenv("STREAMS_ASR_QUOTA_RPM", "60")
    assert parse_settings(["--no-auth", "--quota-rpm", "5"]).quota_rpm == 5


def test_worker_variables_do_not_leak_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's STREAMS_ASR_* variables, which the server sees too, change nothing."""
    clean = parse_settings(["--no-auth"])
    monkeypatch.setenv("STREAMS_ASR_MODEL", "qwen3-asr-flash")
    monkeypatch.setenv("STREAMS_ASR_BASE_URL", "http://asr-server:8000")
    monkeypatch.setenv("STREAMS_ASR_BACKEND", "openai")
    assert parse_settings(["--no-auth"]) == clean


def test_api_key_comes_from_dashscope_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --api-key the key is DASHSCOPE_API_KEY; --no-auth accepts any key."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-env")
    assert parse_settings([]).resolved_api_key == "sk-env"
    assert parse_settings(["--api-key", "sk-flag"]).resolved_api_key == "sk-flag"
    assert parse_settings(["--no-auth"]).resolved_api_key is None


def test_no_key_and_no_auth_flag_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty DASHSCOPE_API_KEY counts as unset: without a key or --no-auth the server exits."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", "")
    with pytest.raises(SystemExit) as exited:
        parse_settings([])
    assert exited.value.code == 2
    assert "give --api-key, set DASHSCOPE_API_KEY, or pass --no-auth" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param(["--quota-rpm", "-1"], "--quota-rpm / $STREAMS_ASR_QUOTA_RPM", id="quota"),
        pytest.param(["--faults", '{"fault": "boom"}'], "got 'boom'", id="fault"),
        pytest.param(["--faults", "[1"], "--faults / $STREAMS_ASR_FAULTS", id="json"),
        pytest.param(["--engine", "whisper", "--model", "nope"], "got 'nope'", id="model"),
        pytest.param(["--log-level", "loud"], "--log-level / $STREAMS_ASR_LOG_LEVEL", id="level"),
    ],
)
def test_invalid_value_is_a_usage_error_naming_flag_and_variable(
    capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    """A bad value stops the server before it starts, naming where it came from."""
    with pytest.raises(SystemExit) as exited:
        parse_settings(["--no-auth", *flags])
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err


def test_invalid_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value the environment got wrong is reported with the value given."""
    monkeypatch.setenv("STREAMS_ASR_VAD_FILTER", "maybe")
    with pytest.raises(SystemExit):
        parse_settings(["--no-auth"])
    assert "$STREAMS_ASR_VAD_FILTER" in capsys.readouterr().err


def test_settings_are_frozen() -> None:
    """The settings object cannot change after start."""
    settings = AsrServerSettings(no_auth=True)
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]  # the point of the test


def test_engine_configs_carry_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each engine gets its part of the settings; base is assembled under STREAMS_CACHE_DIR."""
    monkeypatch.setenv("STREAMS_CACHE_DIR", "/var/cache/streams")
    settings = parse_settings(["--no-auth", "--transcript", "hello", "--beam-size", "5"])
    assert settings.scripted_config().transcript == "hello"
    whisper = settings.whisper_config()
    assert (whisper.beam_size, whisper.cache_dir) == (5, Path("/var/cache/streams/models"))
    chosen = parse_settings(["--no-auth", "--model-cache-dir", "/models"]).whisper_config()
    assert chosen.cache_dir == Path("/models")


@pytest.mark.parametrize(
    "error",
    [
        errors.ApiError(400, "InvalidParameter", "bad"),
        errors.InvalidInput("bad"),
        errors.EngineBusy("busy", retry_after_s=2.0),
        errors.EngineFailure("broke"),
        ScriptedFault(503, "ModelUnavailable", "later", retry_after_s=None),
        errors.DropConnection(),
        errors.MalformedFrame(),
    ],
    ids=lambda error: type(error).__name__,
)
def test_every_server_error_has_one_root_and_carries_status_and_code(
    error: errors.AsrServerError,
) -> None:
    """Each server error derives from AsrServerError and says what the client sees."""
    assert isinstance(error, errors.AsrServerError)
    assert 200 <= error.status <= 599
    assert error.code


def test_modules_declare_all() -> None:
    """Every module of the server declares an ``__all__`` of names it defines (ruff sorts it)."""
    for info in pkgutil.iter_modules(streams.asr_server.__path__):
        module = importlib.import_module(f"streams.asr_server.{info.name}")
        assert all(hasattr(module, name) for name in module.__all__), info.name
