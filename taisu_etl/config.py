"""Settings: one typed object from embedded defaults, an optional TOML recipe and `TAISU_*` variables.

Precedence, highest first: keyword overrides (CLI flags) > environment (`TAISU_DB_URL`, ...,
nested with `__` as in `TAISU_TEXT__MIN_CHARS=4`) > the recipe file (`--recipe` or `TAISU_RECIPE`)
> embedded defaults. With nothing set, everything lives under `./var`: a SQLite ledger file and a
local directory as the object store, so the quick start needs no servers.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from taisu_etl.errors import ConfigError
from taisu_etl.fetch.settings import FetchSettings
from taisu_etl.images.config import ImageConfig
from taisu_etl.release.card_config import ReleaseCardConfig
from taisu_etl.stages.model_config import CaptionConfig, ScoreConfig
from taisu_etl.text.config import TextFilterConfig


class PipelineConfig(BaseModel):
    """How work is split and leased."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shards: int = Field(16, ge=1, le=1_000_000, description="shards assigned at ingest (hash of the URL)")
    lease_seconds: int = Field(
        120, ge=10,
        description="how long a claim on samples lasts unless renewed; a working stage renews it every third of this",
    )
    claim_wait_seconds: int | None = Field(
        None, ge=0,
        description=(
            "how long a stage waits for samples leased by a live owner before failing; default lease_seconds + 30"
        ),
    )
    db_retry_seconds: int = Field(
        60, ge=0, description="how long a stage keeps reconnecting to a lost ledger before it fails",
    )
    batch_size: int = Field(2000, ge=1, description="samples claimed and written per ledger round trip")

    @model_validator(mode="after")
    def _default_claim_wait(self) -> "PipelineConfig":
        # Long enough for a lease whose owner died without releasing it to run out, and then some.
        if self.claim_wait_seconds is None:
            object.__setattr__(self, "claim_wait_seconds", self.lease_seconds + 30)
        return self


class Settings(BaseSettings):
    """Everything taisu-etl reads from its environment. Secrets are `SecretStr`: never printed."""

    model_config = SettingsConfigDict(
        env_prefix="TAISU_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    home: Path = Field(Path("var"), description="working folder for the embedded defaults")
    db_url: SecretStr | None = Field(None, description="SQLAlchemy URL of the ledger; default sqlite:///<home>/ledger.db")
    store: Literal["local", "s3"] = Field("local", description="object store kind")
    store_root: Path | None = Field(None, description="local object store folder; default <home>/objects")
    s3_endpoint: str | None = Field(None, description="MinIO / S3 endpoint, e.g. http://127.0.0.1:9000")
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_bucket: str = "taisu"
    s3_region: str | None = None
    s3_create_bucket: bool = Field(False, description="create the bucket (versioned) when it is missing")
    recipe_version: str = Field("default", description="recorded on every ledger event")
    pipeline: PipelineConfig = PipelineConfig()
    text: TextFilterConfig = TextFilterConfig()
    fetch: FetchSettings = FetchSettings()
    image: ImageConfig = ImageConfig()
    score: ScoreConfig = ScoreConfig()
    caption: CaptionConfig = CaptionConfig()
    release: ReleaseCardConfig = ReleaseCardConfig()

    @model_validator(mode="after")
    def _s3_needs_endpoint(self) -> "Settings":
        if self.store == "s3" and not self.s3_endpoint:
            raise ValueError("store = 's3' needs s3_endpoint (TAISU_S3_ENDPOINT)")
        return self

    @property
    def ledger_url(self) -> str:
        """The real ledger URL (contains the password, if any: never print it; use `ledger_url_safe`)."""
        if self.db_url is not None:
            return self.db_url.get_secret_value()
        return f"sqlite:///{(self.home / 'ledger.db').resolve()}"

    @property
    def ledger_url_safe(self) -> str:
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.ledger_url).render_as_string(hide_password=True)
        except Exception:  # an unparsable URL must still not leak: show only its scheme
            return self.ledger_url.split(":", 1)[0] + ":***"

    @property
    def objects_root(self) -> Path:
        return self.store_root if self.store_root is not None else self.home / "objects"

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data with every secret masked, for `taisu-etl config show`."""
        data = self.model_dump(mode="json")
        data["db_url"] = self.ledger_url_safe
        data["s3_secret_key"] = "***" if self.s3_secret_key else None
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        recipe = _RECIPE_DATA.get(settings_cls, {})
        return (init_settings, env_settings, InitSettingsSource(settings_cls, recipe))


# The recipe's contents, handed to `settings_customise_sources` (a classmethod, so it cannot take
# arguments); keyed by the per-call subclass so concurrent loads never see each other's recipe.
_RECIPE_DATA: dict[type, dict[str, Any]] = {}


def read_recipe(path: Path) -> dict[str, Any]:
    """Parse a TOML recipe, turning every failure into one ConfigError line naming the file."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"recipe file {path} does not exist: fix --recipe / TAISU_RECIPE") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read recipe file {path}: {exc.strerror}") from None


def _describe_validation(exc: ValidationError, origin: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"bad setting {where} in {origin}: {first['msg']}{more}"


def load_settings(recipe: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings; a bad value anywhere raises ConfigError with one line saying where."""
    recipe_path = Path(recipe) if recipe else (Path(os.environ["TAISU_RECIPE"]) if os.environ.get("TAISU_RECIPE") else None)
    data = read_recipe(recipe_path) if recipe_path else {}
    per_call = type("Settings", (Settings,), {})
    _RECIPE_DATA[per_call] = data
    origin = f"recipe {recipe_path} or TAISU_* environment" if recipe_path else "TAISU_* environment"
    try:
        return per_call(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe_validation(exc, origin)) from None
    finally:
        _RECIPE_DATA.pop(per_call, None)
