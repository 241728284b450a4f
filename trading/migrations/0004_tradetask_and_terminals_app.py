"""``Task`` is ``TradeTask`` (the ledger row, not a Celery task) and terminals live in the terminals
app; the tables keep their names (``trading_task``, ``workers_terminal``), so nothing moves on disk."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("trading", "0003_ops_indexes"),
        ("terminals", "0001_initial"),
    ]

    operations = [
        migrations.AlterModelTable(name="task", table="trading_task"),
        migrations.RenameModel(old_name="Task", new_name="TradeTask"),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="tradetask",
                    name="terminal",
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="tasks",
                                            to="terminals.terminal"),
                ),
                migrations.AlterField(
                    model_name="unownedorder",
                    name="terminal",
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                            related_name="unowned_orders", to="terminals.terminal"),
                ),
            ],
            database_operations=[],
        ),
    ]
