"""CallReceipt: the idempotency record of a call that makes several tasks (POST /positions/close)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("bridge_sessions", "0003_terminal_in_terminals_app"),
        ("trading", "0004_tradetask_and_terminals_app"),
    ]

    operations = [
        migrations.CreateModel(
            name="CallReceipt",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("request_id", models.CharField(max_length=128)),
                ("fingerprint", models.CharField(max_length=64)),
                ("task_ids", models.JSONField(blank=True, default=list)),
                ("status_code", models.PositiveSmallIntegerField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("workspace", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                                related_name="call_receipts", to="bridge_sessions.workspace")),
            ],
            options={
                "constraints": [models.UniqueConstraint(fields=("workspace", "request_id"),
                                                        name="call_receipt_unique_request_id")],
            },
        ),
    ]
