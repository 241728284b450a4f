"""Tasks: the idempotency ledger. One row per accepted write, keyed by (workspace, request id)."""

from __future__ import annotations

import secrets

from django.db import models


def new_task_id() -> str:
    return f"tsk_{secrets.token_hex(12)}"


class TaskKind(models.TextChoices):
    ORDER_CREATE = "order.create"
    ORDER_MODIFY = "order.modify"
    ORDER_CANCEL = "order.cancel"
    POSITION_CLOSE = "position.close"
    POSITION_MODIFY = "position.modify"


class TaskState(models.TextChoices):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    PLACED = "placed"
    FILLED = "filled"
    PARTIAL = "partial"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    FAILED = "failed"
    UNKNOWN = "unknown"


FINAL_STATES = (
    TaskState.PLACED,
    TaskState.FILLED,
    TaskState.PARTIAL,
    TaskState.REJECTED,
    TaskState.CANCELLED,
    TaskState.FAILED,
)


class TradeTask(models.Model):
    """One write (place, modify, cancel, close, SL/TP) and its outcome at the terminal.

    ``unique(workspace, request_id)`` makes a request id map to at most one task; ``fingerprint``
    (SHA-256 of the canonical validated payload + kind) tells a replay from a conflicting reuse.
    ``tag`` goes into the MT5 order comment so the task's order can be found at the terminal.
    """

    id = models.CharField(primary_key=True, max_length=32, default=new_task_id, editable=False)
    workspace = models.ForeignKey("bridge_sessions.Workspace", on_delete=models.CASCADE, related_name="tasks")
    session = models.ForeignKey("bridge_sessions.BridgeSession", on_delete=models.CASCADE, related_name="tasks")
    terminal = models.ForeignKey("terminals.Terminal", on_delete=models.PROTECT, related_name="tasks")
    request_id = models.CharField(max_length=128)
    fingerprint = models.CharField(max_length=64)
    kind = models.CharField(max_length=20, choices=TaskKind.choices)
    state = models.CharField(max_length=12, choices=TaskState.choices, default=TaskState.QUEUED)
    request = models.JSONField(help_text="the validated client payload")
    mt5_request = models.JSONField(null=True, blank=True, help_text="the order_send request as sent")
    result = models.JSONField(null=True, blank=True, help_text="retcode, retcodeText, order, deal, volume, price, ...")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children",
        help_text="the order.create task a modify/cancel acts on",
    )
    tag = models.CharField(max_length=29, blank=True, default="", help_text="comment tag at the terminal")
    order_ticket = models.BigIntegerField(null=True, blank=True)
    deal_ticket = models.BigIntegerField(null=True, blank=True)
    position_ticket = models.BigIntegerField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(default=202, help_text="HTTP status of the accepting response")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    published_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(
        null=True, blank=True, help_text="committed just before order_send: the request may have reached the terminal"
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "trading_task"
        constraints = [
            models.UniqueConstraint(fields=["workspace", "request_id"], name="task_unique_request_id"),
            models.UniqueConstraint(fields=["tag"], condition=~models.Q(tag=""), name="task_unique_tag"),
        ]
        indexes = [
            models.Index(fields=["session", "-created_at"], name="task_session_created"),
            models.Index(fields=["state", "created_at"], name="task_state_created"),
            models.Index(fields=["terminal", "state"], name="task_terminal_state"),
            models.Index(fields=["order_ticket"], name="task_order_ticket"),
            models.Index(fields=["position_ticket"], name="task_position_ticket"),
            models.Index(fields=["tag"], name="task_tag"),
            # Ops (admin list, search, /metrics): newest-first paging, search by request id or deal,
            # filters by kind/terminal in created order, incremental latency folding by finish time.
            models.Index(fields=["created_at", "id"], name="task_created"),
            models.Index(fields=["request_id"], name="task_request_id"),
            models.Index(fields=["deal_ticket"], name="task_deal_ticket"),
            models.Index(fields=["kind", "created_at"], name="task_kind_created"),
            models.Index(fields=["terminal", "created_at"], name="task_terminal_created"),
            models.Index(fields=["finished_at"], name="task_finished"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.kind} {self.state}"

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


class TaskTransitionQuerySet(models.QuerySet):
    def state_changes(self) -> models.QuerySet:
        """Only the changes of state (not the changes of fields, whose from and to states are equal)."""
        return self.exclude(from_state=models.F("to_state"))


class TaskTransition(models.Model):
    """Every change of a task, with its time (audit trail and latency figures): a change of state,
    or of fields only (``from_state == to_state``, ``detail["change"]`` says which: sent, attempt,
    edited, published, ...). Written by ``trading.states`` only."""

    objects = TaskTransitionQuerySet.as_manager()

    task = models.ForeignKey(TradeTask, on_delete=models.CASCADE, related_name="transitions")
    from_state = models.CharField(max_length=12, blank=True, default="")
    to_state = models.CharField(max_length=12)
    at = models.DateTimeField(auto_now_add=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["task", "at"], name="transition_task_at")]


class RequestReceipt(models.Model):
    """The idempotency record of a write that changed a task in place instead of creating one.

    ``PATCH``/``DELETE /orders/{taskId}`` on a still-queued task edits or cancels that task: there is
    no new task row to hold the request id, so this row does (same uniqueness as ``TradeTask``; the
    ledger checks both tables).
    """

    workspace = models.ForeignKey("bridge_sessions.Workspace", on_delete=models.CASCADE, related_name="receipts")
    request_id = models.CharField(max_length=128)
    fingerprint = models.CharField(max_length=64)
    task = models.ForeignKey(TradeTask, on_delete=models.CASCADE, related_name="receipts")
    status_code = models.PositiveSmallIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "request_id"], name="receipt_unique_request_id"),
        ]


class CallReceipt(models.Model):
    """The idempotency record of a call that makes several tasks at once (``POST /positions/close``), or
    none: its request id, the fingerprint of its body and the ids of the tasks it made, in order. A replay
    answers those tasks without reading the terminal again (their positions may be closed by then).
    Purged with the last of its tasks (``trading.retention``)."""

    workspace = models.ForeignKey("bridge_sessions.Workspace", on_delete=models.CASCADE, related_name="call_receipts")
    request_id = models.CharField(max_length=128)
    fingerprint = models.CharField(max_length=64)
    task_ids = models.JSONField(default=list, blank=True)
    status_code = models.PositiveSmallIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "request_id"], name="call_receipt_unique_request_id"),
        ]


class UnownedOrder(models.Model):
    """An order or deal at a terminal carrying a bridge tag that no task owns (found by reconciliation).

    Should never happen; when it does, ops must see it (admin) rather than the bridge ignoring it.
    """

    terminal = models.ForeignKey("terminals.Terminal", on_delete=models.CASCADE, related_name="unowned_orders")
    source = models.CharField(max_length=16, help_text="orders, positions, history_orders or history_deals")
    ticket = models.BigIntegerField()
    tag = models.CharField(max_length=29)
    comment = models.CharField(max_length=64, blank=True, default="")
    symbol = models.CharField(max_length=64, blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["terminal", "source", "ticket"], name="unowned_unique_ticket"),
        ]
