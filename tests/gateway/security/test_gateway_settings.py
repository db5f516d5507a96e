"""Gateway settings: typed, from FACEREC_* variables, placeholders refused in production,
and .env.example documents exactly the variables the class reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import Settings
from tests.support.data import ROOT


def test_env_example_matches_the_settings_class() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^FACEREC_([A-Z_]+)=", text, flags=re.M))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_production_refuses_missing_or_placeholder_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "tests")  # no .env here
    for var in ("FACEREC_MASTER_KEY", "FACEREC_ADMIN_KEY", "FACEREC_ENV"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValidationError, match="MASTER_KEY"):
        Settings()
    monkeypatch.setenv("FACEREC_MASTER_KEY", "change-me")
    with pytest.raises(ValidationError, match="placeholder"):
        Settings()
    monkeypatch.setenv("FACEREC_MASTER_KEY", "ab" * 32)
    settings = Settings()
    assert settings.master_key is not None
    assert "ab" * 32 not in repr(settings)  # secrets never print
    monkeypatch.setenv("FACEREC_ENV", "development")
    monkeypatch.setenv("FACEREC_MASTER_KEY", "change-me")
    assert Settings().env == "development"


def test_defaults_put_both_stores_in_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FACEREC_ENV", "development")
    monkeypatch.setenv("FACEREC_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FACEREC_DATABASE_URL", raising=False)
    monkeypatch.delenv("FACEREC_MILVUS_URI", raising=False)
    s = Settings()
    assert s.sqlite_url == f"sqlite:///{tmp_path / 'facerec.sqlite3'}"
    assert s.index_uri == str(tmp_path / "index.db")
    monkeypatch.setenv("FACEREC_MILVUS_URI", "http://127.0.0.1:19530")
    assert Settings().index_uri == "http://127.0.0.1:19530"
