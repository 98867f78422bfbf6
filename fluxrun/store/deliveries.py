"""Callback deliveries in SQL: owed in the transaction that ends a task, claimed one try at
a time (FOR UPDATE SKIP LOCKED on PostgreSQL; BEGIN IMMEDIATE on SQLite, as for tasks), and
every result fenced by the try's attempt number, like a task's lease."""

from __future__ import annotations

import base64
import secrets
import string
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, Float, Integer, String, and_, insert, literal, or_, select, update
from sqlalchemy.engine import Row

from fluxrun.store.base import Delivery, DeliveryState
from fluxrun.store.schema import deliveries, tasks

_ID_ALPHABET = string.ascii_letters + string.digits


def new_webhook_secret() -> str:
    """The Standard Webhooks secret format: "whsec_" + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def new_webhook_id() -> str:
    return "msg_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(27))


def queue_callback(conn: Connection, task_id: int, now: float) -> None:
    """In the transaction that ends a task: owe its callback, if it has a URL."""
    owed = select(
        literal(new_webhook_id(), String),
        tasks.c.id,
        tasks.c.project_id,
        tasks.c.callback_url,
        literal("pending", String),
        literal(0, Integer),
        literal(now, Float),
        literal("", String),
        literal(now, Float),
    ).where(tasks.c.id == task_id, tasks.c.callback_url != "")
    columns = ["webhook_id", "task_id", "project_id", "url", "state", "attempts", "next_attempt_at", "last_error",
               "created_at"]
    conn.execute(insert(deliveries).from_select(columns, owed))


class DeliveryQueries:
    """The deliverer's side of the TaskStore, mixed into SqlTaskStore."""

    _read: Callable[[], AbstractContextManager[Connection]]
    _write: Callable[[], AbstractContextManager[Connection]]

    def claim_deliveries(self, deliverer_id: str, claim_seconds: float, now: float, limit: int = 1) -> list[Delivery]:
        due = and_(
            deliveries.c.state == "pending",
            deliveries.c.next_attempt_at <= now,
            or_(deliveries.c.claimed_until.is_(None), deliveries.c.claimed_until < now),
        )
        query = (
            select(deliveries.c.id)
            .where(due)
            .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self._write() as conn:
            ids = list(conn.execute(query).scalars())
            if not ids:
                return []
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(ids), due)
                .values(
                    attempts=deliveries.c.attempts + 1,
                    claimed_by=deliverer_id,
                    claimed_until=now + claim_seconds,
                    last_attempt_at=now,
                )
            )
            rows = conn.execute(
                select(deliveries).where(deliveries.c.id.in_(ids), deliveries.c.claimed_by == deliverer_id)
            ).all()
        return sorted((_delivery(r) for r in rows), key=lambda d: (d.next_attempt_at, d.id))

    def retry_delivery(self, delivery: Delivery, next_attempt_at: float, status: int | None, error: str) -> bool:
        values = {"next_attempt_at": next_attempt_at, "last_status": status, "last_error": error}
        return self._fenced_delivery_update(delivery, values)

    def end_delivery(
        self, delivery: Delivery, state: DeliveryState, now: float, status: int | None = None, error: str = ""
    ) -> bool:
        values: dict[str, Any] = {"state": state, "last_status": status, "last_error": error}
        if state == "delivered":
            values["delivered_at"] = now
        return self._fenced_delivery_update(delivery, values)

    def list_deliveries(self, task_id: int) -> list[Delivery]:
        with self._read() as conn:
            rows = conn.execute(select(deliveries).where(deliveries.c.task_id == task_id).order_by(deliveries.c.id))
            return [_delivery(r) for r in rows]

    def _fenced_delivery_update(self, delivery: Delivery, values: dict[str, Any]) -> bool:
        """Write a try's result only while that try still holds the delivery."""
        held = and_(
            deliveries.c.id == delivery.id,
            deliveries.c.attempts == delivery.attempt,
            deliveries.c.state == "pending",
            deliveries.c.claimed_by == delivery.claimed_by,
        )
        with self._write() as conn:
            result = conn.execute(update(deliveries).where(held).values(claimed_until=None, **values))
        return result.rowcount == 1


def _delivery(row: Row[Any]) -> Delivery:
    data = dict(row._mapping)
    data["attempt"] = data.pop("attempts")
    return Delivery(**data)
