"""Terminal now belongs to the terminals app (same table): the workers app forgets it, state only."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("workers", "0002_terminal_lease_and_binding"),
        ("bridge_sessions", "0003_terminal_in_terminals_app"),
        ("trading", "0004_tradetask_and_terminals_app"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="Terminal")],
            database_operations=[],
        ),
    ]
