"""The filetrans backend's HTTP client: temporary upload, task submit, task poll, result fetch.

The vendor's asynchronous long-file model (``qwen3-asr-flash-filetrans``, docs/
dashscope-protocol.md §8): ``POST /api/v1/services/audio/asr/transcription`` with
``X-DashScope-Async: enable`` submits a task, ``GET /api/v1/tasks/{task_id}`` reads its status,
and a SUCCEEDED task names a result file. Audio that is not at a public URL goes up first as a
temporary object (``GET /api/v1/uploads?action=getPolicy``, then a form POST to the policy's
host) and is referred to as ``oss://<key>`` with ``X-DashScope-OssResourceResolve: enable``;
one policy serves many uploads until shortly before it expires.

Every call is retried on transient errors as the streaming requests are (stamina with
streams/errors.py's ``retry_wait``); submits pass the account's request limiter
(streams/ratelimit.py), polls the task-query limiter (:class:`QueryLimiter`).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import orjson
import stamina

from streams.errors import (
    RecognitionProtocolError,
    RecognitionThrottled,
    RecognitionTimeout,
    RecognitionUnavailable,
    retry_wait,
)
from streams.ratelimit import RequestLimiter
from streams.sse_replies import error_from_reply

__all__ = ["FiletransClient", "QueryLimiter", "TaskStatus"]

SUBMIT_PATH = "/api/v1/services/audio/asr/transcription"
TASK_PATH = "/api/v1/tasks/"
POLICY_PATH = "/api/v1/uploads"
T = TypeVar("T")


@dataclass(frozen=True)
class TaskStatus:
    """One poll's answer."""

    status: str
    """PENDING, RUNNING, SUCCEEDED, FAILED or UNKNOWN."""
    transcription_url: str | None = None
    usage_seconds: float | None = None
    code: str | None = None
    message: str | None = None
    request_id: str | None = None

    @property
    def done(self) -> bool:
        """The task will not change any more."""
        return self.status in ("SUCCEEDED", "FAILED", "UNKNOWN")


class QueryLimiter:
    """The task-query quota (per account, ``qps``), of which this worker uses ``fraction``.

    Queries are spaced ``1 / (qps * fraction)`` apart in the worker; the group's workers hold
    fractions that add up to one (their share of the recordings partitions).
    """

    def __init__(self, qps: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._qps = qps
        self._fraction = 1.0
        self._clock = clock
        self._next = 0.0
        self._lock = asyncio.Lock()

    def share(self, fraction: float) -> None:
        """Use ``fraction`` (0..1] of the account's queries from now on."""
        self._fraction = min(1.0, max(fraction, 0.01))

    @property
    def per_second(self) -> float:
        """Queries per second this worker may send."""
        return self._qps * self._fraction

    async def acquire(self) -> None:
        """Wait for this worker's next query slot."""
        async with self._lock:
            now = self._clock()
            at = max(now, self._next)
            self._next = at + 1.0 / self.per_second
            if at > now:
                await asyncio.sleep(at - now)


@dataclass
class Counts:
    """Requests this client sent, by kind (the benchmark's figures)."""

    policies: int = 0
    uploads: int = 0
    submits: int = 0
    polls: int = 0
    results: int = 0


class FiletransClient:
    """Upload, submit, poll and fetch, with retries and the account's limits."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str | None,
        *,
        submit_limiter: RequestLimiter,
        query_limiter: QueryLimiter,
        attempts: int = 5,
        wait_initial_s: float = 0.5,
        wait_max_s: float = 10.0,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._api_key = api_key
        self._submit_limiter = submit_limiter
        self.query_limiter = query_limiter
        self._attempts = attempts
        self._wait = (wait_initial_s, wait_max_s)
        self._policies: dict[str, tuple[float, dict[str, Any]]] = {}
        self.counts = Counts()

    def _headers(self, **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        async for retry in stamina.retry_context(
            on=retry_wait,
            attempts=self._attempts,
            timeout=None,
            wait_initial=self._wait[0],
            wait_max=self._wait[1],
        ):
            with retry:
                return await call()
        raise AssertionError("unreachable: the retry loop returns or raises")

    async def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """One request whose reply is a JSON object; errors mapped as the streaming ones."""
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise RecognitionTimeout(f"{method} {url}: no reply ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise RecognitionUnavailable(f"cannot reach the recogniser: {exc!r}") from exc
        raw = response.content
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            data = None
        if response.status_code >= 300:
            body = data if isinstance(data, dict) else {}
            code, message = body.get("code"), body.get("message")
            raise error_from_reply(
                response.status_code,
                str(code) if code else None,
                str(message or raw[:200].decode(errors="replace")),
                response.headers.get("retry-after"),
            )
        if not isinstance(data, dict):
            raise RecognitionProtocolError(f"{method} {url}: not a JSON object: {raw[:200]!r}")
        return data

    async def upload(self, data: bytes, *, name: str, model: str) -> str:
        """Upload ``data`` as a temporary object for ``model``; return its ``oss://`` URL."""
        policy = await self._policy(model)
        key = f"{policy['upload_dir']}/{uuid.uuid4().hex[:12]}-{name}"
        fields = {
            "OSSAccessKeyId": str(policy["oss_access_key_id"]),
            "Signature": str(policy["signature"]),
            "policy": str(policy["policy"]),
            "key": key,
            "x-oss-object-acl": str(policy.get("x_oss_object_acl", "private")),
            "x-oss-forbid-overwrite": str(policy.get("x_oss_forbid_overwrite", "true")),
            "success_action_status": "200",
            "x-oss-content-type": "audio/flac",
        }

        async def post() -> str:
            self.counts.uploads += 1
            try:
                response = await self._http.post(
                    str(policy["upload_host"]),
                    data=fields,
                    files={"file": (name, data, "audio/flac")},
                )
            except httpx.TransportError as exc:
                raise RecognitionUnavailable(f"upload failed: {exc!r}") from exc
            if response.status_code != 200:
                raise error_from_reply(response.status_code, None, response.text[:200], None)
            return f"oss://{key}"

        return await self._retrying(post)

    async def _policy(self, model: str) -> dict[str, Any]:
        kept = self._policies.get(model)
        if kept is not None and kept[0] > time.monotonic():
            return kept[1]

        async def get() -> dict[str, Any]:
            self.counts.policies += 1
            return await self._json(
                "GET",
                self._base + POLICY_PATH,
                params={"action": "getPolicy", "model": model},
                headers=self._headers(),
            )

        reply = await self._retrying(get)
        data = reply.get("data")
        needed = ("policy", "signature", "upload_dir", "upload_host", "oss_access_key_id")
        if not isinstance(data, dict) or any(k not in data for k in needed):
            raise RecognitionProtocolError(f"upload policy without {needed}: {reply!r:.200}")
        # Kept until a minute before it expires (the SDK asks for one per file).
        lifetime = float(data.get("expire_in_seconds") or 300)
        self._policies[model] = (time.monotonic() + max(0.0, lifetime - 60), data)
        return data

    async def submit(
        self,
        file_url: str,
        *,
        model: str,
        channels: list[int],
        language: str | None,
        enable_itn: bool,
    ) -> tuple[str, str | None]:
        """Submit one task; return its id and the submit's request id."""
        parameters: dict[str, Any] = {
            "channel_id": channels,
            "enable_itn": enable_itn,
            "enable_words": True,
        }
        if language:
            parameters["language"] = language
        body = orjson.dumps(
            {"model": model, "input": {"file_url": file_url}, "parameters": parameters}
        )
        extra = {"X-DashScope-Async": "enable", "Content-Type": "application/json"}
        if file_url.startswith("oss://"):
            extra["X-DashScope-OssResourceResolve"] = "enable"

        async def post() -> dict[str, Any]:
            while True:
                await self._submit_limiter.acquire()
                self.counts.submits += 1
                try:
                    reply = await self._json(
                        "POST",
                        self._base + SUBMIT_PATH,
                        content=body,
                        headers=self._headers(**extra),
                    )
                except RecognitionThrottled as exc:
                    self._submit_limiter.throttled(exc.retry_after_s)
                    continue
                self._submit_limiter.succeeded()
                return reply

        reply = await self._retrying(post)
        task_id = (reply.get("output") or {}).get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise RecognitionProtocolError(f"submit reply without output.task_id: {reply!r:.200}")
        request_id = reply.get("request_id")
        return task_id, str(request_id) if request_id else None

    async def poll(self, task_id: str) -> TaskStatus:
        """The task's status now (one query, after the query limiter's slot)."""

        async def get() -> dict[str, Any]:
            await self.query_limiter.acquire()
            self.counts.polls += 1
            return await self._json(
                "GET", self._base + TASK_PATH + task_id, headers=self._headers()
            )

        reply = await self._retrying(get)
        output = reply.get("output")
        if not isinstance(output, dict) or not isinstance(output.get("task_status"), str):
            raise RecognitionProtocolError(f"task reply without output.task_status: {reply!r:.200}")
        result = output.get("result")
        url = result.get("transcription_url") if isinstance(result, dict) else None
        if url is None and isinstance(output.get("results"), list) and output["results"]:
            first = output["results"][0]  # the older file-transcription shape
            url = first.get("transcription_url") if isinstance(first, dict) else None
        usage = reply.get("usage")
        seconds = usage.get("seconds") if isinstance(usage, dict) else None
        return TaskStatus(
            status=output["task_status"],
            transcription_url=url if isinstance(url, str) else None,
            usage_seconds=float(seconds) if isinstance(seconds, int | float) else None,
            code=str(output["code"]) if output.get("code") else None,
            message=str(output["message"]) if output.get("message") else None,
            request_id=str(reply["request_id"]) if reply.get("request_id") else None,
        )

    async def result(self, url: str) -> Any:
        """The result file of a SUCCEEDED task (a presigned URL: no API key is sent)."""

        async def get() -> Any:
            self.counts.results += 1
            try:
                response = await self._http.get(url)
            except httpx.TransportError as exc:
                raise RecognitionUnavailable(f"cannot fetch the task result: {exc!r}") from exc
            if response.status_code != 200:
                raise error_from_reply(response.status_code, None, response.text[:200], None)
            try:
                return orjson.loads(response.content)
            except orjson.JSONDecodeError as exc:
                raise RecognitionProtocolError(f"task result is not JSON: {exc}") from exc

        return await self._retrying(get)


def billed_seconds(usage_seconds: float | None, channels: int, file_seconds: float) -> int:
    """Seconds billed for a task: the reported usage rounded up, else each channel's length."""
    if usage_seconds is not None:
        return math.ceil(usage_seconds)
    return channels * math.ceil(file_seconds)
