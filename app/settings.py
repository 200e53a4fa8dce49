"""One settings object for every process, read from ``LEUKOLAB_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET_KEY = "dev-insecure-secret-key-change-me"
VAR_DIR = Path("var")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEUKOLAB_", env_file=".env", extra="ignore")

    mode: Literal["dev", "production"] = "dev"
    database_url: str = f"sqlite:///{VAR_DIR / 'leukolab.db'}"
    redis_url: str | None = None
    secret_key: str = DEV_SECRET_KEY
    artefact_dir: Path = VAR_DIR / "artefacts"
    broker_dir: Path = Field(default=VAR_DIR / "broker", description="filesystem broker when no Redis")
    cookie_secure: bool = False
    session_max_age_s: int = 12 * 3600
    token_max_age_s: int = 12 * 3600
    lease_seconds: int = 300
    # Below this the model's suggestion is near chance (six classes: 17 %) and is not shown.
    suggestion_min_confidence: float = 0.5
    # How often the labelling page asks again while the queue is empty (it backs off to 6x this).
    empty_queue_poll_s: float = 10.0
    login_max_failures: int = 5
    login_lockout_s: int = 300
    max_upload_bytes: int = 2 * 1024**3
    max_image_pixels: int = 50_000_000

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        if self.mode != "dev" and (self.secret_key == DEV_SECRET_KEY or len(self.secret_key) < 32):
            raise ValueError(
                "LEUKOLAB_SECRET_KEY must be set to a random value of at least 32 characters outside dev mode "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
