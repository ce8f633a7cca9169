"""Static API tokens: created, listed and revoked by ``novaquota tokens``, checked by the workers.

A token reads ``nq_<id>_<secret>``. The file keeps, per token, its name, role, tenant and an
argon2 hash of the secret, never the secret. The ``id`` finds the one entry to verify, so a check
costs one argon2 verification; a verified token is then cached, keyed by its id and checked by a
SHA-256 of the whole token compared in constant time, because the admission path runs thousands
of checks a second and argon2 is deliberately slow.

The workers re-read the file when it changes (at most every ``reload_seconds``), so a revoked
token stops working without a restart. The file is written atomically (a temporary file renamed
over it) with mode 0600.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from novaquota.streams.auth import ROLES, Principal, Role

__all__ = ["TokenEntry", "TokenError", "TokenStore", "create_token", "list_tokens", "revoke_token"]

PREFIX = "nq"
# The secrets are 256 random bits, not passwords: argon2 guards a leaked file against offline
# guessing, which such secrets already defeat, so a light cost keeps a cache miss cheap.
HASHER = PasswordHasher(time_cost=2, memory_cost=8 * 1024, parallelism=1)
CACHE_MAX = 10_000


class TokenError(ValueError):
    """A token file operation that cannot be done (duplicate name, bad role, ...)."""


@dataclass(frozen=True)
class TokenEntry:
    id: str
    name: str
    role: Role
    tenant: str | None
    hash: str
    created_at: str

    def principal(self) -> Principal:
        return Principal(f"token:{self.name}", self.role, self.tenant)

    def public(self) -> dict[str, Any]:
        """What ``tokens list`` shows: everything but the hash."""
        return {k: v for k, v in asdict(self).items() if k != "hash"}


def _split(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# -- the file ---------------------------------------------------------------------------------


def _read(path: Path) -> list[TokenEntry]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return [TokenEntry(**entry) for entry in raw.get("tokens", [])]


def _write(path: Path, entries: list[TokenEntry]) -> None:
    """Replace the file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": 1, "tokens": [asdict(e) for e in entries]}, indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(body + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def create_token(path: Path, name: str, role: str, tenant: str | None = None) -> str:
    """Add a token and return it: the only time its secret is known."""
    if role not in ROLES:
        raise TokenError(f"role must be one of {', '.join(ROLES)}")
    if (role == "admin") != (tenant is None):
        raise TokenError("an admin token has no tenant; every other role needs --tenant")
    entries = _read(path)
    if any(e.name == name for e in entries):
        raise TokenError(f"a token named {name!r} exists; revoke it first")
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    entry = TokenEntry(
        id=token_id,
        name=name,
        role=cast(Role, role),
        tenant=tenant,
        hash=HASHER.hash(secret),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    _write(path, [*entries, entry])
    return f"{PREFIX}_{token_id}_{secret}"


def list_tokens(path: Path) -> list[dict[str, Any]]:
    return [e.public() for e in _read(path)]


def revoke_token(path: Path, name: str) -> bool:
    """Remove the token called ``name``; False if there was none."""
    entries = _read(path)
    kept = [e for e in entries if e.name != name]
    if len(kept) == len(entries):
        return False
    _write(path, kept)
    return True


# -- verification -----------------------------------------------------------------------------


class TokenStore:
    """The workers' view of the token file: ``verify(token) -> Principal | None``."""

    def __init__(
        self,
        path: Path,
        *,
        reload_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.reload_seconds = reload_seconds
        self.clock = clock
        self._by_id: dict[str, TokenEntry] = {}
        self._verified: dict[str, tuple[bytes, Principal]] = {}
        self._failed: set[bytes] = set()
        self._stamp: object = object()  # never equal to a file's stamp: the first load reads
        self._checked_at: float | None = None
        self._lock = threading.Lock()
        self.reload()

    def _file_stamp(self) -> object:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def reload(self) -> None:
        """Read the file if it changed; forget every cached verification when it did."""
        self._checked_at = self.clock()
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            self._by_id = {e.id: e for e in _read(self.path)}
            self._verified = {}
            self._failed = set()
            self._stamp = stamp

    def _maybe_reload(self) -> None:
        if self._checked_at is None or self.clock() - self._checked_at >= self.reload_seconds:
            self.reload()

    def costly(self, token: str) -> bool:
        """Whether ``verify(token)`` would run argon2: a known id whose secret is neither
        verified nor failed yet (first use, or a guess). Such a call is run off the event loop."""
        parts = _split(token)
        if parts is None or parts[0] not in self._by_id:
            return False
        if parts[0] in self._verified:
            return False  # verify compares with the verified secret's digest
        return _digest(token) not in self._failed

    def verify(self, token: str) -> Principal | None:
        self._maybe_reload()
        parts = _split(token)
        if parts is None:
            return None
        token_id, secret = parts
        digest = _digest(token)
        cached = self._verified.get(token_id)
        if cached is not None:
            return cached[1] if hmac.compare_digest(cached[0], digest) else None
        entry = self._by_id.get(token_id)
        # Ids are not secret (``tokens list`` shows them): an unknown one fails at once. A
        # failed secret is remembered, so repeating it does not cost argon2 again.
        if entry is None or digest in self._failed:
            return None
        if not _verify_hash(entry.hash, secret):
            _remember(self._failed, digest)
            return None
        principal = entry.principal()
        if len(self._verified) >= CACHE_MAX:
            self._verified.clear()
        self._verified[token_id] = (digest, principal)
        return principal


def _remember(failed: set[bytes], digest: bytes) -> None:
    if len(failed) >= CACHE_MAX:
        failed.clear()
    failed.add(digest)


def _verify_hash(hash_: str, secret: str) -> bool:
    try:
        return HASHER.verify(hash_, secret)
    except (VerificationError, InvalidHashError):
        return False
