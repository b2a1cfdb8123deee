"""Plugin hooks (pluggy). Built-in providers register through the same hook as third-party packages,
which add theirs with an entry point in the `flenwheel` group."""

from __future__ import annotations

from types import ModuleType
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


def plugin_manager(*builtins: ModuleType, load_entry_points: bool = True) -> pluggy.PluginManager:
    """flenwheel's hooks with `builtins` (the caller's own hook modules, e.g. providers/builtin.py) registered
    the way a plugin is, then the installed plugins. The registries pass their built-ins, so this module
    imports none of them (they import `hookimpl` from here)."""
    manager = pluggy.PluginManager("flenwheel")
    manager.add_hookspecs(FlenwheelSpecs)
    for module in builtins:
        manager.register(module, name=module.__name__)
    if load_entry_points:
        manager.load_setuptools_entrypoints("flenwheel")
    return manager
