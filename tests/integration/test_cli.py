"""The `streams` command drives a real run: topics, publish, tail (JSON lines and terminal)."""

from __future__ import annotations

import collections
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.audio import asset
from tests.fixtures.asr_server import ScriptedServer, run_scripted_server
from tests.fixtures.worker import Message, Stack, validate

pytestmark = pytest.mark.integration

STEREO_CALL = "en_fasterwhisper_stereo_diarization_LR.wav"
CALLS = (STEREO_CALL, "en_speechbrain_harvard_birch_canoe.wav", "de_picovoice_leopard_test_de.wav")
TAIL_ARGS = ("--count", "3", "--timeout", "120")


def _streams(
    env: dict[str, str], *args: str, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _published_ids(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines() if line.strip()]


def test_topics_creates_the_missing_topics_and_reports_them(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """`topics --check` fails on missing topics, `topics` creates them, then --check passes.

    Five: the four of the contract and the ``finalized`` table's changelog, co-partitioned."""
    prefix = unique_name("t")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STREAMS_APP_ID": f"{prefix}-worker",
        "STREAMS_TOPIC_RECORDINGS": f"{prefix}.recordings",
        "STREAMS_TOPIC_PARTIAL": f"{prefix}.partial",
        "STREAMS_TOPIC_FINAL": f"{prefix}.final",
        "STREAMS_TOPIC_FAILED": f"{prefix}.failed",
        "STREAMS_TOPIC_PARTITIONS": "3",
    }
    before = _streams(env, "topics", "--check")
    assert before.returncode == 1
    assert before.stdout.count("MISSING") == 5

    created = _streams(env, "topics")
    assert created.returncode == 0, created.stderr
    assert created.stdout.count("created") == 5

    after = _streams(env, "topics", "--check")
    assert after.returncode == 0, after.stderr
    rows = {line.split()[0]: line.split()[1:] for line in after.stdout.splitlines()[1:]}
    for kind in ("recordings", "partial", "final", "failed"):
        assert rows[f"{prefix}.{kind}"] == ["3", "ok"]
    assert rows[f"{prefix}-worker-finalized-changelog"] == ["3", "ok"]


async def test_publish_a_directory_and_tail_its_partial_and_final_events(
    stack: Stack, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    """Publishing a directory gives each recording partial events and one final, in order."""
    calls = tmp_path / "calls"
    calls.mkdir()
    for name in CALLS:
        shutil.copy(asset(name), calls / name)
    (calls / "notes.txt").write_text("not a recording: publish skips it")
    stack.start_worker()
    # A subprocess the test waits on at the end; nothing here blocks the loop meanwhile.
    tail = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "streams", "tail", "--json", "--from-beginning", *TAIL_ARGS],
        env={**os.environ, **stack.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        published = _streams(
            stack.env,
            "publish",
            str(calls),
            "--layout",
            "auto",
            "--roles",
            "agent,customer",
            "--language",
            "en",
            "--context",
            "Acme broadband",
            "--call",
            "queue=billing",
        )
        assert published.returncode == 0, published.stderr
        ids = _published_ids(published.stdout)
        assert len(ids) == 3
        out, err = tail.communicate(timeout=150)
    finally:
        tail.kill()
    assert tail.returncode == 0, err

    events = [orjson.loads(line) for line in out.splitlines()]
    by_type = collections.defaultdict(list)
    for event in events:
        kind = event["type"]
        validate(Message(kind, None, event, 0, 0))
        by_type[kind].append(event)
    assert sorted(e["recording_id"] for e in by_type["final"]) == sorted(ids)
    assert not by_type["failed"]
    for final in by_type["final"]:
        partials = [p for p in by_type["partial"] if p["recording_id"] == final["recording_id"]]
        assert partials, f"no partial events for {final['recording_id']}"
        assert final["call"] == {"queue": "billing"}
    stereo = next(e for e in by_type["final"] if e["recording_id"].startswith("en_fasterwhisper"))
    assert {s["role"] for s in stereo["segments"]} == {"agent", "customer"}
    for entry in scripted_server.journal():
        assert entry["language"] == "en"
        assert "Acme broadband" in (entry["context"] or "")


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[ScriptedServer]:
    """A scripted server that speaks at a human pace, so partial text visibly grows."""
    args = ("--first-delta-s", "0.5", "--delta-interval-s", "0.3", "--words-per-delta", "1")
    with run_scripted_server(tmp_path / "slow-server.log", *args) as server:
        yield server


class _Tmux:
    """One private tmux server (its own socket) running one command in a fixed-size pane."""

    def __init__(self, tmp: Path, command: str, env: dict[str, str], size: tuple[int, int]):
        self.socket = f"streams-test-{uuid.uuid4().hex[:8]}"
        script = tmp / "run.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        # COLUMNS/LINES inherited from the test process would override the pane's real size.
        exports += f"export COLUMNS={size[0]} LINES={size[1]}\n"
        # The pane outlives the command, so its last screen and exit status can be read; the
        # shell survives Ctrl-C (a trap, unlike an ignored signal, is not inherited).
        script.write_text(f'{exports}trap : INT\n{command}\necho "[exit $?]"\nsleep 600\n')
        width, height = str(size[0]), str(size[1])
        self._tmux("new-session", "-d", "-x", width, "-y", height, f"sh {script}")
        # A detached session may still take tmux's default size; set it explicitly.
        self._tmux("resize-window", "-x", width, "-y", height)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def screen(self) -> str:
        """What the pane shows now, after the lines that scrolled off it."""
        return self._tmux("capture-pane", "-p", "-S", "-500")

    def wait_for(self, found: Callable[[str], bool], timeout_s: float = 60.0) -> str:
        """Poll the screen until ``found(screen)``; fail with the last screen."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            screen = self.screen()
            if found(screen):
                return screen
            time.sleep(0.1)
        pytest.fail(f"the terminal never showed what was expected; last screen:\n{screen}")

    def send_keys(self, *keys: str) -> None:
        """Type into the pane, e.g. ``C-c``."""
        self._tmux("send-keys", *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)


def _line(screen: str, *parts: str) -> str | None:
    return next((line for line in screen.splitlines() if all(p in line for p in parts)), None)


async def test_tail_in_a_terminal_shows_text_growing_then_the_conversation(
    stack: Stack, slow_server: ScriptedServer, tmp_path: Path
) -> None:
    """In a terminal, a split call's text grows per channel, then prints as agent/customer turns."""
    stack.start_worker(STREAMS_ASR_BASE_URL=slow_server.base_url)
    env = {k: v for k, v in stack.env.items() if k.startswith(("KAFKA_", "STREAMS_"))}
    # Wide enough for the whole text of a channel: the view would otherwise keep only the
    # newest words in view, and the word count would stop growing.
    tmux = _Tmux(tmp_path, f"{shlex.quote(sys.executable)} -m streams tail", env, (160, 30))
    try:
        tmux.wait_for(lambda s: "Following" in s and "0 done, 0 failed" in s)
        published = _streams(
            stack.env,
            "publish",
            str(asset(STEREO_CALL)),
            "--layout",
            "split",
            "--roles",
            "agent,customer",
            "--language",
            "en",
            "--id-prefix",
            "call-",
        )
        assert published.returncode == 0, published.stderr
        (rid,) = _published_ids(published.stdout)

        def agent_words(screen: str) -> int:
            line = _line(screen, "⋯", rid, "agent")
            return len(line.split("agent", 1)[1].split()) if line else 0

        first = tmux.wait_for(lambda s: agent_words(s) >= 2)
        later = tmux.wait_for(lambda s: agent_words(s) > agent_words(first) or "✓" in s)
        assert agent_words(later) > agent_words(first), f"the text did not grow:\n{later}"
        assert _line(later, "customer") is not None, "no line for the customer's channel"
        print(f"\n--- in progress ---\n{later.rstrip()}\n---")
        final = tmux.wait_for(lambda s: _line(s, "✓", rid) is not None, timeout_s=90)
        print(f"\n--- streams tail, 160x30 terminal ---\n{final.rstrip()}\n---")
    finally:
        tmux.close()

    outcome = _line(final, "✓", rid)
    assert outcome is not None
    for part in ("split", "en", "s audio", "$", "done in"):
        assert part in outcome
    turns = final[final.index(outcome) :].splitlines()[1:]
    assert any(" agent " in line for line in turns)
    assert any(" customer " in line for line in turns)
    assert _line(final, "1 done, 0 failed, 0 in progress") is not None
    assert _line(final, "⋯", rid) is None


async def test_json_logs_give_one_line_per_outcome_and_never_the_key(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """With JSON logs each outcome is one object with id, topic, partition, offset, timings."""
    assert scripted_server.api_key
    worker = stack.start_worker(STREAMS_LOG_FORMAT="json", STREAMS_LOG_LEVEL="DEBUG")
    ok_url, bad_url = asset(CALLS[1]).as_uri(), (stack.tmp / "nowhere.wav").as_uri()
    await stack.publish(
        [
            {"schema_version": 1, "recording_id": "logged-ok", "audio_url": ok_url},
            {"schema_version": 1, "recording_id": "logged-bad", "audio_url": bad_url},
        ]
    )
    messages = await stack.collect(lambda ms: len(stack.terminal(ms)) == 2)
    assert {m.value["type"] for m in stack.terminal(messages)} == {"final", "failed"}
    worker.stop()

    text = worker.log_path.read_text()
    # Not in any line: not in the request headers logged at DEBUG, not in settings, nowhere.
    assert scripted_server.api_key not in text
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines, f"no JSON log lines:\n{worker.log_tail()}"
    outcomes = {line["recording_id"]: line for line in lines if "outcome" in line}
    ok, bad = outcomes["logged-ok"], outcomes["logged-bad"]
    for line in (ok, bad):
        assert line["topic"] == stack.recordings
        assert isinstance(line["partition"], int)
        assert isinstance(line["offset"], int)
        assert line["timings"]["total_s"] > 0
    assert ok["outcome"] == "final"
    assert ok["level"] == "INFO"
    assert set(ok["timings"]) >= {"fetch_s", "decode_s", "first_delta_s", "total_s"}
    assert (bad["outcome"], bad["code"], bad["stage"]) == ("failed", "audio_not_found", "fetch")
    assert bad["level"] == "WARNING"


def test_dev_runs_the_stack_in_the_foreground_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    """`streams dev` starts Kafka, the ASR server and a worker; Ctrl-C stops all of them."""
    calls = tmp_path / "calls"
    calls.mkdir()
    shutil.copy(asset(CALLS[1]), calls / CALLS[1])
    command = (
        f"{shlex.quote(sys.executable)} -m streams dev --engine scripted --kafka-port 0 "
        f"--asr-port 0 --file-root {calls}"
    )
    tmux = _Tmux(tmp_path, command, {}, (160, 40))
    try:
        ready = tmux.wait_for(lambda s: "Ctrl-C to stop" in s, timeout_s=180)
        bootstrap = re.search(r"KAFKA_BOOTSTRAP_SERVERS=(\S+)", ready)
        assert bootstrap is not None, ready
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap.group(1)}
        published = _streams(env, "publish", str(calls))
        assert published.returncode == 0, published.stderr
        (rid,) = _published_ids(published.stdout)
        # The worker's outcome line shows in the foreground stack's output.
        tmux.wait_for(lambda s: f"recording {rid} final" in s, timeout_s=60)
        pids = [int(p) for p in re.findall(r"pid (\d+)", tmux.screen())]
        assert len(pids) == 3, (
            f"expected the pids of Kafka, the ASR server and the worker:\n{tmux.screen()}"
        )
        tmux.send_keys("C-c")
        tmux.wait_for(lambda s: "[exit 0]" in s, timeout_s=90)
        assert "Stopped." in tmux.screen()
    finally:
        tmux.close()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"child {pid} still runs"
