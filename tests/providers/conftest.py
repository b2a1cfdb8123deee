"""Fixtures shared by the provider tests. The ComfyUI server's live in comfyui_server.py and are declared in
tests/conftest.py, so every test folder shares one server."""
