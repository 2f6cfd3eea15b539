"""Speed ratios that load does not decide: paired per-round ratios, their spread, the busy rule, and the one
wording every table uses (pure functions on synthetic per-round timings; nothing is timed here)."""
from __future__ import annotations

import pytest
from rich.console import Console

from vitprune.measure.speed import (BUSY_CPU_SHARE, BUSY_SPREAD, BUSY_TEXT, Timing, busy_reasons, compare, paired,
                                    speed_change)
from vitprune.report.card import speed_rows


def timing(rates, lats, cpu=None, cpu_lat=None, share=None) -> Timing:
    return Timing(throughput=None, latency_ms=None, batch_size=32, repeats=len(rates), throughput_samples=rates,
                  latency_samples_ms=lats, cpu_ms_samples=cpu, cpu_latency_ms_samples=cpu_lat,
                  cpu_share_samples=share)


def test_paired_ratios_follow_a_load_that_moves_both_sides_of_a_round():
    # a load that halves both models' rates in rounds 2 and 3: every per-round ratio stays 1.5x, no spread
    dense = [100.0, 50.0, 50.0, 100.0, 100.0]
    comp = [150.0, 75.0, 75.0, 150.0, 150.0]
    r = paired(comp, dense, times=False)
    assert (r.median, r.q1, r.q3, r.low, r.high, r.rounds) == (1.5, 1.5, 1.5, 1.5, 1.5, 5)
    assert r.spread == 0.0
    # times: dense over compressed (2 ms vs 4 ms is 0.5x, i.e. slower)
    assert paired([4.0, 4.0], [2.0, 2.0], times=True).median == 0.5
    assert paired(None, [1.0], times=True) is None and paired([], [], times=False) is None


def test_busy_rule_on_synthetic_rounds():
    steady = paired([1.30, 1.32, 1.31, 1.29, 1.33, 1.30], [1.0] * 6, times=False)
    assert steady.spread < BUSY_SPREAD and busy_reasons([steady], [1.9, 1.95, 1.9]) == []
    # rounds that disagree: quartiles 0.9 and 1.5 around 1.2 -> IQR 50 % of the median > 20 %
    noisy = paired([0.8, 0.9, 0.9, 1.2, 1.2, 1.5, 1.5, 1.6, 1.6], [1.0] * 9, times=False)
    assert (noisy.q1, noisy.median, noisy.q3) == pytest.approx((0.9, 1.2, 1.5))
    reasons = busy_reasons([noisy])
    assert len(reasons) == 1 and reasons[0].startswith("paired ratios spread 50% of their median")
    # a starved process: half a core on average (CPU time / wall time), whatever the ratios say
    reasons = busy_reasons([steady], [0.5, 0.4, 0.6])
    assert reasons == [f"the timed process got 0.50 of a core (CPU time / wall time; below {BUSY_CPU_SHARE:.2f})"]
    # two rounds are too few for a spread to mean anything; the CPU share still counts
    assert busy_reasons([paired([1.0, 3.0], [1.0, 1.0], times=False)]) == []


def test_compare_pairs_throughput_latency_and_cpu_time():
    dense = timing([100.0, 100.0, 100.0], [4.0, 4.0, 4.0, 4.0], cpu=[10.0, 10.0, 10.0], cpu_lat=[8.0, 8.0, 8.0, 8.0],
                   share=[1.9] * 7)
    comp = timing([150.0, 160.0, 140.0], [5.0, 5.0, 5.0, 5.0], cpu=[6.0, 6.0, 6.0], cpu_lat=[10.0, 10.0, 10.0, 10.0],
                  share=[1.8] * 7)
    c = compare(comp, dense)
    assert c.throughput.median == 1.5 and c.latency.median == 0.8
    assert c.cpu.median == pytest.approx(10 / 6) and c.cpu_latency.median == 0.8
    assert c.conclusive and c.cpu_share == pytest.approx(1.85)
    d = c.to_dict()
    assert d["verdict"] == "conclusive" and d["throughput_ratio"]["median"] == 1.5 and d["busy"] == []


def test_one_wording_for_speed_ratios():
    assert speed_change(1.3149) == "1.31× faster"
    assert speed_change(0.8234) == "0.82× (slower)"
    assert speed_change(1.001) == "1.00× (same)"
    assert speed_change(0.8234, conclusive=False) == "0.82× (not conclusive)"
    assert speed_change(None) == ""


def test_speed_rows_in_the_tables_and_the_card():
    dense = {"throughput": 800.0, "latency_ms": 4.0, "cpu_ms": 2.5, "cpu_latency_ms": 7.6}
    comp = {"throughput": 1100.0, "latency_ms": 3.0, "cpu_ms": 1.6, "cpu_latency_ms": 5.9}
    speed = {"throughput_ratio": {"median": 1.37, "q1": 1.33, "q3": 1.41, "rounds": 6},
             "latency_ratio": {"median": 1.31, "q1": 1.25, "q3": 1.36, "rounds": 20},
             "cpu_ratio": {"median": 1.56, "q1": 1.5, "q3": 1.6, "rounds": 6},
             "cpu_latency_ratio": {"median": 1.29, "q1": 1.2, "q3": 1.3, "rounds": 20}, "busy": []}
    rows, notes = speed_rows(dense, comp, speed, 32)
    assert rows == [
        ["throughput (img/s, batch 32)", "800.0", "1,100.0", "1.37× faster, IQR 1.33–1.41"],
        ["latency (ms, batch 1, median)", "4.00", "3.00", "1.31× faster, IQR 1.25–1.36"],
        ["CPU time (ms/img, batch 32)", "2.500", "1.600", "1.56× less, IQR 1.50–1.60"],
        ["CPU time (ms, batch 1)", "7.60", "5.90", "1.29× less, IQR 1.20–1.30"]]
    assert len(notes) == 1 and notes[0].startswith("speed changes: the median of per-round ratios")
    busy = {**speed, "busy": ["the timed process got 0.40 of a core (CPU time / wall time; below 0.85)"]}
    rows, notes = speed_rows(dense, comp, busy, 32)
    assert rows[0][3] == "1.37× (not conclusive), IQR 1.33–1.41" and rows[1][3].startswith("1.31× (not conclusive)")
    assert notes[-1] == f"{BUSY_TEXT}: the timed process got 0.40 of a core (CPU time / wall time; below 0.85)."
    # a report from before paired ratios: the ratio of the medians, same words
    rows, notes = speed_rows({"throughput": 800.0, "latency_ms": 3.0}, {"throughput": 600.0, "latency_ms": 4.0},
                             None, 32)
    assert [r[3] for r in rows] == ["0.75× (slower)", "0.75× (slower)"] and notes == []


def test_compress_table_shows_the_busy_verdict_next_to_the_numbers():
    from vitprune.report.tables import compress_table

    side = {"top1": 97.0, "top5": 100.0, "loss": 0.2, "params": 683_000, "gmacs": 0.0487, "throughput": 800.0,
            "latency_ms": 4.0, "cpu_ms": 2.5, "cpu_latency_ms": 7.6}
    speed = {"throughput_ratio": {"median": 1.02, "q1": 0.7, "q3": 1.3, "rounds": 6},
             "latency_ratio": {"median": 0.98, "q1": 0.6, "q3": 1.4, "rounds": 20}, "busy": ["rounds disagree"]}
    report = {"model": "demo", "method": "dynamicvit", "options": {"keep_rate": 0.7}, "data": {"data": "demo"},
              "teacher": "demo (dense)", "dense": side, "compressed": {**side, "gmacs": 0.0302},
              "measure": {"device_name": "CPU", "dtype": "fp32", "batch_size": 32, "speed": speed}}
    console = Console(width=200, record=True)
    console.print(compress_table(report))
    text = console.export_text()
    assert "1.02× (not conclusive), IQR 0.70–1.30" in text and f"{BUSY_TEXT}: rounds disagree." in text
    assert "faster" not in text and "slower" not in text
