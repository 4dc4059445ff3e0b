"""`dp3batch-flagging-report PATH.ms [...]`: the flagging report of any MS, as the workflow
makes it for each output (report.flagging): `NAME_flagging_report.zarr` and `.png`.

For an output of this workflow (it holds `dp3_completion.json`) the report is written where
the workflow writes it (`<output_dir>/qa/`), with DP3's per-step counts from its log
(`<output_dir>/logs/NAME.log`) and the flags its input had, while that input exists. For
any other MS it describes the MS's own flags, in the current directory unless `--output-dir`
says otherwise; `--log` adds the counts of the DP3 run that made it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dp3batch.books.layout import RECORD_NAME, OutputLayout, ms_log_file

PROGRAM = "dp3batch-flagging-report"


def _name(ms: Path) -> str:
    return ms.name[: -len(".ms")] if ms.name.endswith(".ms") else ms.name


def _record(ms: Path) -> dict[str, Any] | None:
    try:
        return json.loads((ms / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None


def _channel_range(record: dict[str, Any]) -> tuple[int, int]:
    parameters = dict(tuple(pair) for pair in record.get("parameters") or [])
    values = []
    for key in ("msin.startchan", "msin.nchan"):
        try:
            values.append(int(parameters.get(key, "0")))
        except ValueError:
            values.append(0)
    return values[0], values[1]


def report_one(ms: Path, output_dir: Path | None, log: Path | None) -> str:
    """Write the report of one MS; returns the line that says what was written."""
    from dp3batch.report.flagging import count_input_flags, make_flagging_report

    if not (ms / "table.dat").is_file():
        raise ValueError(f"{ms}: not a MeasurementSet (no table.dat)")
    name = _name(ms)
    record = _record(ms)
    input_flags = None
    if record is not None:
        layout = OutputLayout(ms.parent)
        output_dir = output_dir or layout.qa_dir
        log = log or Path(ms_log_file(layout.log_dir, name))
        source = Path(str(record.get("input", "")))
        if (source / "table.dat").is_file():
            startchan, nchan = _channel_range(record)
            input_flags = count_input_flags(source, record.get("band"), startchan, nchan)
    dp3_log = log.read_text(errors="replace") if log is not None and log.is_file() else None
    statistics = make_flagging_report(ms, output_dir or Path.cwd(), name, dp3_log, input_flags)
    found = [f"output {statistics['output_pct']:.1f} % flagged"]
    if statistics.get("total_pct") is not None:
        found.append(f"before averaging {statistics['total_pct']:.1f} %")
    return f"{ms}: {statistics['zarr']} and {statistics['png']} ({', '.join(found)})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    parser.add_argument("measurement_sets", nargs="+", type=Path, metavar="PATH.ms")
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="where the reports go (default: <output_dir>/qa/ for an output of this "
        "workflow, else the current directory)",
    )
    parser.add_argument(
        "--log", type=Path, help="DP3's log of the run that made the MS (one MS only)"
    )
    args = parser.parse_intermixed_args(argv)
    if args.log is not None and len(args.measurement_sets) > 1:
        parser.error("--log goes with one MS")
    failures = 0
    for ms in args.measurement_sets:
        try:
            print(report_one(ms.resolve(), args.output_dir, args.log))
        except (OSError, RuntimeError, ValueError) as error:
            print(f"{PROGRAM}: {error}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
