"""Authenticated encryption of MT5 passwords at rest (AES-256-GCM), with rotatable keys.

The current key is ``BRIDGE_CREDENTIALS_KEY`` (32 bytes, urlsafe base64). In development without it a
key is generated once into ``var/credentials.key`` (mode 0600); production refuses to start without it
(see settings). ``BRIDGE_CREDENTIALS_OLD_KEYS`` (comma-separated, same format) are keys that are only
used to decrypt: what was encrypted under them still decrypts after the current key changed, until
``manage.py rotate_credentials_key`` has re-encrypted every stored secret under the current key.

The session id is bound as associated data, so a ciphertext copied to another session's row does not
decrypt.

Stored format (``BridgeSession.password_encrypted``):

* ``0x02 | key id (4 bytes) | nonce (12) | ciphertext + tag`` (current). The key id is the first four
  bytes of ``SHA-256("mt5-bridge credentials key id" 0x00 key)``: it names the key without revealing it,
  and operators need not number their keys.
* ``0x01 | nonce (12) | ciphertext + tag`` (before key ids existed): still decrypts; without a key id
  the current key is tried first, then each old key (GCM's tag tells the right one).
* ``b""``: nothing stored (the session ended and its secret was wiped).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

VERSION = b"\x02"  # with a key id
LEGACY_VERSION = b"\x01"  # no key id
KEY_ID_BYTES = 4
NONCE_BYTES = 12
_KEY_ID_LABEL = b"mt5-bridge credentials key id\x00"


class CredentialError(ValueError):
    """A stored secret that cannot be decrypted: unknown format, unknown key, or wrong key/context."""


def generate_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def key_id(key: bytes) -> bytes:
    """The 4-byte id stored in front of ciphertexts made with ``key``."""
    return hashlib.sha256(_KEY_ID_LABEL + key).digest()[:KEY_ID_BYTES]


def _decode_key(text: str, name: str = "BRIDGE_CREDENTIALS_KEY") -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not urlsafe base64") from exc
    if len(key) != 32:
        raise ImproperlyConfigured(f"{name} must decode to 32 bytes")
    return key


@dataclass(frozen=True)
class Keyring:
    current: bytes
    old: tuple[bytes, ...]

    @property
    def current_id(self) -> bytes:
        return key_id(self.current)

    def all(self) -> tuple[bytes, ...]:
        return (self.current, *(k for k in self.old if k != self.current))

    def by_id(self, kid: bytes) -> list[bytes]:
        return [k for k in self.all() if key_id(k) == kid]


def _file_key() -> str:
    path = settings.BRIDGE_CREDENTIALS_KEY_FILE
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(generate_key())
        try:
            os.link(tmp, path)  # atomic: the first process to create the key wins, others read it
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text()


def _old_key_texts() -> tuple[str, ...]:
    raw = getattr(settings, "BRIDGE_CREDENTIALS_OLD_KEYS", ()) or ()
    if isinstance(raw, str):
        raw = raw.split(",")
    return tuple(t.strip() for t in raw if t and t.strip())


@lru_cache(maxsize=8)
def _keyring_for(configured: str, old: tuple[str, ...], key_file: str) -> Keyring:
    current = _decode_key(configured) if configured else _decode_key(_file_key(), "the credentials key file")
    return Keyring(current, tuple(_decode_key(t, "BRIDGE_CREDENTIALS_OLD_KEYS") for t in old))


def keyring() -> Keyring:
    """The configured keys (cached per configuration, so a changed setting takes effect at once)."""
    return _keyring_for(settings.BRIDGE_CREDENTIALS_KEY, _old_key_texts(), str(settings.BRIDGE_CREDENTIALS_KEY_FILE))


def _key() -> bytes:
    return keyring().current


def encrypt_secret(plaintext: str, context: str) -> bytes:
    ring = keyring()
    nonce = os.urandom(NONCE_BYTES)
    return VERSION + ring.current_id + nonce + AESGCM(ring.current).encrypt(nonce, plaintext.encode(), context.encode())


def blob_key_id(blob: bytes) -> bytes | None:
    """The key id a stored secret names (None: the legacy format without one, or nothing stored)."""
    blob = bytes(blob)
    if blob[:1] == VERSION and len(blob) > 1 + KEY_ID_BYTES:
        return blob[1:1 + KEY_ID_BYTES]
    return None


def decrypt_secret(blob: bytes, context: str) -> str:
    blob = bytes(blob)
    version = blob[:1]
    if version == VERSION:
        kid, rest = blob[1:1 + KEY_ID_BYTES], blob[1 + KEY_ID_BYTES:]
        candidates = keyring().by_id(kid)
        if not candidates:
            raise CredentialError(
                f"encrypted under an unknown key (id {kid.hex()}): add that key to BRIDGE_CREDENTIALS_OLD_KEYS")
    elif version == LEGACY_VERSION:
        rest, candidates = blob[1:], list(keyring().all())
    elif not blob:
        raise CredentialError("no stored secret (wiped when the session ended)")
    else:
        raise CredentialError("unknown credential format")
    nonce, ciphertext = rest[:NONCE_BYTES], rest[NONCE_BYTES:]
    for key in candidates:
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, context.encode()).decode()
        except InvalidTag:
            continue
    raise CredentialError("the stored secret does not decrypt with any configured key for this context")


def needs_reencryption(blob: bytes) -> bool:
    """True when a stored secret is not under the current key (legacy format or another key id)."""
    blob = bytes(blob)
    return bool(blob) and blob_key_id(blob) != keyring().current_id


def reencrypt_secret(blob: bytes, context: str) -> bytes:
    """``blob`` decrypted with whichever configured key made it, encrypted again under the current key."""
    return encrypt_secret(decrypt_secret(blob, context), context)
