"""Settings for every visionq process: one class per service, env prefix ``VISIONQ_``.

Nothing else in the code base reads ``os.environ`` for visionq settings; processes call
``get_api_settings()`` / ``get_worker_settings()`` once and pass the object down.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.imaging.formats import KNOWN_FORMATS, available_formats
from services.common.errors import ConfigError

_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# An origin is scheme://host[:port]: no path, no wildcard, nothing a browser would not send.
_ORIGIN = re.compile(r"^https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")
_HEX_COLOR = re.compile(r"^#?([0-9a-fA-F]{6})$")
_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "HEIC": "HEIF"}
_BIND = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")

_S = TypeVar("_S", bound=BaseSettings)

CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class CommonSettings(BaseSettings):
    """Settings shared by the API and the workers."""

    model_config = SettingsConfigDict(env_prefix="VISIONQ_", extra="ignore", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    models: CommaList = Field(default_factory=lambda: ["mobilenet_v3_small"])
    default_model: str = ""
    models_file: Path | None = None
    weights_dir: Path | None = None
    allow_random_weights: bool = False
    allow_download: bool = Field(True, description="fetch missing torchvision weights")
    result_ttl_s: int = Field(3600, gt=0, description="how long finished jobs stay readable")
    job_ttl_s: int = Field(86400, gt=0, description="how long a queued job may wait")
    visibility_timeout_s: int = Field(300, gt=0)
    max_deliveries: int = Field(3, ge=1, le=100)
    queue_max_depth: int = Field(10000, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0)
    redis_timeout_s: float = Field(2.0, gt=0, le=60)
    redis_policy_check: bool = Field(
        True,
        description="refuse to start on a Redis whose maxmemory-policy evicts keys; turn off "
        "only for a managed Redis that hides CONFIG and is known to run noeviction",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line, with job and batch ids"
    )
    accepted_formats: CommaList = Field(
        default_factory=lambda: list(available_formats()),
        description="image formats accepted (sniffed); default: every one this install reads",
    )

    @field_validator("accepted_formats", mode="before")
    @classmethod
    def _formats_list(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("accepted_formats")
    @classmethod
    def _formats_known(cls, value: list[str]) -> list[str]:
        names = [_FORMAT_ALIASES.get(v.upper(), v.upper()) for v in value]
        if not names:
            raise ValueError(f"name at least one of {','.join(available_formats())}")
        for name in names:
            if name not in KNOWN_FORMATS:
                raise ValueError(f"{name!r} is not one of {','.join(KNOWN_FORMATS)}")
            if name not in available_formats():
                hint = "pip install 'visionq[heif]'" if name == "HEIF" else "a Pillow with it"
                raise ValueError(f"{name} cannot be read by this install; it needs {hint}")
        return list(dict.fromkeys(names))

    @field_validator("models", mode="before")
    @classmethod
    def _models_list(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("models")
    @classmethod
    def _models_names(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one model, e.g. VISIONQ_MODELS=mobilenet_v3_small")
        for name in value:
            if not _MODEL_NAME.match(name):
                raise ValueError(f"{name!r} is not a model name (lowercase letters, digits, _.-)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("models_file", "weights_dir")
    @classmethod
    def _path_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"{value} does not exist")
        return value

    @model_validator(mode="after")
    def _default_in_models(self) -> CommonSettings:
        if not self.default_model:
            object.__setattr__(self, "default_model", self.models[0])
        elif self.default_model not in self.models:
            raise ValueError(
                f"VISIONQ_DEFAULT_MODEL={self.default_model!r} is not in VISIONQ_MODELS "
                f"({','.join(self.models)})"
            )
        return self


class ApiSettings(CommonSettings):
    """Settings of the HTTP API process."""

    max_upload_bytes: int = Field(50 * 1024 * 1024, gt=0, description="whole request body")
    max_files_per_request: int = Field(64, gt=0, le=10000)
    api_keys: CommaList = Field(default_factory=list)
    api_keys_file: Path | None = Field(None, description="lines of sha256 hex digests of keys")
    rate_limit_per_minute: int = Field(0, ge=0, le=1_000_000, description="per key; 0 = off")
    cors_origins: CommaList = Field(default_factory=list, description="explicit origins only")
    metrics_bind: str = Field("", description="host:port of a separate /metrics server")
    predict_timeout_s: float = Field(30.0, gt=0, description="default wait of /v1/predict")
    max_timeout_s: float = Field(300.0, gt=0)
    retry_after_s: int = Field(2, ge=1)
    # uvicorn's timeout_graceful_shutdown: on SIGTERM the server stops accepting at once, then
    # lets requests in progress (a /v1/predict waiting for its result) finish for this long.
    graceful_shutdown_timeout_s: int = Field(
        30, ge=0, le=3600, description="how long requests in progress may run after SIGTERM"
    )
    # uvicorn's forwarded_allow_ips: peers whose X-Forwarded-For / X-Forwarded-Proto are
    # believed (the rate limit and logs then see the real client). "*" trusts everyone.
    forwarded_allow_ips: CommaList = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="proxy addresses or networks (CIDR) trusted for X-Forwarded-For",
    )
    queue_max_bytes: int | None = Field(
        None,
        ge=0,
        description="Redis used_memory (bytes) past which submits get 429 queue_full; "
        "unset: 80% of Redis's maxmemory when it has one; 0: no byte limit",
    )
    run_token: str = Field(
        "", max_length=64, description="set by visionq up; /healthz echoes it (process identity)"
    )

    # sha256 digests of every accepted key; plaintext keys are hashed once, at start-up.
    _key_digests: tuple[bytes, ...] = PrivateAttr(default=())

    @field_validator("api_keys", "cors_origins", "forwarded_allow_ips", mode="before")
    @classmethod
    def _keys_list(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("api_keys")
    @classmethod
    def _keys_strong(cls, value: list[str]) -> list[str]:
        for key in value:
            if len(key) < 16:
                raise ValueError("every API key needs at least 16 characters")
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _keys_file_valid(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_key_digests(value)  # refuse a bad file at start-up, not at the first request
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins_explicit(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an explicit origin such as https://app.example.com "
                    "(no wildcard, no path)"
                )
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies_parse(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network, e.g. 10.0.0.0/8 or *"
                ) from None
        return value

    @field_validator("metrics_bind")
    @classmethod
    def _bind_form(cls, value: str) -> str:
        value = value.strip()
        found = _BIND.match(value)
        if value and (found is None or not 1 <= int(found.group(2)) <= 65535):
            raise ValueError(f"{value!r} is not host:port, e.g. 127.0.0.1:9200")
        return value

    @model_validator(mode="after")
    def _collect_digests(self) -> ApiSettings:
        digests = [hashlib.sha256(key.encode()).digest() for key in self.api_keys]
        if self.api_keys_file is not None:
            digests += read_key_digests(self.api_keys_file)
        self._key_digests = tuple(digests)
        return self

    @property
    def key_digests(self) -> tuple[bytes, ...]:
        """sha256 digests of the accepted API keys; empty means /v1 is open."""
        return self._key_digests

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) of the separate /metrics server, or None to serve it on the API."""
        if not self.metrics_bind:
            return None
        host, _, port = self.metrics_bind.rpartition(":")
        return host.strip("[]"), int(port)


def read_key_digests(path: Path) -> list[bytes]:
    """Digests in a keys file: the first word of each line (sha256sum output); # comments."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    digests = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        text = words[0].lower()
        if not _SHA256_HEX.match(text):
            # Never echo the line: it may be a plaintext key written by mistake.
            raise ValueError(
                f"{path} line {number} is not a sha256 hex digest (64 hex digits); "
                "write sha256(key), e.g. printf %s KEY | sha256sum"
            )
        digests.append(bytes.fromhex(text))
    if not digests:
        raise ValueError(f"{path} holds no key digest; an empty file would leave /v1 open")
    return digests


# A worker asked to stop exits within VISIONQ_BATCH_TIME_LIMIT_S + this, whatever happens:
# the batch in its forward pass, its hurried store, then Celery's own close.
WORKER_EXIT_MARGIN_S = 10.0


class WorkerSettings(CommonSettings):
    """Settings of one GPU (or CPU) worker process."""

    device: str = "auto"
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)
    metrics_port: int = Field(18100, ge=0, le=65535)
    metrics_host: str = Field("0.0.0.0", description="bind address of the worker's /metrics")
    worker_index: int = Field(0, ge=0, le=1000)
    torch_threads: int = Field(0, ge=0, le=256, description="0 picks from the core count")
    decode_threads: int = Field(0, ge=0, le=64, description="0 picks from the core count")
    autocast_dtype: Literal["float16", "bfloat16"] = "float16"
    channels_last: bool = Field(True, description="NHWC layout for the model and its batches")
    fold_batchnorm: bool = Field(
        True,
        description="CPU: fold each BatchNorm into the convolution before it (torch.fx); "
        "exact up to float rounding",
    )
    compile: bool = Field(False, description="torch.compile the model (CUDA; slow first batch)")
    batch_buckets: bool = Field(
        False, description="pad batches to 1,2,4..max so shapes repeat (compile/CUDA graphs)"
    )
    gpu_decode: bool = Field(False, description="decode JPEGs on the GPU (nvJPEG)")
    fast_decode: bool = Field(
        False,
        description="JPEGs decoded at 1/2-1/8 scale (libjpeg DCT scaling, both sides kept >= "
        "the model's input) and only the crop resampled; inexact, see README",
    )
    alpha_background: str = Field(
        "#ffffff", description="colour transparent images are flattened onto (#rrggbb)"
    )
    fault_injection: bool = Field(False, description="tests only: marked images misbehave")
    batch_time_limit_s: float = Field(
        60.0, gt=0, le=3600, description="a forward pass longer than this kills the worker"
    )
    unacked_restore_interval_s: float = Field(2.0, gt=0, le=600)
    heartbeat_interval_s: float = Field(2.0, gt=0, le=60)
    # Off by default: measured on the 2-core CPU box, events cost 8-18 % more stack CPU
    # per image (README, Flower). Turn on where Flower watches (the compose file does).
    celery_events: bool = Field(
        False,
        description="send Celery worker heartbeats and task events (what Flower shows)",
    )

    @field_validator("alpha_background")
    @classmethod
    def _color_form(cls, value: str) -> str:
        if not _HEX_COLOR.match(value.strip()):
            raise ValueError(f"{value!r} is not a colour such as #ffffff")
        return value.strip()

    @property
    def exit_bound_s(self) -> float:
        """Seconds within which this worker exits once asked to stop (SIGTERM): its batch
        time limit plus ``WORKER_EXIT_MARGIN_S``. Whoever stops it must wait that long."""
        return self.batch_time_limit_s + WORKER_EXIT_MARGIN_S

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        """``alpha_background`` as (r, g, b), 0-255."""
        found = _HEX_COLOR.match(self.alpha_background)
        assert found is not None  # checked by the validator
        rgb = bytes.fromhex(found.group(1))
        return rgb[0], rgb[1], rgb[2]

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @property
    def longest_hold_s(self) -> float:
        """The longest a fetched message can wait unacked: gathering while two batches run
        (one in the forward pass, one decoded behind it), then its own batch."""
        return self.max_wait_ms / 1000 + 3 * self.batch_time_limit_s

    @model_validator(mode="after")
    def _visibility_covers_batch(self) -> WorkerSettings:
        # kombu starts a message's visibility clock when it is fetched; if the clock ran out
        # while the job still waited or ran here, another worker would run it a second time.
        if self.visibility_timeout_s <= self.longest_hold_s:
            raise ValueError(
                f"VISIONQ_VISIBILITY_TIMEOUT_S={self.visibility_timeout_s} must exceed the "
                f"longest time a job can be held, {self.longest_hold_s:g} s "
                "(VISIONQ_MAX_WAIT_MS + 3 x VISIONQ_BATCH_TIME_LIMIT_S); raise it or lower those"
            )
        return self


def _load(cls: type[_S]) -> _S:
    try:
        return cls()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]).upper() if err["loc"] else "(settings)"
            name = f"VISIONQ_{field}" if err["loc"] else field
            lines.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from exc


@lru_cache
def get_api_settings() -> ApiSettings:
    """The API's settings, read from the environment once."""
    return _load(ApiSettings)


@lru_cache
def get_worker_settings() -> WorkerSettings:
    """The worker's settings, read from the environment once."""
    return _load(WorkerSettings)
