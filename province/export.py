"""Every table of the platform as CSV and as an Excel workbook, with its period and filters in the file.

An analyst reconciles a month in Excel: the CSV is UTF-8 with a BOM (Excel on a Chinese Windows reads a
BOM-less file as GBK and garbles every name), and the workbook keeps numbers as numbers and rates as
percentages. The first lines of either say what the table is, when it was made, by whom and for which
period and filters, so a file forwarded by e-mail still says what it counts.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from openpyxl import Workbook
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

__all__ = ["Column", "Table", "to_csv", "to_xlsx", "write_sheet"]

Kind = Literal["text", "int", "rate", "time"]


@dataclass(frozen=True)
class Column:
    key: str
    title: str                        # Chinese first: "满意率 Satisfaction"
    kind: Kind = "text"


@dataclass
class Table:
    name: str                         # file name stem, ASCII: "ranking-halls"
    title: str                        # "营业厅排名 Hall ranking"
    columns: Sequence[Column]
    rows: list[dict[str, Any]]
    meta: dict[str, str] = field(default_factory=dict)   # period, filters, made at, made by


def _cell(col: Column, v: Any) -> Any:
    if v is None:
        return ""
    if col.kind == "rate":
        return f"{v * 100:.1f}%"
    return v


def to_csv(t: Table) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([t.title])
    for k, v in t.meta.items():
        w.writerow([k, v])
    w.writerow([])
    w.writerow([c.title for c in t.columns])
    for r in t.rows:
        w.writerow([_cell(c, r.get(c.key)) for c in t.columns])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def write_sheet(ws: Worksheet, t: Table) -> None:
    """``t`` on one worksheet: its title, its meta lines, a bold frozen header row, rates as numbers
    formatted as percentages (so Excel can compute with them)."""
    ws.title = t.title[:31].replace("/", " ")
    ws.append([t.title])
    ws["A1"].font = Font(bold=True, size=13)
    for k, v in t.meta.items():
        ws.append([k, v])
    ws.append([])
    ws.append([c.title for c in t.columns])
    head = ws.max_row
    for cell in ws[head]:
        cell.font = Font(bold=True)
    for r in t.rows:
        ws.append([r.get(c.key) for c in t.columns])
    for j, c in enumerate(t.columns, start=1):
        if c.kind == "rate":
            for (cell,) in ws.iter_rows(min_row=head + 1, min_col=j, max_col=j):
                cell.number_format = "0.0%"
        ws.column_dimensions[get_column_letter(j)].width = max(10, min(40, len(c.title) * 2))
    ws.freeze_panes = f"A{head + 1}"


def to_xlsx(t: Table) -> bytes:
    wb = Workbook()
    ws = wb.active
    if ws is None:       # openpyxl's types allow it; a new Workbook always has its sheet
        ws = wb.create_sheet()
    write_sheet(ws, t)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()
