"""Session-wide fixtures: one real Kafka broker and one scripted ASR server per test run."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.asr_server",
    "tests.fixtures.worker",
]
