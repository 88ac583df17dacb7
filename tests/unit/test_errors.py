"""The one place that decides retry, fail or stop, and stamina's hook built on it."""

from __future__ import annotations

import pytest

from streams.errors import (
    AudioNotFound,
    PipelineError,
    RecognitionRejected,
    RecognitionStreamCut,
    RecognitionThrottled,
    disposition,
    retry_wait,
)


@pytest.mark.parametrize(
    ("error", "action"),
    [
        pytest.param(RecognitionStreamCut("cut"), "retry", id="transient"),
        pytest.param(RecognitionRejected("400"), "fail", id="permanent"),
        pytest.param(PipelineError("bug"), "fail", id="internal"),
        pytest.param(ValueError("bug"), "fail", id="unexpected"),
    ],
)
def test_transient_errors_are_retried_and_the_rest_fail(error: Exception, action: str) -> None:
    """Only the transient branch is retried; everything else fails the recording."""
    assert disposition(error) == action


def test_an_error_while_publishing_the_terminal_event_stops() -> None:
    """Nothing could say what happened: the offset stays uncommitted for a redelivery."""
    assert disposition(RecognitionRejected("400"), publishing=True) == "stop"


def test_retry_wait_honours_retry_after() -> None:
    """A 429 with Retry-After waits that long; without one stamina's backoff applies."""
    assert retry_wait(RecognitionThrottled("429", retry_after_s=3)) == 3
    assert retry_wait(RecognitionThrottled("429", retry_after_s=0)) == 0.01
    assert retry_wait(RecognitionThrottled("429")) is True
    assert retry_wait(AudioNotFound("gone")) is False


def test_reprs_show_code_and_message() -> None:
    """The repr names the code, so a log line says which failure it was."""
    assert (
        repr(AudioNotFound("gone"))
        == "AudioNotFound(code='audio_not_found', stage='fetch', 'gone')"
    )
