# The two commands of the README. Both set everything up on a fresh machine first.
.PHONY: setup comfyui-env demo test lint bench

setup:
	@bash scripts/setup

# A real ComfyUI server's own environment (cached outside the clone), for the ComfyUI tests and bench/fanout.
comfyui-env:
	@bash scripts/setup-comfyui >/dev/null

demo: setup
	.venv/bin/flenwheel demo

# Every test, the slow tier too, on PYTEST_WORKERS xdist workers; each test file stays on one worker and the
# ComfyUI tests share one (tests/conftest.py). For a quick local run: .venv/bin/pytest -m "not slow".
PYTEST_WORKERS ?= 2
test: setup comfyui-env lint
	.venv/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports

bench: setup comfyui-env
	.venv/bin/python bench/curate_vs_face_recognition.py
	.venv/bin/python bench/fanout.py
