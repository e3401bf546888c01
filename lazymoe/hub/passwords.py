"""Members' hub passwords: a JSON file the instructor manages, holding only salted scrypt hashes.

    {"version": 1, "users": {"alice": {"salt": "<hex>", "hash": "<hex>", "n": 16384, "r": 8, "p": 1}}}

Written atomically with mode 0600. The same hashing as the API keys (lazymoe.server.auth).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path

from lazymoe import atomic

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB and ~50 ms per check
MIN_LENGTH = 8  # characters


class PasswordFileError(ValueError):
    """The password file is unreadable or malformed."""


def _hash(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 2**20)


class PasswordFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            users = data["users"]
            if not isinstance(users, dict):
                raise TypeError("'users' is not a mapping")
        except (ValueError, KeyError, TypeError) as exc:
            raise PasswordFileError(
                f"{self.path} is not a lazymoe hub password file ({exc}): restore it from a "
                "backup, or delete it and set the passwords again with `lazymoe hub --set-password`"
            ) from exc
        return users

    def users(self) -> list[str]:
        return sorted(self._load())

    def has(self, user: str) -> bool:
        return user in self._load()

    def set(self, user: str, password: str) -> None:
        if len(password) < MIN_LENGTH:
            raise ValueError(f"a password needs at least {MIN_LENGTH} characters")
        salt = secrets.token_bytes(16)
        users = self._load()
        users[user] = {"salt": salt.hex(), "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
                       "hash": _hash(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P).hex()}
        atomic.write_json(self.path, {"version": 1, "users": users}, mode=0o600, indent=1)

    def remove(self, user: str) -> bool:
        users = self._load()
        if users.pop(user, None) is None:
            return False
        atomic.write_json(self.path, {"version": 1, "users": users}, mode=0o600, indent=1)
        return True

    def check(self, user: str, password: str) -> bool:
        record = self._load().get(user)
        if record is None:
            return False
        got = _hash(password, bytes.fromhex(record["salt"]), record["n"], record["r"], record["p"])
        return hmac.compare_digest(got.hex(), record["hash"])
