"""The HTTP API: FastAPI routes over the pipeline and the job table. Import `flenwheel.web.app` for the app."""
