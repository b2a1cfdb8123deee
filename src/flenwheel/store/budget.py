"""A character's budget: money is reserved atomically before each paid submission and settled after.

The reservation is one conditional UPDATE (`spent + amount <= budget`), atomic on SQLite and PostgreSQL alike,
so any number of concurrent requests can never together overspend.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import update

from flenwheel.errors import FlenwheelError
from flenwheel.store.database import Database
from flenwheel.store.models import Character


class BudgetExceeded(FlenwheelError):
    pass


@dataclass(frozen=True)
class Reservation:
    amount: float


class CharacterBudget:
    """Reserve / settle / release against one character's budget."""

    def __init__(self, db: Database, character_id: int, character_name: str) -> None:
        self.db = db
        self.character_id = character_id
        self.character_name = character_name

    def reserve(self, amount: float, what: str) -> Reservation:
        if amount <= 0:
            return Reservation(0.0)
        with self.db.session() as session:
            result = session.execute(
                update(Character)
                .where(
                    Character.id == self.character_id,
                    Character.spent_usd + amount <= Character.budget_usd + 1e-9,
                )
                .values(spent_usd=Character.spent_usd + amount)
            )
            reserved = result.rowcount == 1  # type: ignore[attr-defined]
            if not reserved:
                character = session.get_one(Character, self.character_id)
                left = max(0.0, character.budget_usd - character.spent_usd)
        if not reserved:
            raise BudgetExceeded(
                f"{what} would cost ${amount:.4f} but {self.character_name!r} has ${left:.4f} of its budget left: "
                f"raise it with `flenwheel character budget {self.character_name} AMOUNT` or use a local provider"
            )
        return Reservation(amount)

    def settle(self, reservation: Reservation, actual: float) -> None:
        """Replace the reserved amount by what the engine actually charged."""
        delta = actual - reservation.amount
        if delta == 0:
            return
        with self.db.session() as session:
            session.execute(
                update(Character)
                .where(Character.id == self.character_id)
                .values(spent_usd=Character.spent_usd + delta)
            )

    def release(self, reservation: Reservation) -> None:
        self.settle(reservation, 0.0)
