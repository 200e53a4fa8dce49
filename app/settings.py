"""One settings object for every process, read from ``LEUKOLAB_*`` environment variables."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The key every dev install once shared. It is public: no mode may sign anything with it.
DEV_SECRET_KEY = "dev-insecure-secret-key-change-me"
SECRET_KEY_FILE = "secret_key"
VAR_DIR = Path("var")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEUKOLAB_", env_file=".env", extra="ignore")

    mode: Literal["dev", "production"] = "dev"
    database_url: str = f"sqlite:///{VAR_DIR / 'leukolab.db'}"
    redis_url: str | None = None
    # Unset in dev mode: a random key is generated once into <artefact_dir>/secret_key (see signing_key()).
    secret_key: str | None = None
    artefact_dir: Path = VAR_DIR / "artefacts"
    broker_dir: Path = Field(default=VAR_DIR / "broker", description="filesystem broker when no Redis")
    cookie_secure: bool = False
    session_max_age_s: int = 12 * 3600
    token_max_age_s: int = 12 * 3600
    lease_seconds: int = 300
    # `leukolab bench labelling` only: serve /bench/floor, the same stack answering after one SQL round trip.
    bench_floor: bool = False
    # Below this the model's suggestion is near chance (six classes: 17 %) and is not shown.
    suggestion_min_confidence: float = 0.5
    # A reference model (trained on another lab's cells) scores with BatchNorm statistics re-estimated on
    # this lab's unlabelled cells (docs/results/transfer.md).
    reference_adapt_batchnorm: bool = True
    # ... and at the input zoom it is surest of on those cells (another microscope draws cells larger or
    # smaller; ml.adapt.adapt_to_lab). Needs reference_adapt_batchnorm. Off: with the zoom-augmented reference
    # it moved zheng-dev accuracy by +3.8/+3.9 (CellaVision blog) and 0/-15.2 points (Tecom), seeds 0/1.
    reference_adapt_zoom: bool = False
    # ... then its BatchNorm scales and shifts trained on those cells without labels, each cell's prediction made
    # surer and their spread over the classes kept (ml.adapt.adapt_information). Needs reference_adapt_batchnorm.
    # zheng-dev at N = 0, two reference seeds: +3.8/+3.8 points (CellaVision blog), +14.6/+9.3 (Tecom).
    reference_adapt_im: bool = True
    # How often the labelling page asks again while the queue is empty (it backs off to 6x this).
    empty_queue_poll_s: float = 10.0
    login_max_failures: int = 5  # failed logins for one user name before its lock (clients that fail only)
    login_client_max_failures: int = 10  # failed logins from one client address, any names, before its lock
    login_backoff_s: int = 30  # the first lock; each further failure doubles it
    login_lockout_s: int = 300  # the longest lock
    login_window_s: int = 3600  # failures older than this are forgotten
    max_upload_bytes: int = 2 * 1024**3
    max_request_bytes: int = Field(default=1024**2, description="body limit of every request but an upload")
    max_image_pixels: int = 50_000_000
    # One import decodes at most this many pixels in all (10,000 cells of 575×575 px is 3.3 G).
    max_import_pixels: int = 4_000_000_000
    # ...and at most this many per byte of what was uploaded or read, plus a small allowance:
    # stained cells take about 1 byte per pixel as PNG and 0.1 as JPEG; a decompression bomb
    # (a blank 49-megapixel PNG is 47 kB, and a zip shrinks it to 400 bytes) takes far fewer.
    max_import_pixels_per_byte: int = 200
    min_image_side: int = Field(default=8, description="images smaller than this (px) cannot hold a cell")

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        if self.secret_key == DEV_SECRET_KEY or (
            self.mode != "dev" and (self.secret_key is None or len(self.secret_key) < 32)
        ):
            raise ValueError(
                "LEUKOLAB_SECRET_KEY must be a random value of at least 32 characters outside dev mode, and never "
                "the public dev constant (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`; "
                "in dev mode leave it unset to use a generated key)"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()


def signing_key(settings: Settings | None = None) -> str:
    """The key that signs sessions and tokens: the configured one, else the dev key file (created once)."""
    settings = settings or get_settings()
    if settings.secret_key is not None:
        return settings.secret_key
    return _dev_key_file(settings.artefact_dir.resolve())


@lru_cache
def _dev_key_file(artefact_dir: Path) -> str:
    """Read ``artefact_dir/secret_key``, creating it first (0600, race-safe between processes) if missing."""
    path = artefact_dir / SECRET_KEY_FILE
    if not path.exists():
        artefact_dir.mkdir(parents=True, exist_ok=True)
        # Write a private temporary file, then link it into place: the link fails if another process won,
        # and a reader never sees a half-written key.
        temporary = artefact_dir / f".{SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(48))
                file.flush()
                os.fsync(file.fileno())
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise RuntimeError(f"{path} is readable by others (mode {mode:o}): run `chmod 600 {path}`")
    key = path.read_text().strip()
    if len(key) < 32 or key == DEV_SECRET_KEY:
        raise RuntimeError(f"{path} holds no usable key: delete it to generate a new one (everybody is logged out)")
    return key
