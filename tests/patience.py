"""How long a test waits before it calls something hung.

No wall-clock limit decides whether a test passes (DESIGN.md §8): tests wait on the real condition — a process
exits, a job reaches a final status, a server answers. `HANG_S` exists only so that a run that hangs does
not block CI forever; it lies far above any honest run on a loaded 2-core machine, and what hits it says
what was still unfinished.
"""

from __future__ import annotations

from typing import Protocol

from flenwheel.jobs.store import JobInfo

HANG_S = 1800.0  # 30 minutes: a hang, never slowness


class _Waits(Protocol):
    def wait(self, job_id: int, timeout: float = ...) -> JobInfo: ...


def finished(jobs: _Waits, job_id: int) -> JobInfo:
    """The job once it has reached a final status (a backend's or a store's `wait`), however long that takes;
    fails clearly if it is still unfinished after HANG_S."""
    info = jobs.wait(job_id, timeout=HANG_S)
    assert info.status.finished, (
        f"job {job_id} is still {info.status.value} after {HANG_S:.0f} s: it hangs "
        f"(the limit only stops a hung run from blocking forever): {info}"
    )
    return info
