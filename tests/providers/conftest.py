"""Fixtures shared by the provider tests. The ComfyUI server's live in comfyui_server.py."""

from comfyui_server import comfyui_server, tiny_sd15

__all__ = ["comfyui_server", "tiny_sd15"]
