"""The Celery app: one queue per terminal, consumed only by that terminal's pinned worker.

Redelivery on the Redis transport, and why each setting is what it is:

* ``task_acks_late``: a task message is acknowledged only after the task returns, so a worker that
  dies mid-task (SIGKILL, VM reset) leaves the message unacked and it is delivered again. Exactly
  once is then the task's job: the claim (``queued -> dispatched``) and the lookup-by-tag before
  ``order_send`` make a redelivery harmless.
* ``task_reject_on_worker_lost``: with acks_late, a task whose *pool child* was lost is requeued
  instead of being acked as failed. Pinned workers run ``-P solo`` (no child): when the worker
  process itself is SIGKILLed nothing is acked at all, the message stays in kombu's ``unacked``
  hash and is restored after ``visibility_timeout``. Recovery does not wait for that: a pinned
  worker's start-up reconciliation (``workers.tasks``) settles its terminal's orphaned
  ``dispatched`` tasks before it takes new messages, and the late redelivery then finds a final
  task and does nothing. The setting stays for prefork workers (maintenance).
* ``task_acks_on_failure_or_timeout`` (Celery's default, True, kept): a task that raised is acked,
  not redelivered in a loop; the ledger row (``dispatched``/``unknown``) is what reconciliation
  settles.
* ``worker_prefetch_multiplier = 1``: a pinned worker reserves one message at a time, so nothing
  sits reserved (and invisible to the sweeper and to ops) behind a slow order.
* ``visibility_timeout``: Redis redelivers an unacked message only after this long. It must exceed
  the longest task (an order with retries is seconds) and it bounds how late a crashed worker's
  message comes back; the outbox sweeper re-publishes anything still ``queued`` well before that,
  so 300 s keeps recovery reasonable without redelivering slow-but-alive tasks.
* ``task_ignore_result``: task outcomes live in the database (the ledger), not in a result backend.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bridge_project.settings")

app = Celery("bridge")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue="bridge.maintenance",
    broker_transport_options={"visibility_timeout": int(os.environ.get("BRIDGE_VISIBILITY_TIMEOUT", "300"))},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    timezone="UTC",
)
app.autodiscover_tasks(["workers"])  # workers/tasks.py holds every task


def terminal_queue(terminal_name: str) -> str:
    """The order/login queue of one terminal: only its pinned worker consumes it."""
    return f"terminal.{terminal_name}"
