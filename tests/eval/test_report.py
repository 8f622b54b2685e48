"""The report: tables from results, plots written, only its own section of BENCHMARKS.md replaced."""

from __future__ import annotations

from tokenfill.eval import report

RESULTS = {
    "model": "m", "parameters": 4e6, "date": "2026-01-01", "machine": "cpu", "seed": 0,
    "command": "tokenfill eval all --model m", "minutes": 1.5,
    "tasks": {
        "humaneval-single": {"rows": 10, "pass@1_rows": 0.1, "pass@1_problems": 0.2,
                             "ms_p50": 50, "ms_p95": 90},
        "humaneval-multi": {"task": "humaneval-multi", "skipped": "data absent"},
        "realcode": {"kinds": {"mid-line": {"holes": 4, "em_first_line": 0.25, "es_first_line": 0.5,
                                            "em_middle": 0.25, "es_middle": 0.4, "parses": 0.75}}},
        "tokens": {"accuracy": 0.4, "coverage": 0.9, "tokens_scored": 100},
        "latency": {"cursors": 5, "ms_p50": 40, "ms_p95": 80, "ms_p99": 90, "tokens_mean": 7.0,
                    "ms": [30, 40, 50, 80, 90]},
    },
}


def test_render_and_update_keep_the_rest_of_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "PLOTS", tmp_path / "plots")
    monkeypatch.setattr(report, "REPO_ROOT", tmp_path)
    plots = report.write_plots(RESULTS)
    assert [p.name for p in plots] == ["eval-exact-match-by-kind.png", "eval-latency.png"]
    assert all(p.stat().st_size > 1000 for p in plots)
    section = report.render(RESULTS, plots)
    assert "| humaneval-single | 10 | 10.0% | 20.0% | 50 | 90 |" in section
    assert "skipped: data absent" in section
    assert "| mid-line | 4 | 25.0% | 50.0 | 25.0% | 40.0 | 75.0% |" in section
    assert "**40.0%**" in section and "p99 90 ms" in section
    assert "SantaCoder-1.1B" in section  # the published reference table
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n\nhand-written part\n")
    report.update_benchmarks(section, bench)
    report.update_benchmarks(section.replace("10.0%", "11.0%"), bench)
    text = bench.read_text()
    assert "hand-written part" in text and text.count("<!-- eval:begin -->") == 1
    assert "11.0%" in text and "| 10.0% |" not in text
