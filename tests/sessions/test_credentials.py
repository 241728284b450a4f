"""The credentials key: stored secrets name their key, old keys still decrypt, ``rotate_credentials_key``
moves every stored secret to the current key, and a session opened under the old key still logs in on a
real pinned worker (against a real mt5sim terminal) that knows only the new key after the rotation."""

from __future__ import annotations

import os
import time
from io import StringIO

import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from rest_framework.test import APIClient

from sessions.api_keys import create_api_key
from sessions.crypto import (
    LEGACY_VERSION,
    VERSION,
    CredentialError,
    _decode_key as decode_key,
    blob_key_id,
    decrypt_secret,
    encrypt_secret,
    generate_key,
    key_id,
)
from sessions.models import BridgeSession, SessionStatus, Workspace
from terminals.models import Terminal
from tests.conftest import SIM_TERMINALS, Stack, _db_env
from tests.procs import start_manage, start_sim
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

K1, K2, K3 = generate_key(), generate_key(), generate_key()


def _use(settings, current: str, *old: str) -> None:
    settings.BRIDGE_CREDENTIALS_KEY = current
    settings.BRIDGE_CREDENTIALS_OLD_KEYS = list(old)


def _legacy_blob(key: str, plaintext: str, context: str) -> bytes:
    """The format before key ids: 0x01 | nonce | ciphertext."""
    nonce = os.urandom(12)
    return LEGACY_VERSION + nonce + AESGCM(decode_key(key)).encrypt(nonce, plaintext.encode(), context.encode())


def test_secrets_name_their_key_and_old_keys_decrypt_them(settings) -> None:
    _use(settings, K1)
    blob = encrypt_secret("pw-1", "sess_a")
    assert blob[:1] == VERSION and blob_key_id(blob) == key_id(decode_key(K1)) and len(blob_key_id(blob)) == 4
    legacy = _legacy_blob(K1, "pw-legacy", "sess_b")
    _use(settings, K2, K1)  # rotated: K1 is decrypt-only now
    assert decrypt_secret(blob, "sess_a") == "pw-1"
    assert decrypt_secret(legacy, "sess_b") == "pw-legacy"  # no key id: every configured key is tried
    assert blob_key_id(encrypt_secret("pw-2", "sess_c")) == key_id(decode_key(K2))  # new ones: the current key
    _use(settings, K2)  # the old key dropped: what it made no longer decrypts, and says why
    with pytest.raises(CredentialError, match=key_id(decode_key(K1)).hex()):
        decrypt_secret(blob, "sess_a")
    with pytest.raises(CredentialError):
        decrypt_secret(legacy, "sess_b")
    _use(settings, K2, K1)
    with pytest.raises(CredentialError):  # still bound to its session
        decrypt_secret(blob, "sess_other")
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(CredentialError):
        decrypt_secret(bytes(tampered), "sess_a")
    with pytest.raises(CredentialError):  # a wiped secret
        decrypt_secret(b"", "sess_a")


def _row(workspace: Workspace, n: int, blob: bytes, status: str = SessionStatus.CLOSED) -> BridgeSession:
    terminal = Terminal.objects.create(name=f"cred-{n}-{time.time_ns() % 10**9}", backend="sim",
                                       address="127.0.0.1:1")
    now = timezone.now()
    row = BridgeSession(workspace=workspace, terminal=terminal, account_id=f"acc-{n}", login=9000 + n,
                        server="Demo", status=status, expires_at=now + timezone.timedelta(hours=1))
    row.password_encrypted = blob(row.id) if callable(blob) else blob
    row.save(force_insert=True)
    return row


def test_rotate_credentials_key_reencrypts_every_stored_secret(settings) -> None:
    workspace = Workspace.objects.create(name="ws-cred")
    _use(settings, K1)
    under_k1 = _row(workspace, 1, lambda sid: encrypt_secret("pw-one", sid), SessionStatus.ACTIVE)
    legacy = _row(workspace, 2, lambda sid: _legacy_blob(K1, "pw-two", sid), SessionStatus.OPENING)
    _use(settings, K2, K1)
    under_k2 = _row(workspace, 3, lambda sid: encrypt_secret("pw-three", sid))
    wiped = _row(workspace, 4, b"")
    before_k2 = bytes(under_k2.password_encrypted)

    out = StringIO()
    call_command("rotate_credentials_key", "--batch-size", "2", stdout=out)
    text = out.getvalue()
    assert "3 stored secret(s) to check" in text
    assert "progress 2/3" in text and "progress 3/3" in text  # one line per batch
    assert ("done: checked 3, re-encrypted 2, already current 1, changed meanwhile 0, failed 0, "
            "remaining under other keys 0") in text

    _use(settings, K2)  # only the new key from here on: everything still decrypts
    current = key_id(decode_key(K2))
    for row, password in ((under_k1, "pw-one"), (legacy, "pw-two"), (under_k2, "pw-three")):
        blob = bytes(BridgeSession.objects.get(id=row.id).password_encrypted)
        assert blob_key_id(blob) == current
        assert decrypt_secret(blob, row.id) == password
    assert bytes(BridgeSession.objects.get(id=under_k2.id).password_encrypted) == before_k2  # left alone
    assert bytes(BridgeSession.objects.get(id=wiped.id).password_encrypted) == b""

    again = StringIO()
    call_command("rotate_credentials_key", stdout=again)
    assert "re-encrypted 0, already current 3" in again.getvalue()


def test_rotation_reports_secrets_no_configured_key_can_open(settings) -> None:
    workspace = Workspace.objects.create(name="ws-cred-lost")
    _use(settings, K3)
    lost = _row(workspace, 5, lambda sid: encrypt_secret("pw-lost", sid))
    _use(settings, K2, K1)
    ok = _row(workspace, 6, lambda sid: _legacy_blob(K1, "pw-ok", sid))
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="1 secret"):
        call_command("rotate_credentials_key", stdout=out, stderr=err)
    assert f"session {lost.id}: cannot decrypt" in err.getvalue()
    assert "re-encrypted 1" in out.getvalue() and "failed 1" in out.getvalue()
    assert "remaining under other keys 1" in out.getvalue()
    assert blob_key_id(BridgeSession.objects.get(id=ok.id).password_encrypted) == key_id(decode_key(K2))
    dry = StringIO()
    _use(settings, K1, K2, K3)
    call_command("rotate_credentials_key", "--dry-run", stdout=dry)
    assert "re-encrypted 2" in dry.getvalue() and "nothing written" in dry.getvalue()
    assert blob_key_id(BridgeSession.objects.get(id=ok.id).password_encrypted) == key_id(decode_key(K2))


# -- a real worker and terminal ------------------------------------------------------------------------------


def test_a_session_opened_under_the_old_key_logs_in_after_rotation(sim_stack: Stack, tmp_path, settings) -> None:
    """Worker 1 knows the new key and the old one; worker 2, after the rotation, only the new one."""
    name = f"cred-sim-{time.time_ns() % 10**6}"
    sim, address = start_sim(name, tmp_path, tmp_path / "state", seed=77)
    workers = []
    try:
        # The stack's terminals plus this one, so that no process's terminal sync disables another's.
        terminals = [{"name": n, "backend": "sim", "address": sim_stack.addresses[n], "utc_offset": off}
                     for n, off in SIM_TERMINALS]
        terminals_file = tmp_path / "terminals.yaml"
        terminals_file.write_text(yaml.safe_dump({"terminals": [
            *terminals, {"name": name, "backend": "sim", "address": address, "utc_offset": 0}]}))
        settings.BRIDGE_TERMINALS_FILE = str(terminals_file)
        env = {**os.environ, **_db_env(), "BRIDGE_TERMINALS_FILE": str(terminals_file)}

        def worker(keys: dict[str, str]):
            proc = start_manage(f"worker-{name}-{len(workers)}", ["run_terminal_worker", name, "--loglevel", "INFO"],
                                {**env, **keys}, tmp_path)
            workers.append(proc)
            proc.wait_log("ready", timeout=60)
            return proc

        workspace = Workspace.objects.create(name="ws-cred-live")
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {create_api_key(workspace)[1]}")
        body = {"accountId": "acc", "server": "Demo", "login": 81001, "password": "Old-Key-Pw1", "terminal": name}

        # 1. The web tier still on K1, the worker already on K2 with K1 as an old key: it logs in (and the
        #    emulator learns the password, so later logins must present the same one).
        _use(settings, K1)
        first = worker({"BRIDGE_CREDENTIALS_KEY": K2, "BRIDGE_CREDENTIALS_OLD_KEYS": K1})
        opened = api.post("/mt5/client/session/open?wait=20", body, format="json")
        assert opened.status_code == 201 and opened.json()["status"] == "active", opened.content
        assert api.delete(f"/mt5/client/session/{opened.json()['sessionId']}").status_code == 200

        # 2. No worker: a session opened under K1 waits, its login queued.
        first.stop()
        waiting = api.post("/mt5/client/session/open", body, format="json")
        assert waiting.status_code == 201 and waiting.json()["status"] == "opening", waiting.content
        sid = waiting.json()["sessionId"]
        assert blob_key_id(BridgeSession.objects.get(id=sid).password_encrypted) == key_id(decode_key(K1))

        # 3. Rotation: K2 current, K1 old; every stored secret moves to K2.
        _use(settings, K2, K1)
        out = StringIO()
        call_command("rotate_credentials_key", stdout=out)
        assert "re-encrypted 1" in out.getvalue() and "failed 0" in out.getvalue(), out.getvalue()
        assert blob_key_id(BridgeSession.objects.get(id=sid).password_encrypted) == key_id(decode_key(K2))

        # 4. A worker that knows only K2 logs the waiting session in with the right password.
        worker({"BRIDGE_CREDENTIALS_KEY": K2, "BRIDGE_CREDENTIALS_OLD_KEYS": ""})
        session = wait_until(lambda: BridgeSession.objects.filter(id=sid).exclude(status="opening").first(), 60,
                        "the login after rotation")
        assert session.status == "active", (session.status, session.error_message, workers[-1].log()[-2000:])
        api.delete(f"/mt5/client/session/{sid}")
    finally:
        for proc in workers:
            proc.stop()
        sim.stop()
