"""The trainer registry: every configured trainer by id; a duplicate id is refused, never shadowed."""

from __future__ import annotations

from collections.abc import Iterable

from flenwheel.config import Settings
from flenwheel.errors import FlenwheelError, InvalidInput
from flenwheel.trainers.base import Trainer


class DuplicateTrainer(FlenwheelError):
    pass


class TrainerRegistry:
    def __init__(self, trainers: Iterable[Trainer] = ()) -> None:
        self._trainers: dict[str, Trainer] = {}
        for trainer in trainers:
            self.add(trainer)

    def add(self, trainer: Trainer) -> None:
        if trainer.id in self._trainers:
            raise DuplicateTrainer(
                f"two trainers claim the id {trainer.id!r}: uninstall or rename one of the plugins"
            )
        self._trainers[trainer.id] = trainer

    def get(self, trainer_id: str) -> Trainer:
        if trainer_id not in self._trainers:
            known = ", ".join(self._trainers) or "none"
            raise InvalidInput(
                f"no trainer {trainer_id!r} is configured (configured: {known}); see `flenwheel train --help`"
            )
        return self._trainers[trainer_id]

    def all(self) -> list[Trainer]:
        return list(self._trainers.values())

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainerRegistry:
        from flenwheel.plugins import plugin_manager
        from flenwheel.trainers import builtin

        found: list[Trainer] = []
        for batch in plugin_manager(builtin).hook.register_trainers(settings=settings):
            found.extend(batch)
        return cls(found)
