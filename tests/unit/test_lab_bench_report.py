"""The benchmark report renders whatever the programs wrote, and says what did not run."""

from __future__ import annotations

from bench.report import render_markdown


def test_programs_that_did_not_run_are_listed_with_their_reason() -> None:
    report = {
        "benchmarks": [
            {"name": "cni_latency", "what": "x", "status": "not run", "reason": "exit code 3: boom"}
        ]
    }
    text = render_markdown(report)
    assert "| cni_latency | not run (exit code 3: boom) |" in text
    assert "**not run**: exit code 3: boom" in text


def test_result_rows_become_a_table_with_ratio_columns_last() -> None:
    result = {
        "title": "rss",
        "rows": [
            {"backend": "vxlan", "rss_ratio": 1.25, "leases": 1200},
            {"backend": "alloc", "leases": 0, "extra": "y"},
        ],
    }
    entry = {"name": "rss", "what": "memory", "status": "ok", "seconds": 3.0, "result": result}
    text = render_markdown({"benchmarks": [entry]})
    assert "| backend | leases | extra | rss_ratio |" in text
    assert "| vxlan | 1200 |  | 1.25 |" in text
    assert "- title: rss" in text
