"""The pose a prompt asks for, and whether a measured pose is it (pose drift, beside identity drift)."""

from __future__ import annotations

from typing import Literal

from flenwheel.domain import Arms, BodyPose, Facing, Frozen, Posture

NOT_MEASURABLE = "not measurable"
PoseStatus = Literal["passed", "drifted", "not measurable"]


class PoseCheck(Frozen):
    """`not measurable` when no person was found or the asked-for part of the pose could not be read: never
    counted as passed."""

    status: PoseStatus
    reason: str
    measured: tuple[str, ...] = ()  # the measured pose tags


class PoseTarget(Frozen):
    """What a prompt asks of the body; an empty field asks nothing. `facing` lists the accepted facings."""

    posture: Posture | None = None
    arms: Arms | None = None
    facing: tuple[Facing, ...] = ()

    @property
    def description(self) -> str:
        parts = [value.value for value in (self.posture, self.arms) if value is not None]
        if self.facing:
            parts.append("facing " + " or ".join(f.value for f in self.facing))
        return ", ".join(parts) or "any pose"

    def check(self, body: BodyPose | None) -> PoseCheck:
        """Compare a measured pose (None: nobody found) with this target."""
        if body is None:
            return PoseCheck(status=NOT_MEASURABLE, reason="pose not measurable: no person found")
        measured = tuple(body.tags)
        unread: list[str] = []
        wrong: list[str] = []
        for name, asked, got in (("posture", self.posture, body.posture), ("arms", self.arms, body.arms)):
            if asked is None:
                continue
            if got is None:
                unread.append(name)
            elif got != asked:
                wrong.append(f"asked for {asked.value}, measured {got.value}")
        if self.facing:
            if body.facing is None:
                unread.append("facing")
            elif body.facing not in self.facing:
                wrong.append(
                    f"asked for facing {' or '.join(f.value for f in self.facing)}, measured {body.facing.value}"
                )
        if wrong:
            return PoseCheck(status="drifted", reason="pose drifted: " + "; ".join(wrong), measured=measured)
        if unread:
            return PoseCheck(
                status=NOT_MEASURABLE,
                reason=f"pose not measurable: the {', '.join(unread)} could not be read (joints hidden)",
                measured=measured,
            )
        return PoseCheck(status="passed", reason=f"pose as asked ({self.description})", measured=measured)
