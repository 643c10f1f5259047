"""The monthly 通报 (bulletin) of a city or of the province, as a printable PDF and as an Excel workbook
with the same figures.

One ``Bulletin`` is computed (assessment.py's scores, the month's cases and upheld appeals) and both
documents are written from it, so the PDF, the workbook and the /assessment page cannot disagree: rates
are printed as the page prints them (one decimal, "83.3%"). Chinese text uses reportlab's CID font
STSong-Light, which every PDF reader has (Adobe's Asian font packs): no font file is shipped or embedded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from openpyxl import Workbook
from openpyxl.styles import Font
from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from . import appeals as appeal_rules
from . import exclusions
from .assessment import PART_NAMES, Assessment, Month, ScoreRow, Weights, assess, score_table, weights_meta
from .db import Conn
from .export import Column, write_sheet
from .export import Table as XTable
from .figures import Figures
from .ratings_list import dissatisfied_sql, rating_rows
from .scope import Scope

__all__ = ["Bulletin", "build", "pct", "to_pdf", "to_xlsx"]

FONT = "STSong-Light"
CHART_BARS = 30                # bars that fit the page's width with their labels
TOP = 10                       # clerks shown at the top and at the bottom of the ranking
MAX_LISTED = 200               # dissatisfied ratings listed in the PDF (the workbook has all of them)


def pct(x: float | None) -> str:
    """As the platform's pages print a rate (web.pct): "—" for none."""
    return "—" if x is None else f"{x * 100:.1f}%"


@dataclass
class Bulletin:
    month: Month
    scope: Scope
    scope_label: str                 # "全省 Province" or "合肥市 City"
    made_ms: int
    made_by: str
    tz: ZoneInfo
    halls: Assessment
    clerks: Assessment
    total: Figures
    excluded: int
    cases: dict[str, int]            # opened, closed, on_time, overdue
    appeals: list[dict[str, Any]]    # upheld in the month
    dissatisfied: list[dict[str, Any]]
    cities: list[tuple[str, Figures, int]] = field(default_factory=list)   # province: per city

    @property
    def weights(self) -> Weights:
        return self.halls.weights

    @property
    def title(self) -> str:
        return f"{self.month.label} 窗口服务满意度评价通报"

    def summary(self) -> list[tuple[str, str]]:
        t, c = self.total, self.cases
        return [("范围 Scope", self.scope_label), ("月份 Month", self.month.key),
                ("营业厅 Halls", str(len(self.halls.rows))),
                ("评价数 Ratings", str(t.ratings)), ("满意率 Satisfaction", pct(t.satisfaction_rate)),
                ("参评率 Participation", pct(t.participation_rate)),
                ("不满意 Dissatisfied", str(t.dissatisfied)),
                ("申诉剔除 Excluded by upheld appeals", str(self.excluded)),
                ("新开工单 Cases opened", str(c["opened"])), ("关闭工单 Cases closed", str(c["closed"])),
                ("按期整改 Closed on time", str(c["on_time"])), ("逾期 Found overdue", str(c["overdue"])),
                ("申诉采信 Appeals upheld", str(len(self.appeals))),
                ("权重版本 Weights", self.weights.label())]


def build(conn: Conn, month: Month, scope: Scope, scope_label: str, *, tz: ZoneInfo, made_ms: int,
          made_by: str, weights: Weights | None = None) -> Bulletin:
    halls = assess(conn, month, scope, "hall", weights)
    clerks = assess(conn, month, scope, "clerk", halls.weights)
    total = Figures()
    excluded = 0
    for r in halls.rows:
        total.add(r.figures)
        excluded += r.excluded
    cities: dict[str, tuple[Figures, int]] = {}
    if scope.role == "province":
        for r in halls.rows:
            f, n = cities.setdefault(r.city, (Figures(), 0))
            f.add(r.figures)
            cities[r.city] = (f, n + 1)
    a, b = month.start_ms, month.end_ms
    where, args = scope.sql("hall")
    row = conn.one("SELECT SUM(CASE WHEN opened_ms >= ? AND opened_ms < ? THEN 1 ELSE 0 END),"
                   " SUM(CASE WHEN closed_ms >= ? AND closed_ms < ? THEN 1 ELSE 0 END),"
                   " SUM(CASE WHEN closed_ms >= ? AND closed_ms < ? AND on_time = 1 THEN 1 ELSE 0 END),"
                   " SUM(CASE WHEN overdue_ms >= ? AND overdue_ms < ? THEN 1 ELSE 0 END)"
                   f" FROM cases WHERE 1 = 1{where}", [a, b, a, b, a, b, a, b, *args])
    cases = dict(zip(("opened", "closed", "on_time", "overdue"), (int(x or 0) for x in row), strict=True))
    appeals = [{"id": int(i), "rating": int(r), "hall": h, "reason": appeal_rules.REASONS.get(reason, reason),
                "decided": _fmt(d, tz), "decided_by": by, "decision": dec or ""}
               for i, r, h, reason, d, by, dec in conn.all(
                   "SELECT id, rating, hall, reason, decided_ms, decided_by, decision FROM appeals"
                   f" WHERE state = 'upheld' AND decided_ms >= ? AND decided_ms < ?{where} ORDER BY id",
                   [a, b, *args])]
    dis_where, dis_args = dissatisfied_sql()
    sql = (f"{where} AND day >= ? AND day <= ?{dis_where}{exclusions.included_sql()}")
    dissatisfied = rating_rows(conn, sql, [*args, month.day_from, month.day_to, *dis_args], tz,
                               limit=100_000)
    states = dict(conn.all(f"SELECT rating, state FROM cases WHERE rating IS NOT NULL{where}", args))
    for d in dissatisfied:
        d["case"] = CASE_STATES.get(str(states.get(d["id"])), "—") if d["id"] in states else "—"
    return Bulletin(month, scope, scope_label, made_ms, made_by, tz, halls, clerks, total, excluded, cases,
                    appeals, dissatisfied, [(c, f, n) for c, (f, n) in sorted(cities.items())])


CASE_STATES = {"notified": "已通报 notified", "rectifying": "整改中 rectifying", "review": "复核中 review",
               "closed": "已关闭 closed"}


def _fmt(ms: int | None, tz: ZoneInfo) -> str:
    return "—" if ms is None else datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M")


def _num(v: Any) -> str:
    return "—" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


# --- PDF ----------------------------------------------------------------------------------------------------

def _font() -> None:
    if FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(FONT))


def _styles() -> dict[str, ParagraphStyle]:
    return {"title": ParagraphStyle("title", fontName=FONT, fontSize=17, leading=24, alignment=1,
                                    spaceAfter=4 * mm),
            "h2": ParagraphStyle("h2", fontName=FONT, fontSize=12.5, leading=18, spaceBefore=5 * mm,
                                 spaceAfter=2 * mm),
            "body": ParagraphStyle("body", fontName=FONT, fontSize=9, leading=13),
            "small": ParagraphStyle("small", fontName=FONT, fontSize=7.5, leading=10,
                                    textColor=colors.HexColor("#555555"))}


def _table(head: list[str], rows: list[list[str]], widths: list[float] | None = None) -> Table:
    t = Table([head, *rows], colWidths=widths, repeatRows=1)
    t.setStyle(TableStyle([
        ("FONT", (0, 0), (-1, -1), FONT, 7.5), ("LEADING", (0, 0), (-1, -1), 9.5),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e4ebf5")),
        ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#9aa7b8")),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE")]))
    return t


def _chart(rows: list[ScoreRow]) -> Drawing:
    """满意率 per hall (halls with ratings), best first."""
    rated = sorted((r for r in rows if r.figures.satisfaction_rate is not None),
                   key=lambda r: (-(r.figures.satisfaction_rate or 0.0), r.hall))
    shown = rated[:CHART_BARS]
    d = Drawing(170 * mm, 70 * mm)
    title = "各营业厅满意率 Satisfaction per hall (%)"
    if len(rated) > CHART_BARS:
        title += f": 前 {CHART_BARS} 个 the best {CHART_BARS} of {len(rated)} (全部见下表 all in the table)"
    d.add(String(0, 66 * mm, title, fontName=FONT, fontSize=9))
    if not shown:
        d.add(String(0, 30 * mm, "无评价 no ratings", fontName=FONT, fontSize=9))
        return d
    c = VerticalBarChart()
    c.x, c.y, c.width, c.height = 12 * mm, 14 * mm, 155 * mm, 48 * mm
    c.data = [[round((r.figures.satisfaction_rate or 0.0) * 100, 1) for r in shown]]
    c.valueAxis.valueMin, c.valueAxis.valueMax, c.valueAxis.valueStep = 0, 100, 20
    c.valueAxis.labels.fontName = FONT
    c.categoryAxis.categoryNames = [r.hall for r in shown]
    c.categoryAxis.labels.fontName = FONT
    c.categoryAxis.labels.fontSize = 6.5
    c.categoryAxis.labels.angle = 30 if len(shown) > 8 else 0
    c.categoryAxis.labels.boxAnchor = "ne" if len(shown) > 8 else "n"
    c.bars[0].fillColor = colors.HexColor("#3b6fb6")
    c.barLabelFormat = "%.1f"
    c.barLabels.fontName = FONT
    c.barLabels.fontSize = 6
    c.barLabels.nudge = 5
    d.add(c)
    return d


def _score_rows(rows: list[ScoreRow], clerk: bool) -> list[list[str]]:
    out = []
    for r in rows:
        d = r.as_dict()
        out.append([_num(d["rank"]) if d["rank"] is not None else "样本不足", d["hall"], d["hall_name"],
                    *([d["clerk"] or ""] if clerk else []), _num(d["score"]), str(d["ratings"]),
                    pct(d["satisfaction"]), pct(d["participation"]), str(d["dissatisfied"]),
                    str(d["excluded"]), f"{d['cases_on_time']}/{d['cases_closed']}",
                    f"{d['appeals_upheld']}/{d['appeals_decided']}"])
    return out


_HEAD = ["名次\nRank", "营业厅\nHall", "名称\nName", "得分\nScore", "评价数\nRatings", "满意率\nSatisf.",
         "参评率\nPartic.", "不满意\nDissat.", "剔除\nExcl.", "按期/关闭\nOn time", "采信/已决\nAppeals"]


def to_pdf(b: Bulletin) -> bytes:
    """Every text a person typed (names, decisions) goes into a Paragraph escaped: reportlab reads
    Paragraph text as markup, and a decision with "<" in it must print, not fail."""
    _font()
    st = _styles()
    out = io.BytesIO()
    doc = SimpleDocTemplate(out, pagesize=A4, leftMargin=14 * mm, rightMargin=14 * mm, topMargin=14 * mm,
                            bottomMargin=14 * mm, title=b.title, author="Countersign",
                            subject=f"{b.scope_label} {b.month.key}")
    story: list[Any] = [Paragraph(b.title, st["title"]),
                        Paragraph(escape(f"{b.scope_label} | {b.month.day_from} ~ {b.month.day_to} | 生成"
                                         f" made {_fmt(b.made_ms, b.tz)} by {b.made_by}"), st["small"]),
                        Paragraph("一、总体情况 Summary", st["h2"])]
    summary = b.summary()
    half = (len(summary) + 1) // 2
    pairs = [[*summary[i], *(summary[i + half] if i + half < len(summary) else ("", ""))]
             for i in range(half)]
    story.append(_table(["项目 Item", "数值 Figure", "项目 Item", "数值 Figure"], pairs))
    if b.cities:
        story += [Paragraph("各地市 Cities", st["h2"]),
                  _table(["地市 City", "营业厅 Halls", "评价数 Ratings", "满意率 Satisfaction",
                          "参评率 Participation", "不满意 Dissatisfied"],
                         [[c, str(n), str(f.ratings), pct(f.satisfaction_rate), pct(f.participation_rate),
                           str(f.dissatisfied)] for c, f, n in b.cities])]
    story += [Spacer(1, 3 * mm), _chart(b.halls.rows),
              Paragraph("二、营业厅考核排名 Hall ranking", st["h2"]),
              Paragraph(f"得分 = max(0, Σ 权重×比率 - 扣分×不满意数); 权重 {b.weights.label()}: "
                        + ", ".join(f"{PART_NAMES[k]} {v:g}" for k, v in b.weights.parts.items())
                        + f"; 评价数少于 {b.weights.min_sample} 的列为样本不足，不排名。", st["small"]),
              _table(_HEAD, _score_rows(b.halls.rows, False))]
    ranked = b.clerks.ranked
    top = ranked[:TOP]
    bottom = [r for r in ranked[-TOP:] if r not in top]
    head = [*_HEAD[:3], "工号\nClerk", *_HEAD[3:]]
    story += [Paragraph(f"三、工号考核 Clerks: 前 {TOP} top", st["h2"]), _table(head, _score_rows(top, True))]
    if bottom:
        story += [Paragraph(f"后 {TOP} bottom", st["h2"]), _table(head, _score_rows(bottom, True))]
    story.append(Paragraph(f"样本不足的工号 clerks with insufficient sample: {len(b.clerks.too_few)}",
                           st["small"]))
    story += [Paragraph("四、不满意评价与整改 Dissatisfied ratings and cases", st["h2"]),
              Paragraph(f"不满意 {b.total.dissatisfied} 条; 新开工单 opened {b.cases['opened']}, 关闭 closed"
                        f" {b.cases['closed']}, 按期 on time {b.cases['on_time']}, 逾期 overdue"
                        f" {b.cases['overdue']}.", st["body"])]
    if b.dissatisfied:
        story.append(_table(["编号 ID", "时间 Time", "营业厅 Hall", "窗口 Win", "工号 Clerk", "服务 Service",
                             "评价 Rating", "工单 Case"],
                            [[str(d["id"]), d["time"][:19], d["hall"], d["window"], d["clerk"],
                              d["service_name"], d["score_name"], d["case"]]
                             for d in b.dissatisfied[:MAX_LISTED]]))
        if len(b.dissatisfied) > MAX_LISTED:
            more = len(b.dissatisfied) - MAX_LISTED
            story.append(Paragraph(f"另有 {more} 条见 Excel (more in the workbook)", st["small"]))
    story.append(Paragraph("五、申诉采信 Appeals upheld", st["h2"]))
    if b.appeals:
        story.append(_table(["申诉 Appeal", "评价 Rating", "营业厅 Hall", "理由 Reason", "决定时间 Decided",
                             "决定人 By", "意见 Decision"],
                            [[str(a["id"]), str(a["rating"]), a["hall"], a["reason"], a["decided"],
                              a["decided_by"] or "", Paragraph(escape(a["decision"][:300]), st["small"])]
                             for a in b.appeals]))
    else:
        story.append(Paragraph("本月无采信的申诉 none this month.", st["body"]))
    story.append(Paragraph("采信申诉的评价仍保存并可验签，只是不计入考核 (the ratings of upheld appeals"
                           " stay stored and signed; they are left out of these figures only).", st["small"]))
    doc.build(story)
    return out.getvalue()


# --- Excel --------------------------------------------------------------------------------------------------

def _sheet(wb: Workbook, t: XTable) -> None:
    write_sheet(wb.create_sheet(), t)


SUMMARY_SHEET = "汇总 Summary"


def to_xlsx(b: Bulletin) -> bytes:
    """Sheets: summary, halls, clerks, cities (province), dissatisfied ratings, upheld appeals; rates as
    numbers formatted as percentages, so the analyst's formulas work on them."""
    wb = Workbook()
    ws = wb.active
    if ws is None:
        ws = wb.create_sheet()
    ws.title = SUMMARY_SHEET
    ws.append([b.title])
    ws["A1"].font = Font(bold=True, size=13)
    t = b.total
    raw: dict[str, Any] = {"满意率 Satisfaction": t.satisfaction_rate,
                           "参评率 Participation": t.participation_rate}
    for k, v in b.summary():
        cell_v = raw.get(k, v)
        ws.append([k, int(v) if isinstance(cell_v, str) and cell_v.isdigit() else cell_v])
        if k in raw and cell_v is not None:
            ws.cell(row=ws.max_row, column=2).number_format = "0.0%"
    for k, v in weights_meta(b.weights).items():
        ws.append([k, v])
    ws.append(["生成 Made", f"{_fmt(b.made_ms, b.tz)} ({b.tz.key}) by {b.made_by}"])
    ws.column_dimensions["A"].width = 34
    ws.column_dimensions["B"].width = 60
    _sheet(wb, score_table(b.halls))
    _sheet(wb, score_table(b.clerks))
    if b.cities:
        _sheet(wb, XTable("cities", "各地市 Cities", [
            Column("city", "地市 City"), Column("halls", "营业厅 Halls", "int"),
            Column("ratings", "评价数 Ratings", "int"), Column("satisfied", "满意数 Satisfied", "int"),
            Column("satisfaction", "满意率 Satisfaction", "rate"), Column("prompts", "邀评数 Prompts", "int"),
            Column("participation", "参评率 Participation", "rate"),
            Column("dissatisfied", "不满意 Dissatisfied", "int")],
            [{"city": c, "halls": n, "ratings": f.ratings, "satisfied": f.satisfied,
              "satisfaction": f.satisfaction_rate, "prompts": f.prompts,
              "participation": f.participation_rate, "dissatisfied": f.dissatisfied}
             for c, f, n in b.cities]))
    _sheet(wb, XTable("dissatisfied", "不满意评价 Dissatisfied", [
        Column("id", "编号 ID", "int"), Column("time", "时间 Time"), Column("hall", "营业厅 Hall"),
        Column("window", "窗口 Window"), Column("clerk", "工号 Clerk"),
        Column("service_name", "服务 Service"),
        Column("score_name", "评价 Rating"), Column("case", "工单 Case")], b.dissatisfied))
    _sheet(wb, XTable("appeals", "申诉采信 Appeals upheld", [
        Column("id", "申诉 Appeal", "int"), Column("rating", "评价 Rating", "int"),
        Column("hall", "营业厅 Hall"),
        Column("reason", "理由 Reason"), Column("decided", "决定时间 Decided"),
        Column("decided_by", "决定人 By"), Column("decision", "意见 Decision")], b.appeals))
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()
