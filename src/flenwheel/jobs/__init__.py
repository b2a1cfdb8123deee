"""Background jobs: a JobBackend contract (base.py), the embedded SQLite backend and the Procrastinate one."""
