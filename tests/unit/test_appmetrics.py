"""The request-metrics sample shared by the proxy and the API (forge/appmetrics.py)."""

from __future__ import annotations

import pytest

from forge.appmetrics import LATENCY_BOUNDS, RequestSample, SampleError, bucket_of, code_class, quantile


def test_a_sample_round_trips_and_adds() -> None:
    a = RequestSample("shop", "shop-3", bucket_of(1_700_000_004.9))
    for status, d in ((200, 0.001), (204, 0.02), (301, 0.02), (404, 0.3), (500, 20.0), (101, 0.0)):
        a.observe(status, d)
    assert a.at == 1_700_000_000 and a.total == 6
    assert a.by_class == {"2xx": 2, "3xx": 1, "4xx": 1, "5xx": 1, "1xx": 1}
    b = RequestSample.from_json(a.to_json())
    assert b == a
    b.add(a)
    assert b.total == 12 and b.buckets[-1] == 2 and b.sum_seconds == pytest.approx(2 * a.sum_seconds)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([], "sample"),
        ({"app": "", "at": 10, "buckets": [0] * 12}, "sample.app"),
        ({"app": "a", "at": 11, "buckets": [0] * 12}, "sample.at"),
        ({"app": "a", "at": True, "buckets": [0] * 12}, "sample.at"),
        ({"app": "a", "at": 10, "byClass": {"6xx": 1}, "buckets": [1] + [0] * 11}, "sample.byClass.6xx"),
        ({"app": "a", "at": 10, "byClass": {"2xx": -1}, "buckets": [0] * 12}, "sample.byClass.2xx"),
        ({"app": "a", "at": 10, "byClass": {"2xx": 2}, "buckets": [1] + [0] * 11}, "sample.buckets"),
        ({"app": "a", "at": 10, "buckets": [0] * 3}, "sample.buckets"),
        ({"app": "a", "at": 10, "buckets": [0] * 12, "sum": float("nan")}, "sample.sum"),
    ],
)
def test_a_malformed_sample_names_its_field(raw: object, field: str) -> None:
    with pytest.raises(SampleError) as exc:
        RequestSample.from_json(raw)
    assert str(exc.value).startswith(field + ":")


def test_classes_and_quantiles() -> None:
    assert [code_class(s) for s in (100, 199, 200, 399, 404, 599, 0, 600)] == [
        "1xx",
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "5xx",
        "5xx",
    ]
    assert quantile([0] * (len(LATENCY_BOUNDS) + 1), 0.5) is None
    one = [0] * (len(LATENCY_BOUNDS) + 1)
    one[2] = 4  # four in (0.01, 0.025]
    assert quantile(one, 0.5) == pytest.approx(0.0175)
    assert quantile(one, 1.0) == pytest.approx(0.025)
    one[-1] = 100  # most above the last bound: the histogram can only say "at least 10 s"
    assert quantile(one, 0.99) == LATENCY_BOUNDS[-1]
