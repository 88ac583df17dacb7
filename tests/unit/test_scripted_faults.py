"""Fault rules of the scripted engine: what a rule may say, and the error it injects."""

from __future__ import annotations

from typing import Any

import pytest

from streams.asr_server.faults import FaultRule


@pytest.mark.parametrize(
    ("rule", "status", "code"),
    [
        pytest.param({"fault": "error_frame"}, 500, "InternalError", id="default-500"),
        pytest.param({"fault": "error_frame", "status": 503}, 503, "ModelUnavailable", id="503"),
        pytest.param({"fault": "error_frame", "status": 429}, 429, "Throttling", id="429"),
        pytest.param(
            {"fault": "error_frame", "status": 502, "code": "Gateway"}, 502, "Gateway", id="own"
        ),
        pytest.param({"fault": "error_frame_429"}, 429, "Throttling.RateQuota", id="legacy-429"),
    ],
)
def test_error_frames_carry_their_status_and_a_fitting_code(
    rule: dict[str, Any], status: int, code: str
) -> None:
    """An error frame's code follows its status unless the rule names one."""
    error = FaultRule.from_dict(rule).error()
    assert (error.status, error.code) == (status, code)
    assert (error.retry_after_s is not None) == (status == 429)


@pytest.mark.parametrize(
    ("rule", "complaint"),
    [
        pytest.param({"fault": "error_frame", "status": 200}, "400-599", id="not-an-error"),
        pytest.param({"fault": "error_frame", "status": "500"}, "a number", id="string"),
        pytest.param({"fault": "429", "status": 503}, "error_frame only", id="wrong-fault"),
        pytest.param({"fault": "garbled"}, "fault must be one of", id="unknown-fault"),
    ],
)
def test_a_bad_rule_is_refused(rule: dict[str, Any], complaint: str) -> None:
    """A rule that cannot do what it says is refused, so a test never runs on a silent no-op."""
    with pytest.raises(ValueError, match=complaint):
        FaultRule.from_dict(rule)


def test_rules_round_trip_through_their_json_form() -> None:
    """What GET /scripted/faults shows can be posted back unchanged."""
    rule = FaultRule.from_dict(
        {"match": {"times": 2}, "fault": "error_frame", "status": 503, "after_deltas": 0}
    )
    assert FaultRule.from_dict(rule.to_dict()) == rule
