"""One-time login codes in SQL (the playground's login link, fluxrun/logincode.py).

The store keeps only each code's hash. Redeeming is one conditional UPDATE (unused and not
expired), so of two API processes redeeming one code at once, exactly one succeeds, on
SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy import Connection, delete, insert, or_, select, update

from fluxrun.store.base import LoginRedemption
from fluxrun.store.schema import login_codes


class LoginQueries:
    """The login codes' side of the TaskStore, mixed into SqlTaskStore."""

    _write: Callable[[], AbstractContextManager[Connection]]

    def add_login_code(self, project_id: int, code_hash: str, now: float, expires_at: float) -> None:
        with self._write() as conn:
            # Codes are issued a few times a day at most: forgetting the dead ones here is enough.
            conn.execute(delete(login_codes).where(or_(login_codes.c.expires_at < now, login_codes.c.used_at.is_not(None))))
            conn.execute(insert(login_codes).values(code_hash=code_hash, project_id=project_id, created_at=now,
                                                    expires_at=expires_at, used_at=None))

    def redeem_login_code(self, code_hash: str, now: float) -> LoginRedemption:
        usable = (login_codes.c.code_hash == code_hash, login_codes.c.used_at.is_(None), login_codes.c.expires_at >= now)
        with self._write() as conn:
            taken = conn.execute(update(login_codes).where(*usable).values(used_at=now)).rowcount == 1
            row = conn.execute(select(login_codes).where(login_codes.c.code_hash == code_hash)).first()
        if row is None:
            return LoginRedemption(None, "unknown")
        if taken:
            return LoginRedemption(row.project_id, None)
        return LoginRedemption(None, "used" if row.used_at is not None else "expired")
