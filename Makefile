# The two commands of the README. Both set everything up on a fresh machine first.
.PHONY: setup demo test lint bench

setup:
	@bash scripts/setup

demo: setup
	.venv/bin/flenwheel demo

test: setup lint
	.venv/bin/pytest -q

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

bench: setup
	.venv/bin/python bench/curate_vs_face_recognition.py
