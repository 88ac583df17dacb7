"""The vendor's temporary upload, so that the SDK's ``file://`` audio works against the server.

Three steps, as docs/dashscope-protocol.md §4 describes them:

1. ``GET /api/v1/uploads?action=getPolicy&model=M`` (Bearer key) answers a policy whose
   ``upload_host`` is this server's own ``/oss-upload``;
2. the client posts the file there as ``multipart/form-data`` (``key`` =
   ``<upload_dir>/<name>``, ``policy``, ``Signature``, ``file``...), answered 200;
3. the client then names ``oss://<key>`` with ``X-DashScope-OssResourceResolve: enable``;
   :meth:`UploadStore.resolve` returns the bytes (without the header, or for an unknown or
   expired key, the request is refused as the cloud refuses it).

Objects are kept in memory for :data:`OBJECT_TTL_S` (48 h, as the cloud keeps them) and under
a total size cap; the oldest go first when a new one would not fit. The signature is checked
against the policy this server issued, so a form built from a forged policy is refused.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import hmac
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streams.asr_server.errors import BAD_URL, RATE_QUOTA, RATE_QUOTA_MESSAGE, ApiError
from streams.asr_server.quota import RequestQuota

__all__ = ["OBJECT_TTL_S", "POLICY_PATH", "UPLOAD_PATH", "UploadStore", "upload_routes"]

POLICY_PATH = "/api/v1/uploads"
UPLOAD_PATH = "/oss-upload"
OBJECT_TTL_S = 48 * 3600.0
POLICY_TTL_S = 300
MiB = 1024 * 1024
RESOLVE_HEADER = "x-dashscope-ossresourceresolve"


@dataclass(frozen=True)
class _Object:
    data: bytes
    model: str
    stored_at: float


class UploadStore:
    """Uploaded objects by key, bounded in total size and age."""

    def __init__(self, capacity_bytes: int = 1024 * MiB, *, clock: Callable[[], float] = time.time):
        self.capacity_bytes = capacity_bytes
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._objects: OrderedDict[str, _Object] = OrderedDict()
        self._size = 0

    def policy(self, model: str, upload_host: str) -> dict[str, object]:
        """A fresh upload policy for ``model``, its ``data`` as the cloud's policy API sends it."""
        upload_dir = f"dashscope-instant/{uuid.uuid4().hex}/{time.strftime('%Y-%m-%d')}"
        expires = int(self._clock()) + POLICY_TTL_S
        document = {"expiration": expires, "dir": upload_dir, "model": model}
        policy = base64.b64encode(orjson.dumps(document)).decode()
        return {
            "policy": policy,
            "signature": self._sign(policy),
            "upload_dir": upload_dir,
            "upload_host": upload_host,
            "oss_access_key_id": "LTAI-local-asr-server",
            "x_oss_object_acl": "private",
            "x_oss_forbid_overwrite": "true",
            "expire_in_seconds": POLICY_TTL_S,
            "max_file_size_mb": self.capacity_bytes // MiB,
            "capacity_limit_mb": self.capacity_bytes // MiB,
        }

    def _sign(self, policy: str) -> str:
        digest = hmac.new(self._secret, policy.encode(), hashlib.sha1).digest()
        return base64.b64encode(digest).decode()

    def store(self, fields: dict[str, str], data: bytes) -> str:
        """Check a form's policy and signature and keep its file; return the object key."""
        policy, key = fields.get("policy", ""), fields.get("key", "")
        if not hmac.compare_digest(self._sign(policy), fields.get("Signature", "")):
            raise ApiError(403, "SignatureDoesNotMatch", "The request signature does not match.")
        try:
            document = orjson.loads(base64.b64decode(policy))
        except ValueError as exc:
            raise ApiError(400, "InvalidPolicyDocument", "Invalid Policy.") from exc
        if document["expiration"] < self._clock():
            raise ApiError(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        if not key.startswith(document["dir"] + "/") or key.endswith("/"):
            raise ApiError(403, "AccessDenied", "Invalid according to Policy: key.")
        if key in self._objects and fields.get("x-oss-forbid-overwrite") == "true":
            raise ApiError(409, "FileAlreadyExists", "The object you specified already exists.")
        if len(data) > self.capacity_bytes:
            raise ApiError(400, "EntityTooLarge", "Your proposed upload exceeds the maximum size.")
        self._expire()
        self._drop(key)
        while self._size + len(data) > self.capacity_bytes and self._objects:
            self._drop(next(iter(self._objects)))
        self._objects[key] = _Object(data, str(document["model"]), self._clock())
        self._size += len(data)
        return key

    def _drop(self, key: str) -> None:
        gone = self._objects.pop(key, None)
        if gone is not None:
            self._size -= len(gone.data)

    def _expire(self) -> None:
        now = self._clock()
        while self._objects:
            key, first = next(iter(self._objects.items()))
            if first.stored_at + OBJECT_TTL_S > now:
                break
            self._drop(key)

    def resolve(self, url: str, *, resolve_header: bool) -> bytes:
        """The bytes of ``oss://<key>``; refused without the resolve header or when unknown."""
        if not resolve_header:
            raise ApiError(400, "InvalidParameter", BAD_URL)
        self._expire()
        found = self._objects.get(url.removeprefix("oss://"))
        if found is None:  # never uploaded here, or expired
            raise ApiError(400, "InvalidParameter", BAD_URL)
        return found.data

    @staticmethod
    def wants_resolve(request: Request) -> bool:
        """Whether the request carries ``X-DashScope-OssResourceResolve: enable``."""
        return request.headers.get(RESOLVE_HEADER, "").lower() == "enable"


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], bytes | None]:
    """The text fields and the ``file`` part of a ``multipart/form-data`` body."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "InvalidArgument", "expected multipart/form-data")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    data: bytes | None = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if name == "file":
            data = payload
        else:
            fields[name] = payload.decode("utf-8", "replace")
    return fields, data


async def _read_capped(request: Request, cap: int) -> bytes:
    """The request body, refused as OSS refuses an upload over its size once past ``cap``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ApiError(400, "EntityTooLarge", "Your proposed upload exceeds the maximum size.")
        chunks.append(chunk)
    return b"".join(chunks)


def _oss_error(exc: ApiError) -> Response:
    body = f"<Error><Code>{exc.code}</Code><Message>{exc.message}</Message></Error>"
    return Response(body, exc.status, media_type="application/xml")


def upload_routes(
    store: UploadStore,
    authorize: Callable[[Request], str],
    qps: int,
    journal: Callable[[dict[str, object]], None] | None = None,
) -> list[Route]:
    """The policy API (Bearer key; ``qps`` a second per key, 0: no limit) and the form upload."""
    quota = RequestQuota(qps * 60) if qps else None

    async def get_policy(request: Request) -> Response:
        request_id = str(uuid.uuid4())
        model = request.query_params.get("model", "")
        try:
            retry_after = quota.admit(authorize(request)) if quota is not None else None
            if retry_after is not None:
                raise ApiError(429, RATE_QUOTA, RATE_QUOTA_MESSAGE, retry_after_s=retry_after)
            if request.query_params.get("action") != "getPolicy" or not model:
                raise ApiError(400, "InvalidParameter", "action=getPolicy and model are required")
        except ApiError as exc:
            headers = {"retry-after": str(int(exc.retry_after_s))} if exc.retry_after_s else {}
            body = {"request_id": request_id, "code": exc.code, "message": exc.message}
            return JSONResponse(body, exc.status, headers=headers)
        host = str(request.base_url).rstrip("/") + UPLOAD_PATH
        return JSONResponse({"request_id": request_id, "data": store.policy(model, host)})

    async def upload(request: Request) -> Response:
        try:
            body = await _read_capped(request, store.capacity_bytes + MiB)
            fields, data = parse_form(request.headers.get("content-type", ""), body)
            if data is None:
                raise ApiError(400, "InvalidArgument", "the form has no file")
            key = store.store(fields, data)
        except ApiError as exc:
            return _oss_error(exc)
        if journal is not None:
            event = {"kind": "upload", "key": key, "bytes": len(data), "time": time.time()}
            journal({"request_id": str(uuid.uuid4()), **event, "http_status": 200})
        status = 200 if fields.get("success_action_status") == "200" else 204
        return Response(b"", status)

    return [
        Route(POLICY_PATH, get_policy, methods=["GET"]),
        Route(UPLOAD_PATH, upload, methods=["POST"]),
    ]
