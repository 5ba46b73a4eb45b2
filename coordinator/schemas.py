"""JSON request and response bodies of the HTTP API (pydantic; also the OpenAPI schema).

Requests forbid unknown fields and do not coerce types, so a client bug is an error, not a
silent guess.
"""

import base64
import binascii
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from coordinator import devices
from coordinator.errors import Invalid

__all__ = [
    "Strict",
    "EnrolRequest",
    "EnrolResponse",
    "CheckinRequest",
    "ReadyRequest",
    "ModeRequest",
    "Download",
    "Training",
    "CheckinResponse",
    "PredictRequest",
    "PredictResponse",
    "ErrorResponse",
    "VersionSummary",
    "StatsResponse",
    "HealthResponse",
]

SHA256_PATTERN = r"^[0-9a-f]{64}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EnrolRequest(Strict):
    device_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="chosen by the device")
    public_key: str = Field(max_length=64, description="Ed25519 public key, 32 bytes, base64")
    mode: Literal["on_device", "cloud"] = "on_device"

    @field_validator("public_key")
    @classmethod
    def _decode(cls, v: str) -> str:
        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError("public key is not valid base64") from e
        try:
            devices.check_public_key(raw)
        except Invalid as e:
            raise ValueError(str(e)) from e
        return v

    def key_bytes(self) -> bytes:
        return base64.b64decode(self.public_key, validate=True)


class EnrolResponse(BaseModel):
    device_id: str
    token: str = Field(description="bearer token; shown once, only its hash is stored")
    mode: str


class ModeRequest(Strict):
    mode: Literal["on_device", "cloud"]


class CheckinRequest(Strict):
    version: int | None = Field(default=None, description="global version the device runs")
    base_sha256: str | None = Field(
        default=None, pattern=SHA256_PATTERN, description="hash of the LiteRT file it holds"
    )


class ReadyRequest(Strict):
    version: int = Field(description="the global version the device trained its update from")


class Download(BaseModel):
    sha256: str
    size: int
    url: str
    download: bool = Field(description="false when the device already holds these bytes")


class Training(BaseModel):
    eligible: bool
    learning_rate: float
    steps: int


class CheckinResponse(BaseModel):
    version: int
    parent: int | None
    base: Download
    device_part: Download
    training: Training


class PredictRequest(Strict):
    text: str = Field(description="typed context (cloud mode only; never stored)")


class PredictResponse(BaseModel):
    version: int
    suggestions: list[str]


class ErrorResponse(BaseModel):
    error: str
    detail: str


class VersionSummary(BaseModel):
    id: int
    parent: int | None
    created_at: str
    base_sha256: str
    base_size: int
    device_part_size: int
    metrics: dict


class StatsResponse(BaseModel):
    devices: dict[str, int]
    current_version: int | None
    versions: list[VersionSummary]
    raw_text: dict[str, int]
    traffic: dict[str, dict[str, int]]


class HealthResponse(BaseModel):
    status: str
    database: str
    current_version: int | None
