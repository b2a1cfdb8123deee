"""Settings: where the project lives and the tunable defaults, from env vars (FLENWHEEL_*) or arguments.

Keys, tokens and the database URL (it may hold a password) are `SecretStr`: `repr(settings)`, logs and
`model_dump()` show `**********`; the code that needs the value calls `.get_secret_value()` (see `secret`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from flenwheel.errors import InvalidInput

DATABASE_FILE = "flenwheel.db"
BLOB_DIR = "blobs"


class Settings(BaseSettings):
    """Project settings. `project` is the folder made by `flenwheel init`."""

    model_config = SettingsConfigDict(env_prefix="FLENWHEEL_", extra="forbid", populate_by_name=True)

    project: Path = Field(default_factory=Path.cwd)
    database_url: SecretStr | None = None  # default: SQLite file inside the project; may hold a password
    # Default: a folder inside the project; s3://bucket/prefix shares the blobs between hosts.
    blob_url: str | None = None
    s3_endpoint_url: str | None = None  # S3-compatible endpoint (MinIO, moto); default: AWS_ENDPOINT_URL
    # Identity gate (dlib embedding distance to the nearest agreeing reference): at or below the strict
    # `identity_threshold` a face is the character; up to `identity_review_threshold` it needs review; beyond,
    # another person. Calibrated with bench/calibrate_identity.py (see README "Identity threshold").
    identity_threshold: float = Field(default=0.42, gt=0.0, lt=2.0)
    identity_review_threshold: float = Field(default=0.60, gt=0.0, lt=2.0)
    # Perceptual-hash Hamming distance at or below which two images are near-duplicates.
    near_duplicate_bits: int = Field(default=6, ge=0, le=32)
    # Faces are detected on a copy whose long side is at most this many pixels.
    detect_max_side: int = Field(default=640, ge=160, le=4096)
    workers: int = Field(default=0, ge=0, le=256)  # 0 = one per CPU core
    # Background jobs: "embedded" (in-process workers on the job table) or "procrastinate" (PostgreSQL only).
    jobs: str = Field(default="embedded", pattern="^(embedded|procrastinate)$")
    # A running job whose worker sent no heartbeat for this long is requeued (or marked interrupted).
    job_stale_after_s: float = Field(default=30.0, gt=0.0)
    job_retry_backoff_s: float = Field(default=2.0, ge=0.0)  # first wait before retrying a transient failure
    # The test job kinds `noop` and `sleep` may be submitted (over the API and the CLI): tests and benchmarks only.
    test_kinds: bool = False
    # HTTP API: how many job event streams (SSE) one user may follow at once, per server process.
    event_streams_per_user: int = Field(default=8, ge=1, le=1000)
    upload_max_mb: float = Field(default=25.0, gt=0.0, le=80.0)  # HTTP API: largest image one upload may be
    cache_dir: Path | None = None  # built models (the tiny pipeline); default ~/.cache/flenwheel
    # Engines. Each one is used only when configured; the router tries them in `providers` order.
    providers: str = "local,esrgan,comfyui,fal,replicate"
    comfyui_url: str | None = None  # e.g. http://127.0.0.1:8188
    # The server's models folder as seen from this machine: LoRAs/checkpoints given as paths are linked there.
    comfyui_models_dir: Path | None = None
    comfyui_checkpoint: str | None = None  # checkpoint name on the server for text-to-image and edits
    comfyui_upscale_model: str | None = None  # upscale model name on the server
    # The OpenPose ControlNet for pose control images (a name in the server's models/controlnet, or a file)
    comfyui_controlnet_pose: str | None = None
    # The model family a request without a `model` runs on (families.py: z-image-turbo, flux-dev, …);
    # unset: the sd15 checkpoint path (FLENWHEEL_COMFYUI_CHECKPOINT or the server's first checkpoint).
    comfyui_family: str | None = None
    # The user's own API-format workflows, <dir>/<family>/<kind>.json (default: <project>/workflows).
    comfyui_workflows_dir: Path | None = None
    fal_key: SecretStr | None = Field(default=None, validation_alias="FAL_KEY")
    fal_queue_url: str = "https://queue.fal.run"
    fal_rest_url: str = "https://rest.fal.ai"
    replicate_api_token: SecretStr | None = Field(default=None, validation_alias="REPLICATE_API_TOKEN")
    replicate_base_url: str = "https://api.replicate.com/v1"
    # A remote generation (fal, Replicate) still running after this many seconds is cancelled on the service.
    remote_timeout_s: float = Field(default=1800.0, gt=0.0, le=86400.0)
    # One billed per GPU-second (the upscalers) is cancelled after this many seconds instead, and its cost
    # estimate is rate × this: the worst case, reserved before it runs, so billed ≤ estimate.
    remote_max_billed_seconds: float = Field(default=120.0, gt=0.0, le=86400.0)
    prices: Path | None = None  # YAML overriding the built-in price table (providers/pricing.py)
    # Requests in flight per engine, e.g. "fal=8,comfyui=2" (default: 1 for `local`, 4 for the others).
    provider_concurrency: str = ""
    # Trainers. Each one is offered only when configured.
    ai_toolkit_path: Path | None = None  # a clone of ostris/ai-toolkit (the folder holding run.py)
    ai_toolkit_python: Path | None = None  # its python; default <ai_toolkit_path>/venv/bin/python, else ours
    kohya_path: Path | None = None  # a clone of kohya-ss/sd-scripts (train_network.py and friends)
    kohya_python: Path | None = None  # its python; default <kohya_path>/venv/bin/python, else ours
    # Flux with sd-scripts also needs these three files: ae.safetensors, clip_l.safetensors, t5xxl_fp16.safetensors.
    kohya_flux_models_dir: Path | None = None
    # Replicate trainer as owner/name:version (a pinned version of ostris/flux-dev-lora-trainer by default).
    replicate_trainer: str = (
        "ostris/flux-dev-lora-trainer:e440909d3512c31646ee2e0c7d6f6f4923224863a6a10c494606e79fb5844497"
    )
    replicate_destination: str | None = None  # "owner/model" on Replicate that receives the trained LoRA

    def resolved_database_url(self) -> str:
        if url := secret(self.database_url):
            return url
        return f"sqlite:///{(self.project / DATABASE_FILE).resolve()}"

    def resolved_blob_dir(self) -> Path:
        if self.blob_url:
            return Path(self.blob_url)
        return (self.project / BLOB_DIR).resolve()


def secret(value: SecretStr | None) -> str:
    """The plain text of a secret setting, stripped; "" when it is unset or blank."""
    return value.get_secret_value().strip() if value is not None else ""


def masked_url(url: str) -> str:
    """A database URL fit to print: its password replaced by `***` (postgresql://u:***@host/db)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # not a URL, or a port that is not a number
        return "***" if "@" in url else url


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus explicit values; a bad value is a clear error, not a traceback."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"FLENWHEEL_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']} (got {error.get('input')!r})"
            for error in exc.errors()
        )
        raise InvalidInput(f"invalid setting — {problems}") from None
