"""Plugin hooks (pluggy). Built-in providers register through the same hook as third-party packages,
which add theirs with an entry point in the `flenwheel` group."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from flenwheel.config import Settings

hookspec = pluggy.HookspecMarker("flenwheel")
hookimpl = pluggy.HookimplMarker("flenwheel")


class FlenwheelSpecs:
    @hookspec
    def register_providers(self, settings: Settings) -> list[Any]:
        """Return the ImageProviders this plugin offers under these settings (unconfigured ones left out)."""
        raise NotImplementedError

    @hookspec
    def register_trainers(self, settings: Settings) -> list[Any]:
        """Return the Trainers this plugin offers under these settings (unconfigured ones left out)."""
        raise NotImplementedError


def plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    manager = pluggy.PluginManager("flenwheel")
    manager.add_hookspecs(FlenwheelSpecs)
    from flenwheel.providers import builtin
    from flenwheel.trainers import builtin as builtin_trainers

    manager.register(builtin, name="flenwheel.builtin")
    manager.register(builtin_trainers, name="flenwheel.builtin_trainers")
    if load_entry_points:
        manager.load_setuptools_entrypoints("flenwheel")
    return manager
