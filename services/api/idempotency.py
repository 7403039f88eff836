"""The Idempotency-Key header of the submitting routes: a retried request creates nothing.

The key is scoped per API key (when keys are on) and per route path, and lives in Redis as
``vq:idem:<scope>:<digest>`` for the job TTL. Its record (the request's fingerprint and the
job ids it created) is written by the submit script in the same atomic call that creates
the jobs (SUBMIT_LUA), so two concurrent requests with one key make one set of jobs: the
second finds the record and answers with the first one's ids. The same key with another
body is 409 ``idempotency_conflict``, as in the IETF draft "The Idempotency-Key HTTP Header
Field" (draft-ietf-httpapi-idempotency-key-header).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials

from services.api.deps import presented_key
from services.api.uploads import SubmitForm
from services.common.errors import IdempotencyConflict, RequestInvalid
from services.common.protocol.keys import idempotency_key

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 200


@dataclass(frozen=True)
class Idempotency:
    """One request's Idempotency-Key: its Redis key and the fingerprint of its body."""

    redis_key: str
    fingerprint: str

    def record(self, job_ids: list[str], **extra: str) -> str:
        """The JSON the submit script stores under the key."""
        return json.dumps({"fp": self.fingerprint, "job_ids": job_ids, **extra})

    def replay(self, stored: bytes | str) -> dict[str, Any]:
        """The stored record of an earlier request; 409 when its body was another."""
        record: dict[str, Any] = json.loads(stored)
        if record.get("fp") != self.fingerprint:
            raise IdempotencyConflict(
                f"this {HEADER} was used with a different request body; use a new key for a "
                "new request"
            )
        return record


def fingerprint(form: SubmitForm, extra: str = "") -> str:
    """sha256 over everything the request asks for: model, params, timeout, every file."""
    digest = hashlib.sha256()
    head = {"model": form.model, "params": form.params, "timeout": form.timeout, "extra": extra}
    digest.update(json.dumps(head, sort_keys=True).encode())
    for upload in form.files:
        digest.update(b"\0" + upload.filename.encode() + b"\0")
        digest.update(hashlib.sha256(upload.data).digest())
    return digest.hexdigest()


def idempotency_of(
    request: Request, form: SubmitForm, keys_on: bool, extra: str = ""
) -> Idempotency | None:
    """The request's Idempotency-Key, or None without one; 422 when it is empty or too long."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_KEY_CHARS:
        raise RequestInvalid(
            f"header.{HEADER}: must be 1 to {MAX_KEY_CHARS} characters (got {len(key)})"
        )
    # Per API key: two tenants may pick the same key without seeing each other's jobs.
    scope = hashlib.sha256(_api_key(request).encode()).hexdigest()[:32] if keys_on else "-"
    return Idempotency(idempotency_key(scope, request.url.path, key), fingerprint(form, extra))


def _api_key(request: Request) -> str:
    """The API key this request presents, read as the auth dependency reads it."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    bearer = (
        HTTPAuthorizationCredentials(scheme=scheme, credentials=credentials)
        if scheme.lower() == "bearer" and credentials
        else None
    )
    return presented_key(bearer, request.headers.get("X-API-Key"))
