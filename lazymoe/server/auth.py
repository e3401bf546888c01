"""API keys: one per member, stored only as a salted scrypt hash, checked in constant time.

A key looks like `lzm-<key id>.<secret>`. The key id (public, 8 hex digits) finds the member's
record; the secret is hashed with that record's salt and compared with `hmac.compare_digest`, so
the time a check takes does not tell an attacker how many characters were right. The plain key
is shown once, when it is made, and never stored or logged.

Keys file (JSON, written with mode 0600):
    {"version": 1, "keys": [{"member": "alice", "key_id": "1a2b3c4d", "salt": "<hex>",
                             "hash": "<hex>", "n": 16384, "r": 8, "p": 1, "created": "<iso time>",
                             "role": "member", "requests_per_minute": null,
                             "tokens_per_minute": null, "tokens_per_day": null}]}

`role` is "member" or "admin" (the admin sees every member's figures on /metrics); a limit left
null (or absent, as in files written before limits existed) is the server's own limit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from lazymoe import atomic

KEY_PREFIX = "lzm-"
MEMBER_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
# scrypt cost: 2**14 * 8 * 128 B = 16 MiB and ~50 ms per check; verified keys are cached in memory.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
ROLES = ("member", "admin")
LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day")


class KeyFileError(ValueError):
    """The keys file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class KeyRecord:
    member: str
    key_id: str
    salt: str  # hex
    hash: str  # hex, scrypt(secret, salt)
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P
    created: str = ""
    role: str = "member"  # or "admin"
    requests_per_minute: int | None = None  # None: the server's limit
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role {self.role!r} of member {self.member!r} must be one of {ROLES}")
        for name in LIMIT_FIELDS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(
                    f"{name}={value!r} of member {self.member!r} must be a positive whole number "
                    "(or null for the server's limit)"
                )

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# Who a request is from when the server has no keys (loopback only): the person at this machine.
LOCAL = KeyRecord(member="local", key_id="", salt="", hash="", role="admin")


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024**2, dklen=32)


def _split(key: str) -> tuple[str, str] | None:
    if not key.startswith(KEY_PREFIX) or "." not in key:
        return None
    key_id, secret = key[len(KEY_PREFIX) :].split(".", 1)
    return (key_id, secret) if key_id and secret else None


class KeyStore:
    """The members' hashed keys, read from a file that the instructor may change while serving.

    `verify(key) -> member name or None`. The file is re-read when its modification time changes,
    so `lazymoe serve --add-key bob` or `--revoke-key bob` takes effect without a restart.
    """

    def __init__(self, path: str | Path, *, create: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._records: dict[str, KeyRecord] = {}
        self._mtime_ns: int | None = None
        self._verified: dict[bytes, KeyRecord] = {}  # hmac(process secret, key) -> its record
        self._cache_secret = secrets.token_bytes(32)
        # At most 4 hashes at once: 32 clients arriving together must not take 32 x 16 MiB.
        self._hashing = threading.BoundedSemaphore(4)
        if not self.path.exists():
            if not create:
                raise KeyFileError(
                    f"keys file {self.path} does not exist: create it with "
                    f"`lazymoe serve --add-key NAME --keys {self.path}`"
                )
            self._write({})
        self._reload_if_changed()

    # -- reading ---------------------------------------------------------------------------------
    def _reload_if_changed(self) -> None:
        try:
            mtime_ns = self.path.stat().st_mtime_ns
        except FileNotFoundError as exc:
            raise KeyFileError(f"keys file {self.path} disappeared: restore it or restart") from exc
        if mtime_ns == self._mtime_ns:
            return
        try:
            raw = json.loads(self.path.read_text())
            records = {r["key_id"]: KeyRecord(**r) for r in raw["keys"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(
                f"keys file {self.path} is not a lazymoe keys file ({exc}): "
                "fix it by hand or move it away and add the keys again"
            ) from exc
        self._records, self._mtime_ns = records, mtime_ns
        self._verified.clear()  # a revoked key must stop working at once

    def members(self) -> list[str]:
        with self._lock:
            self._reload_if_changed()
            return sorted({r.member for r in self._records.values()})

    def verify(self, key: str | None) -> str | None:
        """The member who owns `key`, or None. Takes the same time for a wrong secret of any length."""
        record = self.identify(key)
        return record.member if record else None

    def tag_of(self, key: str) -> bytes:
        """The key as the cache knows it: an HMAC under a secret of this process, never the key."""
        return hmac.new(self._cache_secret, key.encode(), hashlib.sha256).digest()

    def cached(self, key: str | None) -> KeyRecord | None:
        """The record of a key verified before (microseconds, no hashing), or None."""
        if not key:
            return None
        with self._lock:
            self._reload_if_changed()
            return self._verified.get(self.tag_of(key))

    def identify(self, key: str | None) -> KeyRecord | None:
        """The record (member, role, limits) of the key's owner, or None for a wrong key."""
        if not key:
            return None
        with self._lock:
            self._reload_if_changed()
            tag = self.tag_of(key)
            if tag in self._verified:
                return self._verified[tag]
            parts = _split(key)
            record = self._records.get(parts[0]) if parts else None
        with self._hashing:
            with self._lock:  # someone may have verified this key while we waited
                if tag in self._verified:
                    return self._verified[tag]
            if record is None:
                # Hash anyway, so an unknown key id costs as long as a wrong secret.
                _scrypt(parts[1] if parts else key, b"0" * 16, SCRYPT_N, SCRYPT_R, SCRYPT_P)
                return None
            digest = _scrypt(parts[1], bytes.fromhex(record.salt), record.n, record.r, record.p)
        if not hmac.compare_digest(digest, bytes.fromhex(record.hash)):
            return None
        with self._lock:
            if self._records.get(record.key_id) == record:  # not revoked while we hashed
                self._verified[tag] = record
        return record

    # -- writing ---------------------------------------------------------------------------------
    def add(
        self,
        member: str,
        *,
        role: str = "member",
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        tokens_per_day: int | None = None,
    ) -> str:
        """Make a new key for `member` and return it in plain text: the only time it exists.

        The limits left None are the server's own; `role="admin"` may read every member's figures.
        """
        if not MEMBER_PATTERN.match(member):
            raise ValueError(
                f"member name {member!r} must be 1-64 letters, digits or _ . @ - (no spaces)"
            )
        key_id, secret = secrets.token_hex(4), secrets.token_urlsafe(24)
        salt = secrets.token_bytes(16)
        record = KeyRecord(
            member=member,
            key_id=key_id,
            salt=salt.hex(),
            hash=_scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P).hex(),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            role=role,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            tokens_per_day=tokens_per_day,
        )
        with self._lock:
            self._reload_if_changed()
            records = dict(self._records)
            records[key_id] = record
            self._write(records)
        return f"{KEY_PREFIX}{key_id}.{secret}"

    def revoke(self, member: str) -> int:
        """Remove every key of `member`; returns how many were removed."""
        with self._lock:
            self._reload_if_changed()
            keep = {k: r for k, r in self._records.items() if r.member != member}
            removed = len(self._records) - len(keep)
            if removed:
                self._write(keep)
        return removed

    def _write(self, records: dict[str, KeyRecord]) -> None:
        keys = {"version": 1, "keys": [asdict(r) for r in records.values()]}
        atomic.write_json(
            self.path, keys, mode=0o600, indent=1
        )  # readable by the server's user only
        self._records = records
        self._mtime_ns = self.path.stat().st_mtime_ns
        self._verified.clear()


def bearer_key(authorization: str | None) -> str | None:
    """The key in an `Authorization: Bearer <key>` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
