"""Webhook signatures: HMAC-SHA256 over ``<timestamp>.<body>``.

Headers: ``X-Novaquota-Timestamp: <unix seconds>`` and ``X-Novaquota-Signature: v1=<hex>``.
A receiver recomputes the HMAC with the shared key, compares in constant time and refuses a
timestamp too far from its clock (replays of an old, captured request).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "sign",
    "signature_headers",
    "verify",
]

TIMESTAMP_HEADER = "X-Novaquota-Timestamp"
SIGNATURE_HEADER = "X-Novaquota-Signature"
_SCHEME = "v1="


def sign(key: str | bytes, timestamp: int, body: bytes) -> str:
    """``v1=<hex of HMAC-SHA256(key, b"<timestamp>." + body)>``."""
    k = key.encode("utf-8") if isinstance(key, str) else key
    mac = hmac.new(k, str(int(timestamp)).encode("ascii") + b"." + body, hashlib.sha256)
    return _SCHEME + mac.hexdigest()


def signature_headers(key: str | bytes, timestamp: int, body: bytes) -> dict[str, str]:
    return {TIMESTAMP_HEADER: str(int(timestamp)), SIGNATURE_HEADER: sign(key, timestamp, body)}


def verify(
    key: str | bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    *,
    now: float,
    tolerance_seconds: float = 300.0,
) -> bool:
    """What a receiver does: the timestamp is recent and one of the ``v1=`` signatures (a
    comma-separated list during a key rotation) matches."""
    if not timestamp_header or not signature_header:
        return False
    try:
        ts = int(timestamp_header)
    except ValueError:
        return False
    if abs(now - ts) > tolerance_seconds:
        return False
    expected = sign(key, ts, body)
    return any(hmac.compare_digest(expected, part.strip()) for part in signature_header.split(","))
