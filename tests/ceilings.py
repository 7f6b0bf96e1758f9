"""Ceilings for the waits of integration, browser and end-to-end tests.

Every wait is on a condition (a status, an event, a chart point) and ends as soon as it holds; a ceiling only
bounds how long a broken run takes to fail. Ceilings are the seconds a step takes on a quiet 2-core machine
times ``SLOWDOWN``: CI machines can be slower or busier than a developer's (seen: load average ~11 on 2 cores,
5x the quiet timings), so a test never fails because the machine was slow, only because the condition never
came. ``TUNERY_TEST_SLOWDOWN`` raises (or, for a quick local failure, lowers) the factor.
"""

from __future__ import annotations

import os

SLOWDOWN = float(os.environ.get("TUNERY_TEST_SLOWDOWN", "6"))


def ceiling(quiet_seconds: float) -> float:
    """The wait allowed for something that takes at most ``quiet_seconds`` on a quiet machine."""
    return quiet_seconds * SLOWDOWN


def ceiling_ms(quiet_seconds: float) -> int:
    """``ceiling`` in milliseconds, for Playwright."""
    return int(ceiling(quiet_seconds) * 1000)
