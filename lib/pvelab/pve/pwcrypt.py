"""PVE::Tools::encrypt_pw: glibc's SHA-256 crypt (`$5$<salt>$<hash>`), in pure Python.

`qm set --cipassword` stores the password this way for non-Windows guests (QS8 API2/Qemu.pm
update_vm_api). Python's `crypt` module is deprecated and gone in 3.13, hence this port of
Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512" (5000 rounds, salt up to 16 chars).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time

_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# The byte triples of the final digest, in the order the spec encodes them.
_ORDER = (
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
    (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29),
)  # fmt: skip
ROUNDS = 5000
# QS8 update_vm_api: "Same logic as in cloud-init (but with the regex fixed...)"
HASHED_RE = re.compile(r"^\$(?:[156]|2[ay])(\$.+){2}")


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def _b64(value: int, count: int) -> str:
    out = ""
    for _ in range(count):
        out += _ITOA64[value & 63]
        value >>= 6
    return out


def sha256_crypt(password: str, salt: str) -> str:
    """crypt(password, "$5$<salt>$") with the default 5000 rounds."""
    key, salt_b = password.encode(), salt.encode()[:16]
    alt = hashlib.sha256(key + salt_b + key).digest()
    ctx = hashlib.sha256(key + salt_b + _repeat(alt, len(key)))
    n = len(key)
    while n:
        ctx.update(alt if n & 1 else key)
        n >>= 1
    digest = ctx.digest()
    p_bytes = _repeat(hashlib.sha256(key * len(key)).digest(), len(key))
    s_bytes = _repeat(hashlib.sha256(salt_b * (16 + digest[0])).digest(), len(salt_b))
    for i in range(ROUNDS):
        step = hashlib.sha256(p_bytes if i & 1 else digest)
        if i % 3:
            step.update(s_bytes)
        if i % 7:
            step.update(p_bytes)
        step.update(digest if i & 1 else p_bytes)
        digest = step.digest()
    text = "".join(_b64((digest[a] << 16) | (digest[b] << 8) | digest[c], 4) for a, b, c in _ORDER)
    text += _b64((digest[31] << 8) | digest[30], 3)
    return f"$5${salt_b.decode()}${text}"


def encrypt_pw(password: str) -> str:
    """PVE's salt: 8 characters of sha1_base64(time + counter + pid), `+` made `X`."""
    seed = str(time.time_ns() + os.getpid()).encode()
    salt = base64.b64encode(hashlib.sha1(seed).digest()).decode()[:8]  # noqa: S324
    return sha256_crypt(password, salt.replace("+", "X"))
