"""The session's terminal is ``terminals.Terminal`` now (same table): state only."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("bridge_sessions", "0002_session_transitions"),
        ("terminals", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="bridgesession",
                    name="terminal",
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="sessions",
                                            to="terminals.terminal"),
                ),
            ],
            database_operations=[],
        ),
    ]
