"""Deterministic UIDs derived from the inputs and the algorithm identity.

A replayed study gets the same UIDs, so a PACS does not pile up duplicates; a change of algorithm
version, parameters or inputs gives new UIDs, so different content never shares a UID.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from pydicom.uid import generate_uid

from node.errors import ReportError
from node.model import Equipment

_UID_GRAMMAR = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# A fixed namespace for the name-based UUIDs of ISO/IEC 9834-8 (the "2.25." arc).
_NAMESPACE = uuid.UUID("6b1c7a4e-2f3d-5c1b-9a8e-0d4c3b2a1f10")


def is_valid_uid(uid: str) -> bool:
    """True when ``uid`` is at most 64 characters of digits and dots without leading zeros."""
    return len(uid) <= 64 and bool(_UID_GRAMMAR.match(uid))


def _entropy(kind: str, sources: Iterable[str], equipment: Equipment) -> list[str]:
    # The unit separator keeps ("a", "bc") and ("ab", "c") apart.
    return [
        kind,
        equipment.model_name,
        equipment.software_version,
        "\x1f".join(equipment.algorithm_parameters),
        "\x1f".join(sorted(sources)),
    ]


def derive_uid(kind: str, sources: Iterable[str], equipment: Equipment) -> str:
    """A UID that is a pure function of ``kind``, the algorithm identity and ``sources``.

    Without ``equipment.uid_root`` the UID is ``2.25.<int>`` of a name-based (SHA-1) UUID;
    with a root it is ``generate_uid(prefix=root, entropy_srcs=...)``.
    """
    parts = _entropy(kind, sources, equipment)
    root = equipment.uid_root
    if root is None:
        uid = f"2.25.{uuid.uuid5(_NAMESPACE, chr(0x1e).join(parts)).int}"
    else:
        prefix = root if root.endswith(".") else root + "."
        if not is_valid_uid(prefix[:-1]) or len(prefix) > 56:
            raise ReportError(f"uid_root {root!r} is not a UID root of at most 55 characters")
        uid = str(generate_uid(prefix=prefix, entropy_srcs=parts))
    if not is_valid_uid(uid):
        raise ReportError(f"derived UID {uid!r} is not a valid UID")
    return uid
