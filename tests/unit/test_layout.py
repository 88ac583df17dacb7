"""Import rules of the package, read from the source with ``ast`` (nothing is imported).

- no import circle among the modules of ``streams`` (function-level and ``TYPE_CHECKING``
  imports included: a circle hidden in a function is still a circle);
- the stage modules get plain values: they import neither faust, the settings, nor the dev wing;
- the worker's core below the composition root (streams/runtime.py) never sees the settings;
- the dev wing (``streams.dev``, if present) is imported only by itself and the command line;
- the worker never imports the embedded ASR server.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "streams"

STAGES = (
    "analytics",
    "api_limits",
    "audiowork",
    "chunking",
    "decode",
    "dualmono",
    "encode",
    "fetch",
    "filetrans_audio",
    "filetrans_client",
    "filetrans_result",
    "intake",
    "netguard",
    "transcribe",
    "vad",
)
"""Stage modules: a new one joins this list."""
CORE = ("agents", "answer", "event_types", "events", "idempotency", "pipeline", "publish")
"""The worker's parts that get ready objects from streams/runtime.py."""
DEV_USERS = ("streams.cli", "streams.client")
WORKER_ROOTS = ("streams.app", "streams.runtime")


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _statements(path: Path) -> list[tuple[str | None, int, list[str]]]:
    """The import statements of a file: ``(from-module, level, names)``; ``import a, b`` gives
    ``(None, 0, ["a", "b"])``."""
    found: list[tuple[str | None, int, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.append((None, 0, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level, [alias.name for alias in node.names]))
    return found


@cache
def statements() -> dict[str, list[tuple[str | None, int, list[str]]]]:
    """Every module's import statements, read by a separate interpreter.

    CPython 3.11.7's ast.parse can fail with "AST constructor recursion depth mismatch" late
    in a long test session (a fresh process does not); this file, run as a script, reads them.
    """
    names = modules()
    done = subprocess.run(
        [sys.executable, __file__, *(str(path) for path in names.values())],
        capture_output=True,
        check=True,
    )
    by_path = json.loads(done.stdout)
    return {name: [tuple(s) for s in by_path[str(path)]] for name, path in names.items()}


@cache
def imports(module: str) -> frozenset[str]:
    """Everything ``module`` imports, as dotted names (a name imported from a package that is
    one of its modules counts as that module)."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for base, level, names in statements()[module]:
        if base is None:
            found.update(names)
            continue
        if level:
            anchor = package.split(".")[: len(package.split(".")) - (level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        found.add(base)
        found.update(f"{base}.{name}" for name in names)
    # "from streams.events import failed_event" names streams.events.failed_event: drop such
    # names, keep modules of the package and everything outside it.
    known = modules()
    return frozenset(name for name in found if name in known or not name.startswith("streams."))


def _internal(module: str) -> set[str]:
    return {name for name in imports(module) if name in modules() and name != module}


def _imports_of(module: str, target: str) -> set[str]:
    return {name for name in imports(module) if name == target or name.startswith(target + ".")}


def test_there_is_no_import_circle() -> None:
    """Every module can be read with only the modules below it in mind."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(_internal(module)):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in modules():
        if module not in state:
            visit(module)
    assert circles == [], " ; ".join(" -> ".join(circle) for circle in circles)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_module_gets_plain_values(stage: str) -> None:
    """No faust, no settings, no dev tooling in a stage: it can be run and tested alone."""
    module = f"streams.{stage}"
    assert module in modules()
    for forbidden in ("faust", "streams.config", "streams.dev"):
        assert _imports_of(module, forbidden) == set(), forbidden


@pytest.mark.parametrize("part", CORE)
def test_the_core_never_sees_the_settings(part: str) -> None:
    """Settings become stage objects in streams/runtime.py only."""
    assert _imports_of(f"streams.{part}", "streams.config") == set()


def test_the_composition_root_is_not_imported_by_what_it_composes() -> None:
    """streams/app.py and streams/agents.py use the runtime; nothing below imports them."""
    for module in modules():
        if module in ("streams.app", "streams.cli", "streams.__main__"):
            continue
        assert _imports_of(module, "streams.app") == set(), module
    assert _imports_of("streams.runtime", "streams.agents") == set()


def test_only_the_command_line_imports_the_dev_wing() -> None:
    """The worker installs and runs without the local broker, dev stack and samples."""
    for module in modules():
        if module == "streams.dev" or module.startswith("streams.dev.") or module in DEV_USERS:
            continue
        assert _imports_of(module, "streams.dev") == set(), module


def test_the_worker_never_imports_the_asr_server() -> None:
    """The embedded recogniser is a separate process the worker talks to over HTTP."""
    seen: set[str] = set()
    todo = [root for root in WORKER_ROOTS]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_internal(module))
    assert {m for m in seen if m.startswith("streams.asr_server")} == set()
    assert "streams.pipeline" in seen  # the walk does reach the worker's modules


if __name__ == "__main__":
    print(json.dumps({path: _statements(Path(path)) for path in sys.argv[1:]}))
