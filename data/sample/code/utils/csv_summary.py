#!/usr/bin/env python3
"""Summarise a CSV file column by column.

For each column the script guesses a type (integer, float, date or text) and
prints the count of non-empty values, the number of distinct values and, for
numeric columns, min / max / mean / median / standard deviation. For text
columns it prints the most common values instead.

Usage::

    python csv_summary.py sales.csv
    python csv_summary.py sales.csv --delimiter ';' --top 3
    cat sales.csv | python csv_summary.py -
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, List, Optional, TextIO

DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y", "%Y/%m/%d", "%Y-%m-%d %H:%M:%S")
MISSING = {"", "na", "n/a", "null", "none", "-", "?"}


def parse_number(text: str) -> Optional[float]:
    """Parse '1,234.5', '3.5%', '(42)' and friends; None if not a number."""
    t = text.strip().replace(",", "").replace("_", "")
    negative = t.startswith("(") and t.endswith(")")
    if negative:
        t = t[1:-1]
    percent = t.endswith("%")
    if percent:
        t = t[:-1]
    try:
        value = float(t)
    except ValueError:
        return None
    if math.isnan(value) or math.isinf(value):
        return None
    if percent:
        value /= 100.0
    return -value if negative else value


def parse_date(text: str) -> Optional[datetime]:
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
    return None


@dataclass
class ColumnSummary:
    name: str
    values: List[str] = field(default_factory=list)
    missing: int = 0

    def add(self, raw: str) -> None:
        if raw is None or raw.strip().lower() in MISSING:
            self.missing += 1
        else:
            self.values.append(raw.strip())

    @property
    def kind(self) -> str:
        if not self.values:
            return "empty"
        numbers = [parse_number(v) for v in self.values]
        if all(n is not None for n in numbers):
            if all(float(n).is_integer() and "." not in v for n, v in zip(numbers, self.values)):
                return "integer"
            return "float"
        if all(parse_date(v) is not None for v in self.values):
            return "date"
        return "text"

    def report(self, top: int = 5) -> Dict[str, object]:
        out: Dict[str, object] = {
            "column": self.name,
            "type": self.kind,
            "count": len(self.values),
            "missing": self.missing,
            "distinct": len(set(self.values)),
        }
        if out["type"] in ("integer", "float"):
            nums = [parse_number(v) for v in self.values]
            out.update(
                min=min(nums), max=max(nums),
                mean=round(statistics.fmean(nums), 4),
                median=statistics.median(nums),
                stdev=round(statistics.stdev(nums), 4) if len(nums) > 1 else 0.0,
            )
        elif out["type"] == "date":
            dates = sorted(parse_date(v) for v in self.values)
            out.update(first=dates[0].date().isoformat(), last=dates[-1].date().isoformat())
        elif out["type"] == "text":
            out["top"] = Counter(self.values).most_common(top)
        return out


def summarise(stream: TextIO, delimiter: str = ",") -> List[ColumnSummary]:
    reader = csv.reader(stream, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise SystemExit("error: the input is empty (no header row)")
    columns = [ColumnSummary(name or f"column_{i + 1}") for i, name in enumerate(header)]
    for line_no, row in enumerate(reader, start=2):
        if len(row) != len(columns):
            print(f"warning: line {line_no} has {len(row)} fields, expected {len(columns)}",
                  file=sys.stderr)
        for col, raw in zip(columns, row + [""] * (len(columns) - len(row))):
            col.add(raw)
    return columns


def format_report(rep: Dict[str, object]) -> str:
    head = f"{rep['column']} ({rep['type']}): {rep['count']} values, " \
           f"{rep['missing']} missing, {rep['distinct']} distinct"
    details = {k: v for k, v in rep.items()
               if k not in ("column", "type", "count", "missing", "distinct")}
    lines = [head] + [f"    {k:>7}: {v}" for k, v in details.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="CSV file, or '-' for standard input")
    parser.add_argument("--delimiter", default=",")
    parser.add_argument("--top", type=int, default=5, help="most common text values to show")
    args = parser.parse_args(argv)

    if args.path == "-":
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig")
    else:
        try:
            stream = open(args.path, newline="", encoding="utf-8-sig")
        except OSError as exc:
            print(f"error: cannot open {args.path}: {exc.strerror}", file=sys.stderr)
            return 2
    with stream:
        columns = summarise(stream, args.delimiter)
    for col in columns:
        print(format_report(col.report(args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
