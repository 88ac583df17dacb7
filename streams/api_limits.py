"""The recognition API's published limits, shared by the worker (which plans within them) and
the local ASR server (which enforces them as the cloud does).

Figures are those of ``qwen3-asr-flash`` in the vendor's API reference and rate-limit page:
5 minutes of audio and a ``data:`` URI of at most 10 MB per request (decimal: 10,000,000
bytes), a context (system message) of at most 10,000 tokens, and 100 requests per minute per
account and model, also enforced per second as RPM/60. ``usage.seconds`` is the audio duration
rounded up to a whole second, per request.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "ACCOUNT_REQUESTS_PER_MINUTE",
    "MAX_CONTEXT_TOKENS",
    "MAX_DATA_URI_BYTES",
    "MAX_REQUEST_S",
    "billed_seconds",
    "count_tokens",
    "per_second_limit",
]

MAX_REQUEST_S = 300.0
"""Longest audio in one request."""
MAX_DATA_URI_BYTES = 10_000_000
"""Largest base64 ``data:`` URI in one request: the documented "10 MB" is decimal."""
MAX_CONTEXT_TOKENS = 10_000
"""Longest context (system message text, hotwords included) in tokens."""
ACCOUNT_REQUESTS_PER_MINUTE = 100
"""Default request quota of one account for ``qwen3-asr-flash``."""

# One token per CJK character, word, number or punctuation mark. Qwen's tokenizer is byte-level
# BPE and not shipped here; this count is close for prose and is what the local server
# enforces, so the worker's check and the server's refusal agree.
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|[^\W\d_]+|\d+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Approximate the token count of ``text`` (usage fields, the context limit)."""
    return len(_TOKEN.findall(text))


def billed_seconds(duration_s: float) -> int:
    """Round an audio duration up to whole seconds, the unit ``usage.seconds`` bills in."""
    return math.ceil(duration_s - 1e-9)


def per_second_limit(requests_per_minute: float) -> int:
    """Requests one calendar second may hold under a per-minute quota (RPM/60, rounded up)."""
    return max(1, math.ceil(requests_per_minute / 60.0 - 1e-9))
