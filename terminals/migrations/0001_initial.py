"""The Terminal model moves from the workers app to terminals: state only, the table stays ``workers_terminal``."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("workers", "0002_terminal_lease_and_binding"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Terminal",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                                   verbose_name="ID")),
                        ("name", models.CharField(max_length=63, unique=True)),
                        ("backend", models.CharField(choices=[("sim", "mt5sim"), ("mt5", "MetaTrader5")],
                                                     max_length=8)),
                        ("address", models.CharField(
                            help_text="sim: host:port of the emulator; mt5: terminal path", max_length=500)),
                        ("utc_offset", models.IntegerField(default=0,
                                                           help_text="broker server time minus UTC, seconds")),
                        ("enabled", models.BooleanField(
                            default=True, help_text="false once the terminal left the config file")),
                        ("worker_heartbeat_at", models.DateTimeField(blank=True, null=True)),
                        ("worker_hostname", models.CharField(blank=True, default="", max_length=255)),
                        ("lease_token", models.BigIntegerField(default=0)),
                        ("lease_holder", models.CharField(blank=True, default="", max_length=255)),
                        ("lease_expires_at", models.DateTimeField(blank=True, null=True)),
                        ("bound_session_id", models.CharField(blank=True, default="", max_length=40)),
                        ("bound_login", models.BigIntegerField(blank=True, null=True)),
                        ("bound_server", models.CharField(blank=True, default="", max_length=200)),
                        ("bound_at", models.DateTimeField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                    ],
                    options={"db_table": "workers_terminal", "ordering": ["name"]},
                ),
            ],
            database_operations=[],
        ),
    ]
