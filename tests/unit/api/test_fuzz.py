"""Property-based API fuzz: every operation in the app's own OpenAPI, with bodies, paths and queries that
hypothesis (through schemathesis) draws from it, some valid and some not. No 5xx, ever; every error in the
API's error shape. Bounded: a few examples per operation, no shrinking database, well under a minute.

Run alone: ``.venv/bin/pytest tests/unit/api/test_fuzz.py``
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from tests.unit.api.conftest import Api

EXAMPLES_PER_OPERATION = 5
BUDGET_S = 30.0  # on a busy machine the later (negative) rounds are cut short, never the whole test


def assert_sane(case: Any, response: Any) -> None:
    where = f"{case.method} {case.formatted_path} body={case.body!r:.300}"
    assert response.status_code < 500, f"{where} -> {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        error = json.loads(response.text)["error"]
        assert set(error) == {"message", "type", "param", "code"}, where
        assert isinstance(error["message"], str), where
        assert error["message"], where


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
def test_no_operation_answers_5xx_or_an_error_out_of_shape(api: Api) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    headers = api.headers()
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    calls = 0
    for operation, mode in (
        (op, mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) for op in operations
    ):
        if time.monotonic() - started > BUDGET_S:
            break

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            nonlocal calls
            calls += 1
            assert_sane(case, case.call(headers=headers))

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing in this operation can be made invalid
    assert calls >= len(operations), f"only {calls} requests in the time budget"
    print(f"{calls} requests over {len(operations)} operations in {time.monotonic() - started:.1f} s")
