"""The audio stages in processes: a crash fails the task that crashes alone, not its neighbours;
errors come back with their codes. Real spawned processes, no stand-ins."""

from __future__ import annotations

import asyncio
import os
import pickle
import time
from pathlib import Path

import pytest

from streams.audiostages import AudioStages
from streams.errors import (
    PipelineError,
    RecognitionThrottled,
    UndecodableAudio,
    WorkerCrashed,
)


def _abort() -> None:
    os.abort()  # what FFmpeg does when one of its assertions fails


def _wait_for(path: str, value: int) -> int:
    while not Path(path).exists():
        time.sleep(0.01)
    return value


def _undecodable() -> None:
    raise UndecodableAudio("no audio stream in the file", code="no_audio_stream")


def _pid() -> int:
    return os.getpid()


async def test_a_crash_fails_the_task_that_crashes_alone_and_the_others_go_on(
    tmp_path: Path,
) -> None:
    """The pool breaks under both tasks; each runs again in a process of its own: the one
    that aborts again raises ``worker_crashed`` at its stage, the other returns its value."""
    stages = AudioStages(2)
    stages.start()
    flag = tmp_path / "go"
    try:
        bystander = asyncio.create_task(stages.run("decode", "bystander", _wait_for, str(flag), 42))
        with pytest.raises(WorkerCrashed) as crashed:
            await stages.run("decode", "poison", _abort)
        flag.touch()
        assert await bystander == 42
        assert stages.replaced == 1
        # The pool is back for the next recordings.
        assert await stages.run("decode", "next", _pid) != os.getpid()
    finally:
        await stages.close()
    error = crashed.value
    assert (error.code, error.stage, error.retryable) == ("worker_crashed", "decode", False)


async def test_errors_come_back_from_an_audio_process_with_their_code() -> None:
    """A permanent error raised in the process keeps the code given to it there."""
    stages = AudioStages(1)
    try:
        with pytest.raises(UndecodableAudio) as raised:
            await stages.run("decode", "r", _undecodable)
    finally:
        await stages.close()
    assert (raised.value.code, raised.value.stage) == ("no_audio_stream", "decode")


def test_pipeline_errors_pickle_with_their_attributes() -> None:
    """Code, stage and a transient error's Retry-After survive pickling."""
    for error in (
        UndecodableAudio("x", code="empty_audio"),
        RecognitionThrottled("429", retry_after_s=3.0),
        PipelineError("bug", code="internal_error", stage="publish"),
    ):
        back = pickle.loads(pickle.dumps(error))  # noqa: S301  # our own bytes
        assert type(back) is type(error)
        assert (back.message, back.code, back.stage) == (error.message, error.code, error.stage)
        assert back.__dict__ == error.__dict__
        assert str(back) == str(error)


async def test_zero_processes_runs_in_a_thread_of_the_worker() -> None:
    """``STREAMS_AUDIO_PROCESSES=0``: the stage runs in this process."""
    stages = AudioStages(0)
    assert await stages.run("decode", "r", _pid) == os.getpid()
    await stages.close()
