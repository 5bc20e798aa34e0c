"""Is this study ready to analyse? A pure function of what was received and an injected ``now``.

A modality sends a study as one or more associations, and nothing in DICOM says "that was the
last image". So a study counts as complete when

1. no instance arrived for ``study.complete_after_s`` (the quiet period), or
2. at once, when ``study.analyse_when_four_views`` is on, the four standard screening views
   (RCC, LCC, RMLO, LMLO) are in and no association that sent part of it is still open, or
3. at the latest ``study.max_wait_s`` after its first instance, even while instances keep
   trickling in (a stuck or very slow sender must not hold results back for ever).

This module imports no pydicom, pynetdicom or yaml.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.model import StudyProgress

if TYPE_CHECKING:  # config.py imports yaml; this module only reads the fields
    from node.config import StudyConfig

FOUR_VIEWS = frozenset({"RCC", "LCC", "RMLO", "LMLO"})


def ready_reason(study: StudyProgress, now: float, config: StudyConfig) -> str | None:
    """Why ``study`` is complete at ``now`` (epoch seconds), or None while it is not."""
    quiet_s = now - study.last_received_at
    waited_s = now - study.first_received_at
    if waited_s >= config.max_wait_s:
        return f"waited the maximum of {config.max_wait_s:g} s"
    if config.analyse_when_four_views and FOUR_VIEWS <= study.views and not study.association_open:
        return "four standard views received"
    if quiet_s >= config.complete_after_s:
        return f"no instance for {config.complete_after_s:g} s"
    return None


def next_check_s(study: StudyProgress, now: float, config: StudyConfig) -> float:
    """Seconds until ``study`` can next become ready by the clock alone (never negative)."""
    due = min(study.last_received_at + config.complete_after_s,
              study.first_received_at + config.max_wait_s)
    return max(0.0, due - now)
