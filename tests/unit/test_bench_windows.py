"""The windows benchmark runs end to end on a small workload and every approach agrees."""

from __future__ import annotations

import pytest

from consumer.bench import windows as bench


def test_bench_main_runs_and_approaches_agree(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--records", "20000", "--bytewax-records", "5000"]) == 0
    out = capsys.readouterr().out
    assert "ours / polars" in out and "bytes per open group" in out
    assert "agree ours vs naive (iso): yes" in out
    assert "agree ours vs naive (ms): yes" in out
    assert "agree transform chain vs naive without rssi (iso): yes" in out
    assert "transform chain / engine = " in out
    assert "agree two aggregations vs naive + its per-device roll-up (iso): yes" in out
    assert "two aggregations / engine = " in out
    assert "agree polars vs naive (ms): yes" in out
    assert ("bytewax: not installed" in out) != ("agree bytewax vs naive, prefix (iso): yes" in out)


def test_agreement_check_detects_a_wrong_result() -> None:
    payloads, _ = bench.generate(2000, "ms")
    naive = bench.run_naive(payloads)
    k = next(iter(naive))
    c, s, mn, mx = naive[k]
    assert bench.agree(naive, dict(naive))
    assert not bench.agree(naive, {**naive, k: (c + 1, s, mn, mx)})
    assert not bench.agree(naive, {**naive, k: (c, s + 0.01, mn, mx)})
    assert not bench.agree(naive, {kk: v for kk, v in naive.items() if kk != k})


def test_generator_matches_the_peer_bench_shape() -> None:
    payloads, arrivals = bench.generate(5000, "iso")
    assert arrivals == sorted(arrivals)
    assert payloads[0].startswith(b'{"device_id": "dev-') and payloads[0].endswith(b'Z"}')
    assert bench.generate(10, "iso") == bench.generate(10, "iso")  # deterministic
