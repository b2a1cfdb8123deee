"""A character's budget is kept by the run context (store/run.py): every paid call reserves its worst case in
one guarded UPDATE (`spent + amount <= budget`), atomic on SQLite and PostgreSQL alike, so concurrent requests
can never together overspend. This module keeps the error's historical import path."""

from flenwheel.store.run import BudgetExceeded

__all__ = ["BudgetExceeded"]
