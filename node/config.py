"""The configuration: frozen dataclasses, loaded from YAML and validated once.

Defaults live in the dataclasses, so an empty file is a valid config. Unknown keys, wrong types
and out-of-range values are all reported together, each naming the file, the key path, what was
expected and what was found::

    config/calcnode.yaml: destinations.pacs.port: expected an integer 1..65535, got 'abc'

A field's ``metadata`` may carry ``min`` / ``max`` (inclusive) and ``choices``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from node.detection.params import DetectionParams
from node.errors import ConfigError

OUTPUT_KINDS = ("sr", "sc", "gsps")
AE_TITLE = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")


AE_META = {"pattern": AE_TITLE, "help": "1-16 characters, no backslash, not blank"}
REQUIRED = {"required": True}


def _range(lo=None, hi=None, **extra):
    return {"min": lo, "max": hi, **extra}


def _is_ip_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TLSConfig:
    """DICOM TLS (PS3.15 B.1) on the listener or towards one destination; off unless enabled.

    ``certificate`` / ``private_key``: our PEM files (required on the listener; on a
    destination they authenticate us as a client). ``ca_certificates``: the PEM bundle trusted
    for the peer (client certificates on the listener; the destination's certificate on a
    destination, where an empty value means the system's trust store).
    ``require_client_certificate`` (listener only): refuse clients without a certificate
    signed by ``ca_certificates``."""

    enabled: bool = False
    certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    require_client_certificate: bool = False


@dataclass(frozen=True)
class ListenConfig:
    """The C-STORE / C-ECHO SCP (receiver.py)."""

    ae_title: str = field(default="CALCNODE", metadata=AE_META)
    host: str = "127.0.0.1"
    port: int = field(default=11112, metadata=_range(1, 65535))
    allowed_calling_ae_titles: tuple[str, ...] = field(default=(), metadata=AE_META)
    allowed_hosts: tuple[str, ...] = field(default=(), metadata={
        "check": _is_ip_network, "help": "an IP address or network such as 10.1.2.0/24"})
    max_associations: int = field(default=16, metadata=_range(1, 1000))
    max_pdu_bytes: int = field(default=131072, metadata=_range(4096, 16777216))
    acse_timeout_s: float = field(default=30.0, metadata=_range(1, 3600))
    dimse_timeout_s: float = field(default=60.0, metadata=_range(1, 3600))
    network_timeout_s: float = field(default=60.0, metadata=_range(1, 3600))
    shutdown_grace_s: float = field(default=10.0, metadata=_range(0, 600))
    tls: TLSConfig = TLSConfig()


@dataclass(frozen=True)
class StorageConfig:
    """The spool: received files, outputs and the state database (spool.py)."""

    path: str = "var/calcnode"
    min_free_mb: int = field(default=500, metadata=_range(0))
    fsync: bool = True


@dataclass(frozen=True)
class StudyConfig:
    """When a study counts as complete (assembly.py)."""

    complete_after_s: float = field(default=10.0, metadata=_range(0, 86400))
    max_wait_s: float = field(default=600.0, metadata=_range(0, 7 * 86400))
    analyse_when_four_views: bool = True
    max_attempts: int = field(default=2, metadata=_range(1, 10))


@dataclass(frozen=True)
class RetryConfig:
    """How failed deliveries are retried (dispatcher.py)."""

    initial_delay_s: float = field(default=10.0, metadata=_range(0.1, 86400))
    max_delay_s: float = field(default=600.0, metadata=_range(0.1, 86400))
    max_age_h: float = field(default=24.0, metadata=_range(0, 24 * 365))


@dataclass(frozen=True)
class ImagesConfig:
    """How inputs are read (images.py)."""

    default_spacing_mm: float = field(default=0.1, metadata=_range(0.02, 0.5))
    max_spacing_mm: float = field(default=0.2, metadata=_range(0.05, 1.0))
    accept_lossy: bool = True
    analyse_for_processing: bool = True


@dataclass(frozen=True)
class ReportingConfig:
    """How outputs name their maker. ``uid_root`` None gives name-based ``2.25.`` UIDs."""

    manufacturer: str = "calcnode project"
    model_name: str = "calcnode"
    device_serial_number: str = "0001"
    institution_name: str = ""
    uid_root: str | None = field(default=None, metadata={
        "pattern": re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$"),
        "help": "digits and dots ending with '.', at most 54 characters", "max_len": 54})


@dataclass(frozen=True)
class DestinationConfig:
    ae_title: str = field(default="", metadata={**AE_META, **REQUIRED})
    host: str = field(default="", metadata=REQUIRED)
    port: int = field(default=104, metadata={**_range(1, 65535), **REQUIRED})
    outputs: tuple[str, ...] = field(default=OUTPUT_KINDS, metadata={"choices": OUTPUT_KINDS})
    reply_to_sender: bool = False
    timeout_s: float = field(default=30.0, metadata=_range(1, 3600))
    max_pdu_bytes: int = field(default=131072, metadata=_range(4096, 16777216))
    tls: TLSConfig = TLSConfig()


@dataclass(frozen=True)
class WebConfig:
    """The dashboard, ``/metrics``, ``/healthz`` and ``/readyz`` (web.py)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=_range(1, 65535))
    token: str = ""
    show_patient_identity: bool = False


@dataclass(frozen=True)
class HL7Config:
    """HL7 v2 ORU^R01 over MLLP to a RIS / reading worklist; ``host`` empty = off."""

    host: str = ""
    port: int = field(default=2575, metadata=_range(1, 65535))
    sending_application: str = "CALCNODE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    timeout_s: float = field(default=30.0, metadata=_range(1, 3600))


@dataclass(frozen=True)
class WebhookConfig:
    """A JSON POST per analysed study; ``url`` empty = off."""

    url: str = ""
    timeout_s: float = field(default=30.0, metadata=_range(1, 3600))


@dataclass(frozen=True)
class WorklistConfig:
    """Notices per analysed study for the reading worklist (notices.py)."""

    hl7: HL7Config = HL7Config()
    webhook: WebhookConfig = WebhookConfig()


@dataclass(frozen=True)
class Config:
    listen: ListenConfig = ListenConfig()
    storage: StorageConfig = StorageConfig()
    study: StudyConfig = StudyConfig()
    workers: int = field(default=0, metadata={**_range(0, 64), "help": "0 = one per core"})
    retry: RetryConfig = RetryConfig()
    images: ImagesConfig = ImagesConfig()
    detection: DetectionParams = DetectionParams()
    reporting: ReportingConfig = ReportingConfig()
    outputs: tuple[str, ...] = field(default=OUTPUT_KINDS, metadata={"choices": OUTPUT_KINDS})
    destinations: dict[str, DestinationConfig] = field(default_factory=dict)
    web: WebConfig = WebConfig()
    worklist: WorklistConfig = WorklistConfig()


def load_config(path: str | Path | None) -> Config:
    """Read and validate a YAML config; ``None`` gives the built-in defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse_config(data if data is not None else {}, source=str(path))


def parse_config(data: object, source: str = "<config>") -> Config:
    """Validate a parsed YAML document into a ``Config``; raise ConfigError listing problems."""
    problems: list[str] = []
    config = _build(Config, data, "", problems)
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    return config


def _build(cls, data, path: str, problems: list[str]):
    if not isinstance(data, dict):
        problems.append(f"{path or '(top level)'}: expected a mapping, got {_show(data)}")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            problems.append(f"{where}: unknown key (known: {', '.join(known)})")
    values = {}
    for name, fld in known.items():
        if fld.metadata.get("required") and name not in data:
            problems.append(f"{path}.{name}: required key is missing" if path else f"{name}: required")
        if name in data:
            where = f"{path}.{name}" if path else name
            values[name] = _convert(hints[name], data[name], where, fld.metadata, problems)
    return cls(**{k: v for k, v in values.items() if v is not _INVALID})


_INVALID = object()


def _convert(hint, value, path: str, meta, problems: list[str]):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, problems)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping of names, got {_show(value)}")
            return _INVALID
        return {str(k): _convert(args[1], v, f"{path}.{k}", {}, problems) for k, v in value.items()}
    if origin is tuple:
        return _convert_list(args[0], value, path, meta, problems)
    return _convert_scalar(hint, value, path, meta, problems)


def _convert_list(item_type, value, path, meta, problems):
    if not isinstance(value, list):
        problems.append(f"{path}: expected a list, got {_show(value)}")
        return _INVALID
    items = [_convert_scalar(item_type, v, f"{path}[{i}]", meta, problems) for i, v in enumerate(value)]
    return _INVALID if _INVALID in items else tuple(items)


def _convert_scalar(hint, value, path, meta, problems):
    if hint is bool:
        ok = isinstance(value, bool)
        expected = "true or false"
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        expected = "a number"
    else:
        ok = isinstance(value, str)
        expected = "a string"
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None or hi is not None:
        expected += f" {lo if lo is not None else ''}..{hi if hi is not None else ''}"
    if "choices" in meta:
        expected = "one of " + ", ".join(meta["choices"])
    if "help" in meta:
        expected += f" ({meta['help']})"
    if ok and not _in_limits(value, meta):
        ok = False
    if not ok:
        problems.append(f"{path}: expected {expected}, got {_show(value)}")
        return _INVALID
    return value


def _in_limits(value, meta) -> bool:
    if meta.get("min") is not None and value < meta["min"]:
        return False
    if meta.get("max") is not None and value > meta["max"]:
        return False
    if "choices" in meta and value not in meta["choices"]:
        return False
    if "pattern" in meta and not meta["pattern"].match(value):
        return False
    if "check" in meta and not meta["check"](value):
        return False
    if "max_len" in meta and len(value) > meta["max_len"]:
        return False
    return True


def _show(value) -> str:
    if value is None:
        return "nothing"
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
