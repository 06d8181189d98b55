"""The ``batch:`` and ``pacs:`` sections of ``configs/pipeline.yaml`` (pydantic, values only).

Command-line flags override these values; a missing section means the defaults below.
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator


class BatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workers: int = Field(1, ge=0, description="process-pool size; 0 runs studies in the coordinator process")
    scheduler: Optional[str] = Field(None, description="'local' (Dask LocalCluster) or tcp://HOST:PORT; overrides workers")
    study_timeout_s: Optional[float] = Field(None, gt=0, description="per-study time limit (process pools)")
    discovery_timeout_s: float = Field(300.0, gt=0, description="time limit for finding the studies in one named input folder")
    model: Optional[str] = Field(None, description="segmentation model; default: segment.model")
    snapshot: bool = Field(False, description="render a snapshot per study (slower)")
    progress: str = Field("auto", pattern="^(auto|rich|plain|none)$")


class PacsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field("SURGITWIN", max_length=16)
    port: int = Field(11112, ge=1, le=65535)
    bind: str = Field("127.0.0.1", description="address the C-STORE SCP listens on (loopback unless told otherwise)")
    allowed_calling_aets: list[str] = Field(default_factory=list,
                                            description="calling AE titles accepted; empty list = refuse everyone")
    series_idle_s: float = Field(10.0, gt=0, description="a series is complete after this long without a new instance")
    workers: int = Field(1, ge=0, description="processes that run completed series")
    max_associations: int = Field(16, ge=1)
    max_associations_per_peer: int = Field(8, ge=1, description="associations one host may hold at once")
    acse_timeout_s: float = Field(5.0, gt=0, description="a connection must complete association negotiation within this")
    idle_timeout_s: float = Field(30.0, gt=0, description="an association silent for this long is dropped")
    tls_cert: Optional[str] = Field(None, description="listener: PEM certificate (chain); with tls_key, DICOM over TLS only")
    tls_key: Optional[str] = Field(None, description="listener: PEM private key of tls_cert")
    tls_ca: Optional[str] = Field(None, description="listener: PEM CA bundle; senders must present a certificate it signed")
    dicomweb_url: Optional[str] = Field(None, description="default DICOMweb root for pull/push")
    dicomweb_timeout_s: float = Field(60.0, gt=0)
    dicomweb_user: Optional[str] = Field(None, description="HTTP basic user (the password only from a file or the environment)")
    dicomweb_password_file: Optional[str] = Field(None, description="file holding the HTTP basic password")
    dicomweb_token_file: Optional[str] = Field(None, description="file holding a bearer token")
    dicomweb_cert: Optional[str] = Field(None, description="client certificate (PEM)")
    dicomweb_key: Optional[str] = Field(None, description="private key of dicomweb_cert (PEM)")
    dicomweb_ca: Optional[str] = Field(None, description="CA bundle to verify the DICOMweb server with")

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        v = v.strip()
        if not v or "\\" in v or any(ord(c) < 32 for c in v):
            raise ValueError("AE title must be 1-16 printable characters without backslash")
        return v
