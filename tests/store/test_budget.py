"""The budget cap holds under concurrency, on SQLite and on PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from flenwheel.characters import create_character
from flenwheel.store.budget import BudgetExceeded, CharacterBudget
from flenwheel.store.models import Character
from flenwheel.store.project import Project


def _budget(project: Project, dollars: float) -> CharacterBudget:
    create_character(project, "lisa", "ohwx", "woman", budget_usd=dollars)
    with project.db.session() as session:
        character_id = session.scalar(select(Character.id).where(Character.name == "lisa"))
    return CharacterBudget(project.db, character_id, "lisa")


def _spent(project: Project) -> float:
    with project.db.session() as session:
        return session.scalar(select(Character.spent_usd).where(Character.name == "lisa"))


def test_concurrent_reservations_never_overspend(any_project: Project) -> None:
    budget = _budget(any_project, 2.00)

    def attempt(_: int) -> bool:
        try:
            budget.reserve(0.30, "a test image")
            return True
        except BudgetExceeded:
            return False

    with ThreadPoolExecutor(max_workers=12) as pool:
        granted = sum(pool.map(attempt, range(24)))
    assert granted == 6  # 6 × 0.30 = 1.80 ≤ 2.00 < 7 × 0.30
    assert _spent(any_project) == pytest.approx(1.80)


def test_settle_and_release_correct_the_reservation(any_project: Project) -> None:
    budget = _budget(any_project, 1.00)
    reservation = budget.reserve(0.50, "an estimate")
    budget.settle(reservation, 0.20)  # the engine charged less than estimated
    assert _spent(any_project) == pytest.approx(0.20)
    budget.release(budget.reserve(0.70, "a job that failed"))
    assert _spent(any_project) == pytest.approx(0.20)
    with pytest.raises(BudgetExceeded, match=r"\$0\.8000 of its budget left"):
        budget.reserve(0.81, "too much")
