"""The built-in providers, registered through the same plugin hook a third-party package would use."""

from __future__ import annotations

import importlib
from typing import Any

from flenwheel.config import Settings
from flenwheel.plugins import hookimpl

# module, class: each class has `from_settings(settings) -> provider | None` (None = not configured here).
BUILT_IN = [
    ("flenwheel.providers.diffusers_local", "LocalDiffusersProvider"),
    ("flenwheel.providers.upscale_esrgan", "EsrganUpscaler"),
    ("flenwheel.providers.comfyui", "ComfyUIProvider"),
    ("flenwheel.providers.fal", "FalProvider"),
    ("flenwheel.providers.replicate", "ReplicateProvider"),
]


@hookimpl
def register_providers(settings: Settings) -> list[Any]:
    providers = []
    for module_name, class_name in BUILT_IN:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # not part of this build
            raise
        provider = getattr(module, class_name).from_settings(settings)
        if provider is not None:
            providers.append(provider)
    return providers
