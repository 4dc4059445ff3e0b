"""Unit tests of the report's HTML summary table and of publishing dask's report."""

from __future__ import annotations

import re

from dp3batch.books.status import Status
from dp3batch.report.html import STATUS_COLOURS, write_summary_html
from dp3batch.report.summary import SummaryRow

DONE, FAILED = Status.DONE, Status.FAILED
NOT_PROCESSED, UP_TO_DATE = Status.NOT_PROCESSED, Status.UP_TO_DATE


def row(name: str, status: Status, **fields) -> SummaryRow:
    base = {
        "duration_seconds": 12.34,
        "worker": "tcp://10.0.0.7:40125",
        "numthreads": 4,
        "rows_before": 300,
        "rows_after": 150,
        "channels_before": 16,
        "channels_after": 8,
        "flagged_input_pct": 25.0,
        "flagged_total_pct": 40.0,
        "flagged_output_pct": 31.25,
        "flags_by_step": {"aoflagger": {"percent": 15.0}},
        "output_bytes": 2_500_000,
        "finished": "2026-11-28T01:00:00+00:00",
        "log": f"/data/results/logs/{name}.log",
        "error": None,
        "output": f"/data/results/{name}.ms",
    }
    return SummaryRow(name=name, status=status, **{**base, **fields})


def table_rows(html: str) -> dict[str, str]:
    return dict(re.findall(r'<tr id="ms-([^"]+)">(.*?)</tr>', html))


def test_one_row_per_ms_in_order_with_coloured_status(tmp_path):
    rows = [row("a", DONE), row("b", UP_TO_DATE), row("c", FAILED), row("d", NOT_PROCESSED)]
    write_summary_html(rows, tmp_path / "s.html", "Batch X")
    html = (tmp_path / "s.html").read_text()
    assert list(table_rows(html)) == ["a", "b", "c", "d"]
    for ms in rows:
        colour = STATUS_COLOURS[ms.status]
        assert f'style="background:{colour}">{ms.status}</td>' in table_rows(html)[ms.name]
    assert "4 MS(s), 1 done, 1 up to date, 1 failed, 1 not processed" in html


def test_cells_show_before_after_and_sort_keys(tmp_path):
    write_summary_html([row("a", DONE)], tmp_path / "s.html", "t")
    cells = table_rows((tmp_path / "s.html").read_text())["a"]
    assert '<td data-sort="150">300 → 150</td>' in cells
    # Every flag column a percentage: input, each step, before averaging, output.
    percents = re.findall(r'<td data-sort="([\d.]+)" class="number">([\d.]+)</td>', cells)
    assert percents[:4] == [("25.0", "25.0"), ("15.0", "15.0"), ("40.0", "40.0"), ("31.25", "31.2")]
    assert '<td data-sort="12.34" class="number">12.3</td>' in cells
    assert '<td data-sort="2500000" class="number">2.5</td>' in cells


def test_log_and_parset_paths_are_links_and_a_failed_ms_has_no_parset(tmp_path):
    write_summary_html([row("a", DONE), row("b", FAILED, error="x")], tmp_path / "s.html", "t")
    rows = table_rows((tmp_path / "s.html").read_text())
    assert (
        'href="file:///data/results/logs/a.log" title="/data/results/logs/a.log">log<' in rows["a"]
    )
    assert 'href="file:///data/results/a.ms/dp3.parset"' in rows["a"]
    assert "dp3.parset" not in rows["b"] and "/data/results/logs/b.log" in rows["b"]


def test_text_is_escaped(tmp_path):
    failed = row("a", FAILED, error='<script>alert("x")</script> & more')
    write_summary_html([failed], tmp_path / "s.html", "<b>t</b>")
    html = (tmp_path / "s.html").read_text()
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in html
    assert "<title>&lt;b&gt;t&lt;/b&gt;</title>" in html


def test_missing_values_give_empty_cells(tmp_path):
    empty = SummaryRow(name="a", status=NOT_PROCESSED, output="/r/a.ms")
    write_summary_html([empty], tmp_path / "s.html", "t")
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table_rows((tmp_path / "s.html").read_text())["a"])
    assert cells[:2] == ["a", NOT_PROCESSED]
    assert set(cells[2:]) == {""}


def test_every_column_is_sortable(tmp_path):
    write_summary_html([row("a", DONE)], tmp_path / "s.html", "t")
    html = (tmp_path / "s.html").read_text()
    headers = len(re.findall("<th>", html))
    assert headers == len(re.findall("<td ", table_rows(html)["a"]))
    assert 'querySelectorAll("th")' in html and "data-sort" in html
