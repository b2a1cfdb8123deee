"""The budget cap holds under concurrency, on SQLite and on PostgreSQL, through the run context's calls."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from flenwheel.characters import create_character
from flenwheel.errors import FlenwheelError
from flenwheel.store.models import Character, RunCall
from flenwheel.store.project import Project
from flenwheel.store.run import BudgetExceeded, RunContext


def _run(project: Project, dollars: float) -> RunContext:
    create_character(project, "lisa", "ohwx", "woman", budget_usd=dollars)
    with project.db.session() as session:
        character_id = session.scalar(select(Character.id).where(Character.name == "lisa"))
    return RunContext(project.db, character_id=character_id)


def _spent(project: Project) -> float:
    with project.db.session() as session:
        return session.scalar(select(Character.spent_usd).where(Character.name == "lisa"))


def test_concurrent_reservations_never_overspend(any_project: Project) -> None:
    run = _run(any_project, 2.00)

    def attempt(n: int) -> bool:
        try:
            run.call("fal", f"image-{n}", estimate=0.30, paid=True)
            return True
        except BudgetExceeded:
            return False

    with ThreadPoolExecutor(max_workers=12) as pool:
        granted = sum(pool.map(attempt, range(24)))
    assert granted == 6  # 6 × 0.30 = 1.80 ≤ 2.00 < 7 × 0.30
    assert _spent(any_project) == pytest.approx(1.80)
    with any_project.db.session() as session:
        assert len(session.scalars(select(RunCall)).all()) == 6  # a refused call leaves no row


def test_settle_and_release_correct_the_reservation(any_project: Project) -> None:
    run = _run(any_project, 1.00)
    call = run.call("fal", "an estimate", estimate=0.50, paid=True)
    call.settle(0.20)  # the engine charged less than estimated
    assert _spent(any_project) == pytest.approx(0.20)
    run.call("fal", "a job that failed", estimate=0.70, paid=True).release()
    assert _spent(any_project) == pytest.approx(0.20)
    with pytest.raises(BudgetExceeded, match=r"\$0\.8000 of its budget left"):
        run.call("fal", "too much", estimate=0.81, paid=True)


def test_an_accepted_call_keeps_its_reservation_and_a_retry_does_not_reserve_again(
    any_project: Project,
) -> None:
    run = _run(any_project, 1.00)
    call = run.call("fal", "req", estimate=0.40, paid=True)
    call.remember_remote_id("fal-123")  # the engine accepted: it may bill
    call.release()  # the engine then failed while waiting
    assert call.may_still_bill()
    assert _spent(any_project) == pytest.approx(0.40)  # kept, not handed back
    again = run.call("fal", "req", estimate=0.40, paid=True)  # the retry of the same request
    assert again.known_remote_id() == "fal-123"  # resumes the same remote job
    assert _spent(any_project) == pytest.approx(0.40)  # nothing reserved twice
    again.settle(0.25)
    assert _spent(any_project) == pytest.approx(0.25)
    assert not again.may_still_bill()


def test_a_settle_above_the_reservation_never_passes_the_cap(any_project: Project) -> None:
    run = _run(any_project, 1.00)
    run.call("fal", "other", estimate=0.70, paid=True)
    call = run.call("replicate", "wrong price", estimate=0.20, paid=True)
    charged = call.settle(0.90)  # billed far above the worst case its price table gave
    assert _spent(any_project) == pytest.approx(1.00)  # the cap holds
    assert charged == pytest.approx(0.30)
    with any_project.db.session() as session:
        row = session.scalar(select(RunCall).where(RunCall.key == "replicate:wrong price"))
        assert row.billed_usd == pytest.approx(0.90)  # the true bill is on record
        assert "overrun" in (row.error or "")


def test_a_paid_engine_may_not_estimate_zero(any_project: Project) -> None:
    run = _run(any_project, 1.00)
    with pytest.raises(FlenwheelError, match="reserves nothing"):
        run.call("fal", "upscale", estimate=0.0, paid=True, what="fal upscale")
    assert _spent(any_project) == 0.0
