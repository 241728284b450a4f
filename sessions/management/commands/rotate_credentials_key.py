"""Re-encrypt every stored MT5 password under the current credentials key.

Rotation: make a new key (``python -c "from sessions.crypto import generate_key; print(generate_key())"``),
set it as ``BRIDGE_CREDENTIALS_KEY`` and move the previous one into ``BRIDGE_CREDENTIALS_OLD_KEYS``
everywhere (web, workers), restart, run this command, then drop the old key once it reports
``failed 0`` and ``remaining 0``. Safe to run while the bridge serves: each row is written with a
conditional update (only if its ciphertext is still the one read), so a session ending meanwhile
(its secret wiped) is left alone and counted as ``changed``.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from sessions.crypto import CredentialError, keyring, needs_reencryption, reencrypt_secret
from sessions.models import BridgeSession
from sessions.services import session_reencrypt_password


class Command(BaseCommand):
    help = "Re-encrypt every stored secret (session MT5 passwords) under the current BRIDGE_CREDENTIALS_KEY."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500, help="rows read per query (default 500)")
        parser.add_argument("--dry-run", action="store_true", help="count what would be re-encrypted; write nothing")

    def handle(self, *args, batch_size: int, dry_run: bool, **options) -> None:  # ANN003
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        ring = keyring()
        rows = BridgeSession.objects.exclude(password_encrypted=b"")
        total = rows.count()
        self.stdout.write(f"current key id {ring.current_id.hex()}, {len(ring.old)} old key(s); "
                          f"{total} stored secret(s) to check{' (dry run)' if dry_run else ''}")
        counts = {"checked": 0, "reencrypted": 0, "current": 0, "changed": 0, "failed": 0}
        last_pk = ""
        while True:
            batch = list(rows.filter(pk__gt=last_pk).order_by("pk").values_list("pk", "password_encrypted")[:batch_size])
            if not batch:
                break
            for pk, blob in batch:
                blob = bytes(blob)
                counts["checked"] += 1
                if not needs_reencryption(blob):
                    counts["current"] += 1
                    continue
                try:
                    fresh = reencrypt_secret(blob, pk)
                except CredentialError as exc:
                    counts["failed"] += 1
                    self.stderr.write(f"session {pk}: cannot decrypt ({exc})")
                    continue
                if dry_run:
                    counts["reencrypted"] += 1
                    continue
                updated = session_reencrypt_password(session_id=pk, current=blob, fresh=fresh)
                counts["reencrypted" if updated else "changed"] += 1
            last_pk = batch[-1][0]
            self.stdout.write(
                f"progress {counts['checked']}/{total}: re-encrypted {counts['reencrypted']}, already current "
                f"{counts['current']}, changed meanwhile {counts['changed']}, failed {counts['failed']}")
        remaining = sum(1 for blob in rows.values_list("password_encrypted", flat=True) if needs_reencryption(blob))
        self.stdout.write(
            f"done: checked {counts['checked']}, re-encrypted {counts['reencrypted']}, already current "
            f"{counts['current']}, changed meanwhile {counts['changed']}, failed {counts['failed']}, "
            f"remaining under other keys {remaining}{' (dry run: nothing written)' if dry_run else ''}")
        if counts["failed"]:
            raise CommandError(f"{counts['failed']} secret(s) could not be decrypted with the configured keys "
                               "(see above); keep their key in BRIDGE_CREDENTIALS_OLD_KEYS or end those sessions")
