"""Settings keep secrets secret: keys, tokens and database passwords never show in a repr, a dump or a log."""

from __future__ import annotations

from pathlib import Path

import pytest

from flenwheel.config import Settings, masked_url, secret

DB_PASSWORD = "pg-s3cret-pw"
URL = f"postgresql+psycopg://flenwheel:{DB_PASSWORD}@db.example:5432/flenwheel"


def test_repr_and_dump_show_no_key_token_or_database_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAL_KEY", "fal-key-123:abcdef")
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_token_456")
    monkeypatch.setenv("FLENWHEEL_DATABASE_URL", URL)
    settings = Settings(project=tmp_path)

    shown = [repr(settings), str(settings), str(settings.model_dump()), settings.model_dump_json()]
    for text in shown:
        for leaked in ("fal-key-123", "abcdef", "r8_token_456", DB_PASSWORD):
            assert leaked not in text
    # The code that needs them still gets them.
    assert secret(settings.fal_key) == "fal-key-123:abcdef"
    assert secret(settings.replicate_api_token) == "r8_token_456"
    assert settings.resolved_database_url() == URL


def test_a_database_url_is_printed_with_its_password_masked() -> None:
    assert masked_url(URL) == "postgresql+psycopg://flenwheel:***@db.example:5432/flenwheel"
    assert masked_url("sqlite:////tmp/p/flenwheel.db") == "sqlite:////tmp/p/flenwheel.db"


def test_a_blank_key_counts_as_unset(tmp_path: Path) -> None:
    assert secret(Settings(project=tmp_path, fal_key="  ").fal_key) == ""  # type: ignore[arg-type]
    assert secret(Settings(project=tmp_path).replicate_api_token) == ""


def test_a_malformed_database_url_is_reported_without_its_password() -> None:
    from flenwheel.errors import InvalidInput
    from flenwheel.store.database import make_engine

    for url in (
        f"postgresql://u:{DB_PASSWORD}@db.example:notaport/flenwheel",
        f"postgres ql://u:{DB_PASSWORD}@h/db",
    ):
        with pytest.raises(InvalidInput, match="FLENWHEEL_DATABASE_URL") as caught:
            make_engine(url)
        assert DB_PASSWORD not in str(caught.value)
