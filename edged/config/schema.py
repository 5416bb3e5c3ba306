"""The daemon's configuration schema: one YAML file, every key validated, unknown keys rejected.

Defaults are chosen so that ``edged demo`` and a first ``edged run`` need no file at all; a
hospital deployment sets ``node_id``, the DICOM network and the MQTT broker.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, PrivateAttr, field_validator, model_validator

from edged.backends.tensorrt.config import TensorRTConfig
from edged.models.manifest import BatchingSpec
from edged.power.config import PowerConfig, TelemetryConfig
from edged.sources.camera.config import CameraConfig, CaptureConfig

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _default_node_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return (host or "edged")[:64].strip("-_") or "edged"


def default_model_repository() -> Path:
    """The repo's ``engines/`` in a checkout, else the installed location."""
    here = Path(__file__).resolve().parents[2] / "engines"
    return here if here.is_dir() else Path("/opt/edged/engines")


def _ae(v: str) -> str:
    if not 0 < len(v.strip()) <= 16 or not v.isascii() or "\\" in v or not v.isprintable():
        raise ValueError("an AE title is 1-16 printable ASCII characters without backslash")
    return v.strip()


class RemoteAE(Strict):
    """A DICOM peer edged opens associations to."""

    ae_title: str
    host: str = Field(pattern=r"^[A-Za-z0-9.:_-]{1,253}$")
    port: int = Field(ge=1, le=65535)

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        return _ae(v)


class DicomClientTls(Strict):
    """TLS for associations edged opens (the SR destination): the PACS's CA, optionally our own
    certificate and key when the PACS requires client certificates."""

    ca_file: FilePath
    cert_file: FilePath | None = None
    key_file: FilePath | None = None

    @model_validator(mode="after")
    def _loads(self) -> "DicomClientTls":
        import ssl

        from edged.sr.tls import client_context

        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        try:
            client_context(self.ca_file, self.cert_file, self.key_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ValueError(f"ca_file/cert_file/key_file do not load as PEM CA, certificate and matching key: "
                             f"{getattr(exc, 'reason', None) or exc}") from None
        return self


class SrDestination(RemoteAE):
    """Where DICOM SR results go (models with ``sr: true``): normally the PACS the images came from."""

    tls: DicomClientTls | None = None
    timeout_s: float = Field(default=30, gt=0, le=600, description="association and response timeouts")
    retry_backoff_s: float = Field(default=10, gt=0, description="first retry delay; doubles up to max_backoff_s")
    max_backoff_s: float = Field(default=600, gt=0)
    give_up_after_h: float = Field(default=72, gt=0, description="an SR not delivered by then is an error event")


class StorageCommitmentConfig(Strict):
    """Storage Commitment Push Model SCP (N-ACTION, then N-EVENT-REPORT)."""

    enabled: bool = True
    peers: list[RemoteAE] = Field(default_factory=list, description="where reports go when the requesting "
                                  "association is closed, by the requester's AE title")

    @field_validator("peers")
    @classmethod
    def _unique(cls, v: list[RemoteAE]) -> list[RemoteAE]:
        titles = [p.ae_title for p in v]
        dupes = sorted({t for t in titles if titles.count(t) > 1})
        if dupes:
            raise ValueError(f"AE title listed twice: {', '.join(dupes)}")
        return v


class DicomTls(Strict):
    """DICOM TLS (PS3.15 B.12 BCP 195 profile: TLS 1.2/1.3, AEAD ciphers): the whole port speaks TLS."""

    cert_file: FilePath
    key_file: FilePath
    ca_file: FilePath | None = Field(default=None, description="CA that signs client certificates")
    require_client_cert: bool = False
    handshake_timeout_s: float = Field(default=10, gt=0, le=300)

    @model_validator(mode="after")
    def _loads(self) -> "DicomTls":
        # Fail at `edged check`, with file and line, not when the first modality connects.
        import ssl

        from edged.sources.dicom.tls import server_context

        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file (the CA that signs the client certificates)")
        try:
            server_context(self.cert_file, self.key_file, self.ca_file, self.require_client_cert)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ValueError(f"cert_file/key_file/ca_file do not load as PEM certificate, matching key and CA: "
                             f"{getattr(exc, 'reason', None) or exc}") from None
        return self


class DicomConfig(Strict):
    enabled: bool = True
    ae_title: str = "EDGED"
    bind: str = "0.0.0.0"
    port: int = Field(default=11112, ge=0, le=65535)
    allowed_calling_aes: list[str] = Field(default_factory=list, description="empty: any calling AE")
    allowed_hosts: list[str] = Field(default_factory=list, description="IPs or CIDR networks; empty: any")
    require_called_ae: bool = True
    max_associations: int = Field(default=10, ge=1, le=200)
    max_associations_per_host: int | None = Field(default=None, ge=1, le=200,
                                                  description="default: min(5, max_associations)")
    max_pdu_size: int = Field(default=262144, ge=4096, le=16 << 20,
                              description="our maximum receive PDU length; larger PDUs are refused unread")
    max_associate_rq_bytes: int = Field(default=65536, ge=1024, le=1 << 20)
    min_transfer_bytes_per_s: float = Field(default=4096, ge=0)
    transfer_window_s: float = Field(default=10, gt=0, le=3600)
    max_inflated_mb: float = Field(default=256, gt=0, description="deflated datasets may inflate to this")
    tls: DicomTls | None = None
    spool_quota_mb: float = Field(default=2048, gt=0)
    max_image_pixels: int = Field(default=64_000_000, gt=0)
    acse_timeout_s: float = Field(default=30, gt=0)
    dimse_timeout_s: float = Field(default=30, gt=0)
    network_timeout_s: float = Field(default=90, gt=0, description="idle associations are closed after this; "
                                     "must exceed every sender's close delay (edged.sources.dicom.idle)")
    accept_undecodable: bool = Field(default=True, description="accept transfer syntaxes this device cannot "
                                     "decode (acknowledged, then an error event no_decoder) instead of refusing "
                                     "them so that a transcoding router converts them")
    storage_commitment: StorageCommitmentConfig = StorageCommitmentConfig()
    sr_destination: SrDestination | None = None
    quarantine_mb: float = Field(default=512, ge=0, description="images that can never be inferred are kept this long")
    quarantine_days: float = Field(default=30, ge=0)

    @field_validator("max_pdu_size", mode="before")
    @classmethod
    def _bounded_pdu(cls, v: object) -> object:
        if v == 0:
            raise ValueError("0 (unlimited) is no longer accepted: a peer could make edged read a PDU of any "
                             "size into memory; 262144 is the default, 16777216 the most")
        return v

    @model_validator(mode="after")
    def _per_host(self) -> "DicomConfig":
        if self.max_associations_per_host is None:
            self.max_associations_per_host = min(5, self.max_associations)
        elif self.max_associations_per_host > self.max_associations:
            raise ValueError(f"max_associations_per_host ({self.max_associations_per_host}) is more than "
                             f"max_associations ({self.max_associations})")
        return self

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        return _ae(v)

    @field_validator("bind")
    @classmethod
    def _ip(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for item in v:
            ipaddress.ip_network(item, strict=False)
        return v

    @field_validator("allowed_calling_aes")
    @classmethod
    def _aes(cls, v: list[str]) -> list[str]:
        for ae in v:
            if not 0 < len(ae.strip()) <= 16:
                raise ValueError(f"AE title {ae!r} must be 1-16 characters")
        return [ae.strip() for ae in v]


class ModelEntry(Strict):
    """One served model: a folder in the model repository (or an explicit manifest path)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    manifest: Path | None = None
    backend: Literal["auto", "onnxruntime", "tensorrt"] = "onnxruntime"
    precision: Literal["fp32", "fp16", "int8"] | None = Field(default=None, description="default: tensorrt.precision")
    dla_core: int | None = Field(default=None, ge=0)
    threads: int = Field(default=0, ge=0, description="ONNX Runtime intra-op threads; 0: all cores")
    batching: BatchingSpec | None = None
    sr: bool = Field(default=False, description="also send each result as a DICOM SR to dicom.sr_destination")


class TlsFiles(Strict):
    # FilePath: a missing file is a config error with its line, not a failure after model load
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    insecure: bool = False


class MqttConfig(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = Field(default=None, description="default: edged-<node_id>")
    username_file: FilePath | None = None
    password_file: FilePath | None = None
    topic_prefix: str = Field(default="edged/v1", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    tls: TlsFiles | None = None
    resend_after_s: float = Field(default=10, gt=0)
    max_inflight: int = Field(default=100, ge=1, le=65535)
    delivered_retention_h: float = Field(default=24, ge=0)

    @model_validator(mode="after")
    def _credentials_pair(self) -> "MqttConfig":
        if (self.username_file is None) != (self.password_file is None):
            raise ValueError("username_file and password_file go together")
        return self


class PipelineConfig(Strict):
    preprocess_workers: int = Field(default=1, ge=1, le=16)
    decode_processes: int = Field(default=1, ge=0, le=16, description="images are decoded in this many worker "
                                  "processes, off the receive path; 0: in the daemon's threads")
    backend_timeout_s: float = Field(default=60, gt=0, description="a batch taking longer marks the pipeline unhealthy")
    max_attempts: int = Field(default=3, ge=1, le=100, description="processing attempts per image before it fails")
    retry_backoff_s: float = Field(default=10, gt=0, description="first retry delay; doubles each attempt")


class Config(Strict):
    node_id: str = Field(default_factory=_default_node_id, pattern=NAME_PATTERN)
    state_dir: Path = Path("/var/lib/edged")
    # None: a per-device key, created at first start in state_dir/site.key. A file here is a key
    # an integrator provisions once for all devices of a site (same study -> same pseudonym on
    # every device); it is read, never created (see privacy.load_site_key).
    site_key_file: Path | None = None
    cache_dir: Path = Path("/var/cache/edged")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    model_repository: Path = Field(default_factory=default_model_repository)
    dicom: DicomConfig = DicomConfig()
    models: list[ModelEntry] = Field(default_factory=lambda: [ModelEntry(name="chexnet")], min_length=1)
    mqtt: MqttConfig = MqttConfig()
    pipeline: PipelineConfig = PipelineConfig()
    tensorrt: TensorRTConfig = TensorRTConfig()
    power: PowerConfig = PowerConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    cameras: list[CameraConfig] = Field(default_factory=list, max_length=64)
    capture: CaptureConfig = CaptureConfig()
    _origin: object = PrivateAttr(default=None)  # loc -> "file:line" of the file it was loaded from

    def set_origin(self, origin: object) -> None:
        self._origin = origin

    def where(self, key: str, loc: tuple) -> str:
        """``file:line: key`` for a finding about the value at ``loc`` (just ``key`` without a file)."""
        return f"{self._origin(loc)}: {key}" if callable(self._origin) else key

    @model_validator(mode="after")
    def _unique_models(self) -> "Config":
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model listed twice: {', '.join(dupes)}")
        wants_sr = [m.name for m in self.models if m.sr]
        if wants_sr and self.dicom.sr_destination is None:
            raise ValueError(f"models {', '.join(wants_sr)} have sr: true but dicom.sr_destination is not set")
        cams = [c.name for c in self.cameras]
        dupes = sorted({n for n in cams if cams.count(n) > 1})
        if dupes:
            raise ValueError(f"camera listed twice: {', '.join(dupes)}")
        for cam in self.cameras:
            missing = [m for m in cam.all_model_names if m not in names]
            if missing:
                raise ValueError(f"camera {cam.name}: model(s) {', '.join(missing)} not in models:")
        if self.capture.snapshots.enabled and self.capture.snapshots.redact_model not in names:
            raise ValueError(f"capture.snapshots: redact_model {self.capture.snapshots.redact_model} not in models:")
        return self

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edged-{self.node_id}"

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "edged.db"

    @property
    def site_key_path(self) -> Path:
        return self.site_key_file or self.state_dir / "site.key"

    @property
    def snapshot_dir(self) -> Path:
        return self.capture.snapshots.dir or self.state_dir / "snapshots"

    def manifest_path(self, entry: ModelEntry) -> Path:
        if entry.manifest is not None:
            return entry.manifest
        return self.model_repository / entry.name / "model.yaml"
