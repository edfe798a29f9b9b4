"""``outlier_detection:`` in a pool's config: defaults, the spec it builds, clear errors."""

from __future__ import annotations

import pytest

from warmroute import config
from warmroute.errors import ConfigError
from warmroute.state.outlier import OutlierSpec

POOL = "pools:\n  - name: a\n    models: [m]\n"


def test_on_by_default_with_the_documented_numbers() -> None:
    (spec,) = config.parse(POOL, "pools.yaml").specs()
    assert spec.outlier == OutlierSpec(
        enabled=True,
        consecutive_failures=5,
        failure_ratio=0.5,
        failure_ratio_min_requests=20,
        window_seconds=30.0,
        base_ejection_seconds=10.0,
        max_ejection_seconds=300.0,
        max_ejection_percent=50,
        full_backoff_seconds=1.0,
    )


def test_every_key_reaches_the_spec() -> None:
    text = POOL + (
        "    outlier_detection: {enabled: false, consecutive_failures: 0, failure_ratio: null,\n"
        "      failure_ratio_min_requests: 7, window_seconds: 5, base_ejection_seconds: 2,\n"
        "      max_ejection_seconds: 2, max_ejection_percent: 100, full_backoff_seconds: 0}\n"
    )
    (spec,) = config.parse(text, "pools.yaml").specs()
    assert spec.outlier == OutlierSpec(False, 0, None, 7, 5.0, 2.0, 2.0, 100, 0.0)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "{max_ejection_seconds: 5}",
            "pools[0].outlier_detection.max_ejection_seconds (line 4): max_ejection_seconds (5) "
            "is below base_ejection_seconds (10): expected at least it",
        ),
        (
            "{failure_ratio: 1.5}",
            "pools[0].outlier_detection.failure_ratio (line 4): Input should be less than or "
            "equal to 1; got 1.5",
        ),
        (
            "{max_ejection_percent: 101}",
            "pools[0].outlier_detection.max_ejection_percent (line 4): Input should be less "
            "than or equal to 100",
        ),
        (
            "{base_ejection_seconds: 0}",
            "pools[0].outlier_detection.base_ejection_seconds (line 4): Input should be "
            "greater than 0",
        ),
        (
            "{consecutive_5xx: 3}",
            "pools[0].outlier_detection.consecutive_5xx (line 4): unknown key",
        ),
    ],
)
def test_errors_name_file_key_line_and_expectation(body: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(POOL + f"    outlier_detection: {body}\n", "pools.yaml")
    assert str(info.value).startswith("invalid config pools.yaml:")
    assert expected in str(info.value), str(info.value)
