"""Authenticated encryption of MT5 passwords at rest (AES-256-GCM).

The key is ``BRIDGE_CREDENTIALS_KEY`` (32 bytes, urlsafe base64). In development without it a key
is generated once into ``var/credentials.key`` (mode 0600); production refuses to start without it
(see settings). The session id is bound as associated data, so a ciphertext copied to another
session's row does not decrypt.
"""

from __future__ import annotations

import base64
import os
from functools import lru_cache

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

VERSION = b"\x01"


def generate_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _decode_key(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except ValueError as exc:
        raise ImproperlyConfigured("BRIDGE_CREDENTIALS_KEY is not urlsafe base64") from exc
    if len(key) != 32:
        raise ImproperlyConfigured("BRIDGE_CREDENTIALS_KEY must decode to 32 bytes")
    return key


@lru_cache(maxsize=4)
def _key_for(configured: str, key_file: str) -> bytes:
    if configured:
        return _decode_key(configured)
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
    return _decode_key(path.read_text())


def _key() -> bytes:
    return _key_for(settings.BRIDGE_CREDENTIALS_KEY, str(settings.BRIDGE_CREDENTIALS_KEY_FILE))


def encrypt_secret(plaintext: str, context: str) -> bytes:
    nonce = os.urandom(12)
    return VERSION + nonce + AESGCM(_key()).encrypt(nonce, plaintext.encode(), context.encode())


def decrypt_secret(blob: bytes, context: str) -> str:
    blob = bytes(blob)
    if blob[:1] != VERSION:
        raise ValueError("unknown credential format")
    nonce, ciphertext = blob[1:13], blob[13:]
    return AESGCM(_key()).decrypt(nonce, ciphertext, context.encode()).decode()
