"""Host health checks and the consecutive-failure detector, with the issue's measured
targets: detection within 1 s of the first failure, under 5% false positives."""

from __future__ import annotations

import numpy as np
import pytest

from streams.pool.health import (
    CHECK_INTERVAL_S,
    FailureDetector,
    HealthChecker,
    HealthResult,
    measure_detection,
    measure_false_positives,
    measure_overhead,
)
from streams.pool.loaders import LoadedModel, load, write_mlp
from streams.pool.pool import HEALTH_FAILURE_THRESHOLD, ReportHealth


@pytest.fixture
def mlp(tmp_path) -> LoadedModel:
    return load(f"npz:{write_mlp(tmp_path / 'm.npz', 8, 16, 3, seed=1)}")


def _model(infer, memory_mb: float = 1.0) -> LoadedModel:
    return LoadedModel(uri="python:x:y", scheme="python", test_input=np.ones(2), load_ms=1.0,
                       memory_mb=memory_mb, rss_growth_bytes=0, array_bytes=0, _infer=infer)


class FakeClock:
    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_healthy_model_passes(mlp):
    result = HealthChecker(mlp, memory_limit_mb=1024).check()
    assert result.ok
    assert result.latency_ms > 0
    assert result.detail.startswith("ok:")


def test_result_becomes_report_health():
    report = HealthResult(False, 12.5, "boom").to_report("h1", "m1")
    assert report == ReportHealth(host_id="h1", model_id="m1", ok=False, latency_ms=12.5,
                                  detail="boom")


def test_inference_error_fails_the_check():
    def infer(x):
        raise RuntimeError("CUDA\nout of memory")

    result = HealthChecker(_model(infer)).check()
    assert not result.ok
    assert "test inference failed: RuntimeError: CUDA out of memory" in result.detail


def test_latency_over_budget_fails_the_check():
    # the clock advances 60 ms per reading: the check measures 60 ms against a 50 ms budget
    checker = HealthChecker(_model(lambda x: x), latency_budget_ms=50, clock=FakeClock(0.060))
    result = checker.check()
    assert not result.ok
    assert result.latency_ms == pytest.approx(60.0)
    assert "over budget 50 ms" in result.detail
    ok = HealthChecker(_model(lambda x: x), latency_budget_ms=50, clock=FakeClock(0.040))
    assert ok.check().ok


def test_error_rate_over_a_sliding_window():
    checker = HealthChecker(_model(lambda x: x), window=10, max_error_rate=0.2,
                            min_window_calls=5)
    for _ in range(4):
        checker.record_call(False)
    assert checker.check().ok  # 4 calls: too little evidence
    checker.record_call(True)
    result = checker.check()  # 4/5 errors
    assert not result.ok and "error rate 80% over 20% (4/5 calls)" in result.detail
    for _ in range(10):
        checker.record_call(True)  # the window slides the errors out
    assert checker.calls_in_window == 10
    assert checker.error_rate == 0.0
    assert checker.check().ok
    checker.record_call(False)
    checker.record_call(False)
    assert checker.error_rate == pytest.approx(0.2)
    assert checker.check().ok  # at the limit, not over it
    checker.record_call(False)
    assert not checker.check().ok


def test_memory_over_limit_fails_the_check():
    assert not HealthChecker(_model(lambda x: x, memory_mb=300), memory_limit_mb=256).check().ok
    assert HealthChecker(_model(lambda x: x, memory_mb=200), memory_limit_mb=256).check().ok
    probe = HealthChecker(_model(lambda x: x), memory_limit_mb=10, memory_probe=lambda: 11.0)
    assert "memory 11.0 MB over limit 10 MB" in probe.check().detail


def test_detector_needs_consecutive_failures():
    d = FailureDetector()
    assert d.threshold == HEALTH_FAILURE_THRESHOLD
    assert d.interval_s == CHECK_INTERVAL_S
    t = 0.0
    pattern = [False, False, True] * 5  # never HEALTH_FAILURE_THRESHOLD in a row
    for ok in pattern:
        assert not d.observe(ok, t)
        t += d.interval_s
    assert not d.failed
    fired = [d.observe(False, t + i * d.interval_s) for i in range(5)]
    assert fired == [False, False, True, False, False]  # declared exactly once
    assert d.failed and d.detections == 1
    assert d.detected_at - d.first_failure_at == pytest.approx(d.detection_bound_s())
    assert d.detection_bound_s(0.01) == pytest.approx(0.51)
    d.reset()
    assert not d.failed and d.consecutive == 0


def test_detector_schedule_is_pure():
    d = FailureDetector(threshold=2, interval_s=0.5)
    assert d.due(100.0)
    d.observe(True, 100.0)
    assert not d.due(100.4)
    assert d.due(100.5)
    assert d.next_due() == 100.5
    with pytest.raises(ValueError):
        FailureDetector(threshold=0)


def test_detection_within_one_second_of_the_first_failure():
    detect_s = measure_detection()["health_detect_s"]
    # the failure starts just after a passing check: threshold checks at the interval
    assert HEALTH_FAILURE_THRESHOLD * CHECK_INTERVAL_S * 0.9 < detect_s < 1.0


def test_noisy_model_false_positives_under_five_percent():
    figures = measure_false_positives()
    assert figures["health_false_positive_rate"] < 0.05
    assert figures["health_noisy_check_fail_rate"] > 0.005  # the model really is noisy


def test_overhead_is_reported():
    fraction = measure_overhead(duration_s=1.0)["health_check_cpu_fraction"]
    assert 0.0 <= fraction < 1.0  # reported, not asserted against the 1% target here
