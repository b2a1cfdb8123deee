"""The provider registry: every configured provider by id; a duplicate id is refused, never shadowed."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from flenwheel.config import Settings
from flenwheel.errors import FlenwheelError, InvalidInput
from flenwheel.providers.base import ImageProvider


class DuplicateProvider(FlenwheelError):
    pass


class ProviderRegistry:
    def __init__(self, providers: Iterable[ImageProvider] = ()) -> None:
        self._providers: dict[str, ImageProvider] = {}
        for provider in providers:
            self.add(provider)

    def add(self, provider: ImageProvider) -> None:
        if provider.id in self._providers:
            raise DuplicateProvider(
                f"two providers claim the id {provider.id!r}: uninstall or rename one of the plugins"
            )
        self._providers[provider.id] = provider

    def get(self, provider_id: str) -> ImageProvider:
        if provider_id not in self._providers:
            known = ", ".join(self._providers) or "none"
            raise InvalidInput(f"no provider {provider_id!r} is configured (configured: {known})")
        return self._providers[provider_id]

    def all(self) -> list[ImageProvider]:
        return list(self._providers.values())

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        from flenwheel.plugins import plugin_manager
        from flenwheel.providers import builtin

        found: list[ImageProvider] = []
        for batch in plugin_manager(builtin).hook.register_providers(settings=settings):
            found.extend(batch)
        order = [name.strip() for name in settings.providers.split(",") if name.strip()]
        rank = {name: index for index, name in enumerate(order)}
        # The user's order first (FLENWHEEL_PROVIDERS); engines it does not name keep their place after it.
        return cls(sorted(found, key=lambda provider: rank.get(provider.id, len(order))))

    @classmethod
    def shared(cls, settings: Settings) -> ProviderRegistry:
        """The engines for these settings, resolved once per process: an engine keeps its loaded pipelines
        (one per model and device) and its HTTP clients across every request of every run."""
        key = _settings_key(settings)
        with _SHARED_LOCK:
            registry = _SHARED.get(key)
            if registry is None:
                registry = _SHARED[key] = cls.from_settings(settings)
            return registry


_SHARED: dict[str, ProviderRegistry] = {}
_SHARED_LOCK = threading.Lock()


def _settings_key(settings: Settings) -> str:
    """A fingerprint of every setting, secrets included (their masked form would make two keys collide)."""
    import hashlib

    parts = []
    for name, value in settings:
        secret = getattr(value, "get_secret_value", None)
        parts.append((name, repr(secret() if callable(secret) else value)))
    return hashlib.sha256(repr(parts).encode()).hexdigest()
