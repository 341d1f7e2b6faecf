"""``report.html``: the sweep's report as one page that opens offline in any browser.

Nothing in it is fetched: no script, no external style sheet or font, every figure embedded as a
``data:`` URI (SVG rendered from the matplotlib figure itself, PNG where the SVG would be large).
Verdicts first (a matrix of better/worse per group and metric, the significant differences in
words, every verdict folded below), then the tables (groups, comparisons, ranks, corruption shift,
OOD and ensembles when present), the calibration panel (metrics x calibrators as one table, the
reliability and confidence figures), the other figures, the runs (failed and unfinished ones
named), and the commands that reproduce the sweep and the report.

What make_report already has is rendered from its objects (analysis, grouping, jobs, summary.csv's
rows, the calibration metrics), every string through ``html.escape``. The text other modules write
only as markdown (ranks, shift, OOD, ensembles, probes, duplicates, the calibration notes) is
converted with Python-Markdown (a tensorboard dependency, so always installed) with raw HTML,
entities, links and images turned off: whatever a label or an error message holds is shown as
text, and a ``![...](file)`` line becomes that figure, embedded.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from regbench.evaluation.panel import METRICS, metric_key
from regbench.files import atomic_write_bytes
from regbench.report.analysis import Analysis
from regbench.report.calibration import (
    CALIBRATOR_COLUMNS,
    calibration_table_markdown,
    mean_or_none,
    present,
    unusable_calibration_files,
)
from regbench.report.calibration import SPEC as CALIBRATION_SPEC
from regbench.report.comparisons import (
    METRIC_NAMES,
    PERCENT_METRICS,
    Comparison,
    comparison_header,
    comparison_method_text,
    comparison_rows,
    equivalence_word,
    format_difference,
    format_p,
    verdict_line,
)
from regbench.report.comparisons import outcome as comparison_outcome
from regbench.report.ensembles import EnsembleReport, ensemble_section
from regbench.report.groups import (
    Group,
    Grouping,
    did_not_learn,
    finite_values,
    format_mean_std,
    label_keys,
    mean_std,
)
from regbench.report.jobs import Job
from regbench.report.ood import ood_section
from regbench.report.outputs import (
    COMPARISONS_CSV,
    PLOT_FILES,
    REPORT_HTML,
    SUMMARY_CSV,
)
from regbench.report.probes import probe_sections
from regbench.report.shift import shift_section
from regbench.report.statistics import HIGHER, INDISTINGUISHABLE, LOWER
from regbench.report.tables import (
    TABLE_COLUMNS,
    bootstrap_columns,
    calibration_section,
    csv_rows,
    interval_widths,
    merge_section,
    ranking_section,
    status_counts,
    table_text,
)
from regbench.run.spec import REGULARIZER_KEY, TEST_ACC

# Hydra's record of a multirun's command-line overrides, in the sweep folder.
MULTIRUN_FILE = "multirun.yaml"
# Beyond this many bytes of SVG (thousands of path points: many groups' histograms) the PNG
# written next to the report is several times smaller and just as sharp at its size.
SVG_LIMIT = 1_500_000
# More rows than this and a long listing starts folded (<details>), so the page stays skimmable.
OPEN_ROWS = 24
# The calibration panel shows these figures; the Figures section the others.
CALIBRATION_FIGURES = (PLOT_FILES["reliability"], PLOT_FILES["confidence_hist"])
CAPTIONS = {
    PLOT_FILES["accuracy_vs_ece"]: "Test accuracy against test ECE, raw and after temperature "
                                   "scaling: mean ± std over seeds, numbered as in Groups.",
    PLOT_FILES["reliability"]: "Reliability per group: test predictions' bins pooled over seeds.",
    PLOT_FILES["confidence_hist"]: "Test confidence per group, correct and incorrect predictions.",
    "comparisons.png": "Each group minus its baseline per key metric: mean over seed pairs with its "
                       "interval (the level in the figure's title).",
    "ranks.png": "Average ranks across blocks with the Nemenyi critical difference (Demšar 2006).",
}
MIME_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


@dataclass
class HtmlReport:
    """What make_report has computed, and how it was called (for the commands to reproduce)."""

    sweeps: Sequence[Path]
    jobs: Sequence[Job]
    grouping: Grouping
    analysis: Analysis
    ensembles: EnsembleReport
    # File name -> the matplotlib Figure drawn for it, or the path of an image already written.
    figures: Mapping[str, Any] = field(default_factory=dict)
    baseline: Sequence[str] = ()  # the --baseline selectors as given
    rank_metric: str = TEST_ACC
    margins: Mapping[str, float] = field(default_factory=dict)  # --equivalence, parsed


def write_html_report(report: HtmlReport) -> Path:
    """``report.html`` in the first sweep folder, whole or not at all; returns its path."""
    path = Path(report.sweeps[0]) / REPORT_HTML
    atomic_write_bytes(path, render_page(report).encode())
    return path


# --- small builders ---------------------------------------------------------------------------------

def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def element(tag: str, content: str, **attributes: Any) -> str:
    """``<tag a="v">content</tag>``; ``content`` is HTML already, attribute values are escaped;
    ``class_`` stands for ``class``, a None value leaves the attribute out."""
    text = "".join(f' {name.rstrip("_").replace("_", "-")}="{esc(value)}"'
                   for name, value in attributes.items() if value is not None)
    return f"<{tag}{text}>{content}</{tag}>"


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


@dataclass
class Section:
    title: str
    body: str
    anchor: str = ""

    def html(self) -> str:
        return element("section", f"<h2>{esc(self.title)}</h2>\n{self.body}",
                       id=self.anchor or slug(self.title))


def table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] = (),
          class_: Optional[str] = None) -> str:
    """A table in its own horizontally scrolling box; cells are HTML already (``cell``);
    ``numeric[i]``: column i is right-aligned with tabular digits."""
    numeric = list(numeric) + [False] * (len(header) - len(numeric))
    head = "".join(element("th", esc(title), class_="num" if num else None)
                   for title, num in zip(header, numeric))
    body = "\n".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return element("div", element("table", f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n"
                                           "</tbody>", class_=class_), class_="scroll")


def cell(text: Any, numeric: bool = False, value: Any = None, title: Any = None,
         class_: Optional[str] = None, key: Optional[str] = None) -> str:
    """A <td> of escaped text; ``value``: the full-precision number behind a rounded one and
    ``key`` its metrics.json key (data-value, data-key: what the tests compare with the CSVs)."""
    classes = " ".join(name for name in ("num" if numeric else "", class_ or "") if name) or None
    return element("td", esc(text), class_=classes, data_key=key, data_value=value, title=title)


def folded(summary: str, content: str, open_: bool) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>\n{content}\n</details>"


# --- verdicts ---------------------------------------------------------------------------------------

def outcome(c: Comparison) -> str:
    """"better", "worse" (comparisons.outcome, by the metric's direction), else the verdict:
    "higher"/"lower" for a metric with no better direction, "indistinguishable"..."""
    return comparison_outcome(c.metric, c.verdict) or c.verdict


def outcome_class(word: str) -> str:
    return {"better": "better", "worse": "worse", HIGHER: "neutral", LOWER: "neutral",
            INDISTINGUISHABLE: "same"}.get(word, "few")


def metric_title(metric: str) -> str:
    unit = " (pp)" if metric in PERCENT_METRICS else ""
    return f"{METRIC_NAMES.get(metric, metric)}{unit}"


def verdict_matrix(comparisons: Sequence[Comparison]) -> str:
    """A row per (group, baseline), a column per metric: the mean difference and its outcome,
    coloured; the whole verdict line as the cell's tooltip."""
    metrics = list(dict.fromkeys(c.metric for c in comparisons))
    pairs = list(dict.fromkeys((c.group.label, c.baseline.label) for c in comparisons))
    found = {(c.group.label, c.baseline.label, c.metric): c for c in comparisons}
    rows = []
    for group, baseline in pairs:
        cells = [element("th", f"{esc(group)} <span class=\"muted\">vs {esc(baseline)}</span>",
                         scope="row")]
        for metric in metrics:
            c = found.get((group, baseline, metric))
            if c is None:
                cells.append(cell("–"))
                continue
            word = outcome(c)
            difference = "" if math.isnan(c.paired.mean_diff) else format_difference(metric, c.paired.mean_diff)
            content = f"<span class=\"diff\">{esc(difference)}</span><span class=\"word\">{esc(word)}</span>"
            if c.equivalence is not None:
                unit = " pp" if metric in PERCENT_METRICS else ""
                content += f"<span class=\"word\">{esc(equivalence_word(c, unit))}</span>"
            cells.append(element("td", content, class_=f"verdict {outcome_class(word)}",
                                 title=verdict_line(c)))
        rows.append(cells)
    return table(["group vs baseline", *map(metric_title, metrics)], rows,
                 [False] + [True] * len(metrics), class_="matrix")


LEGEND = (("better", "better: the difference is significant and in the metric's better direction"),
          ("worse", "worse: significant, in the worse direction"),
          ("neutral", "higher / lower: significant, on a metric with no better direction "
                      "(mean confidence)"),
          ("same", f"{INDISTINGUISHABLE}: not significant after Holm's adjustment"),
          ("few", "too few seeds for a test"))


def verdict_counts(comparisons: Sequence[Comparison]) -> str:
    """"12 comparisons (2 seed pairs each): 9 indistinguishable, 2 worse, 1 lower (...)"."""
    counts: dict[str, int] = {}
    for c in comparisons:
        counts[outcome(c)] = counts.get(outcome(c), 0) + 1
    total = len(comparisons)
    pairs = sorted({c.paired.n_pairs for c in comparisons})
    span = f"{pairs[0]}" if len(pairs) == 1 else f"{pairs[0]}–{pairs[-1]}"
    parts = ", ".join(f"{count} {word}" + (" (no better direction)" if word in (HIGHER, LOWER) else "")
                      for word, count in counts.items())
    return (f"{total} comparison{'' if total == 1 else 's'} ({span} seed "
            f"pair{'' if pairs[-1] == 1 else 's'} each): {parts}.")


def verdict_lines(comparisons: Sequence[Comparison]) -> str:
    """Every verdict in words, by metric."""
    blocks = []
    for metric in dict.fromkeys(c.metric for c in comparisons):
        items = "".join(element("li", esc(verdict_line(c)), class_=outcome_class(outcome(c)))
                        for c in comparisons if c.metric == metric)
        blocks.append(element("h3", esc(metric_title(metric))) + element("ul", items, class_="verdicts"))
    return "\n".join(blocks)


def significant_lines(comparisons: Sequence[Comparison]) -> str:
    """The verdicts that found a difference, in words (the others are one click away)."""
    found = [c for c in comparisons if c.verdict in (HIGHER, LOWER)]
    if not found:
        return element("p", esc(f"No difference is significant: every comparison is "
                                f"{INDISTINGUISHABLE} or has too few seeds."))
    items = "".join(element("li", esc(verdict_line(c)), class_=outcome_class(outcome(c)))
                    for c in found)
    return element("h3", "Significant differences") + element("ul", items, class_="verdicts")


def verdict_section(analysis: Analysis) -> Section:
    comparisons = analysis.comparisons
    notes = "".join(element("li", esc(note)) for note in analysis.comparison_notes)
    parts = []
    if comparisons:
        shown = {outcome_class(outcome(c)) for c in comparisons}
        legend = " ".join(element("span", esc(text), class_=f"chip {name}")
                          for name, text in LEGEND if name in shown)
        method = element("p", esc(comparison_method_text(comparisons, analysis.selectors)))
        parts += [element("p", esc(verdict_counts(comparisons)), class_="lead"),
                  verdict_matrix(comparisons), element("p", legend, class_="legend"),
                  significant_lines(comparisons),
                  folded(f"All {len(comparisons)} verdicts in words, with their caveats",
                         verdict_lines(comparisons), False),
                  folded("How the verdicts are computed", method, False)]
    else:
        parts.append(element("p", "No comparisons: only one group." if not notes else "No comparisons."))
    if notes:
        parts.append(element("ul", notes, class_="notes"))
    return Section("Verdicts against the baseline", "\n".join(parts), "verdicts")


# --- groups, comparisons and runs tables ------------------------------------------------------------

def swatch(number: int) -> str:
    """The group's number and colour in the figures (plots.group_styles, numbered from 1)."""
    from regbench.report.plots import group_styles

    color = group_styles(number)[number - 1]["color"]
    red, green, blue = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    # Rec. 601 luma: white digits on the dark colours (black, blue, vermillion), black on the rest.
    text = "#fff" if 0.299 * red + 0.587 * green + 0.114 * blue < 140 else "#000"
    return element("span", str(number), class_="swatch", style=f"background:{color};color:{text}")


def group_rows(grouping: Grouping) -> list[list[str]]:
    done_jobs = [job for group in grouping.groups for job in group.completed]
    intervals = bootstrap_columns(done_jobs)
    warnings = [did_not_learn(group) for group in grouping.groups]
    rows = []
    for number, (group, warning) in enumerate(zip(grouping.groups, warnings), 1):
        done = group.completed
        # The swatch stays on the line of the label's first word (an inline-block may wrap).
        first, _, rest = group.label.partition(" ")
        label = element("span", f"{swatch(number)} {esc(first)}", class_="nowrap")
        cells = [element("td", f"{label} {esc(rest)}" if rest else label, class_="label"),
                 cell(len(done), numeric=True)]
        for key, _, spec in TABLE_COLUMNS:
            values = finite_values(done, key)
            cells.append(cell(format_mean_std(values, spec, len(done)), numeric=True, key=key,
                              value=repr(mean_std(values)[0]) if values else None))
        for low, high, _ in intervals:
            widths = interval_widths(done, low, high)
            cells.append(cell(f"{sum(widths) / len(widths):.4f}" if widths else "–", numeric=True))
        if any(warnings):
            cells.append(cell(f"⚠ {warning}" if warning else "", class_="warn" if warning else None))
        rows.append(cells)
    return rows


def group_section(jobs: Sequence[Job], grouping: Grouping) -> Section:
    done_jobs = [job for group in grouping.groups for job in group.completed]
    intervals = bootstrap_columns(done_jobs)
    header = ["settings", "seeds", *(title for _, title, _ in TABLE_COLUMNS),
              *(title for _, _, title in intervals)]
    if any(did_not_learn(group) for group in grouping.groups):
        header.append("warning")
    body = element("p", esc(table_text(jobs, grouping))) + table(
        header, group_rows(grouping), [False] + [True] * (len(TABLE_COLUMNS) + len(intervals) + 1),
        class_="groups")
    return Section("Groups", body, "groups")


# Columns of comparisons.csv shown in the group − baseline unit (pp for accuracies), and p-values.
DIFFERENCE_COLUMN = re.compile(r"(^|_)(diff|margin)(_|$)|_(low|high)$")
P_COLUMN = re.compile(r"(^|_)p(_|$)|^p_value")
# comparisons.csv's interval columns, shown as one "[low, high]" column.
INTERVAL_ENDS = ("_low", "_high")
# Shown even when every row has the same value; other such columns become one sentence (but
# differences, whose unit changes with the metric).
ALWAYS_SHOWN = {"group", "mean_diff", "verdict", "tost_verdict"}


def comparison_text(column: str, value: Any, metric: str) -> str:
    if value == "" or value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if P_COLUMN.search(column):
            return format_p(float(value))
        if DIFFERENCE_COLUMN.search(column):
            return format_difference(metric, float(value), sign=column == "mean_diff")
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    return str(value)


def comparison_columns(rows: Sequence[Mapping[str, Any]],
                       header: Sequence[str]) -> list[tuple[str, ...]]:
    """comparisons.csv's columns (``header``) that some row fills, the metric aside (it heads its
    rows), each ``x_low`` with its ``x_high`` as one interval column: (column,) or (low, high)."""
    filled = [column for column in header
              if column != "metric" and any(row.get(column) != "" for row in rows)]
    columns: list[tuple[str, ...]] = []
    for column in filled:
        if column.endswith(INTERVAL_ENDS[1]) and column.replace("_high", "_low") in filled:
            continue
        high = column[:-len(INTERVAL_ENDS[0])] + INTERVAL_ENDS[1] if column.endswith(INTERVAL_ENDS[0]) else ""
        columns.append((column, high) if high in filled else (column,))
    return columns


def comparison_cell(row: Mapping[str, Any], column: tuple[str, ...], c: Comparison) -> str:
    metric = row["metric"]
    if len(column) == 2:
        low, high = (comparison_text(name, row.get(name), metric) for name in column)
        return cell("–" if low == "–" else f"[{low}, {high}]", numeric=True)
    name = column[0]
    value = row.get(name)
    return cell(comparison_text(name, value, metric), isinstance(value, (int, float)),
                value=repr(value) if isinstance(value, float) else None,
                class_=outcome_class(outcome(c)) if name == "verdict" else None)


def column_title(column: tuple[str, ...]) -> str:
    if len(column) == 2:
        stem = column[0][:-len(INTERVAL_ENDS[0])]
        return "interval" if stem == "ci" else f"{stem.replace('_', ' ')} interval"
    return column[0].replace("_", " ")


def comparison_section(analysis: Analysis) -> Optional[Section]:
    """comparisons.csv's rows under a header row per metric, differences in the verdicts' units."""
    rows = comparison_rows(analysis.comparisons)
    if not rows:
        return None
    columns = comparison_columns(rows, comparison_header(analysis.comparisons))
    constant = [column for column in columns if len(column) == 1 and len(rows) > 1
                and column[0] not in ALWAYS_SHOWN and not DIFFERENCE_COLUMN.search(column[0])
                and len({str(row[column[0]]) for row in rows}) == 1]
    columns = [column for column in columns if column not in constant]
    numeric = [len(column) == 2 or any(isinstance(row.get(column[0]), (int, float)) for row in rows)
               for column in columns]
    body_rows: list[list[str]] = []
    previous = None
    for row, c in zip(rows, analysis.comparisons):
        if row["metric"] != previous:
            body_rows.append([element("th", esc(metric_title(row["metric"])), colspan=len(columns),
                                      scope="rowgroup", class_="rowgroup")])
        previous = row["metric"]
        body_rows.append([comparison_cell(row, column, c) for column in columns])
    text = (f"Every group against its baseline on every key metric, as in {COMPARISONS_CSV} "
            "(full precision there): differences are group − baseline, accuracies in percentage "
            "points; p holm: the p-value after Holm's adjustment over the groups; prob "
            "improvement: the share of (group run, baseline run) pairs in which the group's value "
            "is the higher.")
    if any(c.equivalence is not None for c in analysis.comparisons):
        text += (" tost: the equivalence test within ±margin (--equivalence), its interval at the "
                 "tost ci level, the one-sided p-values against −margin (lower) and +margin "
                 "(upper), the larger of them (tost p) and after Holm.")
    if constant:
        text += " In every row: " + "; ".join(
            f"{column_title(column)} {comparison_text(column[0], rows[0][column[0]], rows[0]['metric'])}"
            for column in constant) + "."
    listing = table([column_title(column) for column in columns], body_rows, numeric,
                    class_="comparisons")
    return Section("Comparisons", element("p", esc(text)) + folded(
        f"All {len(rows)} comparisons", listing, len(rows) <= OPEN_ROWS), "comparisons")


def shown_settings(jobs: Sequence[Job], grouping: Grouping) -> list[str]:
    """The varying settings that tell groups apart (groups.label_keys), regularizer first."""
    return label_keys([job.settings for job in jobs if job.settings is not None], grouping.varying)


def run_columns(header: Sequence[str], settings: Sequence[str]) -> list[str]:
    """summary.csv's job, status, regularizer, the settings that tell groups apart and the seed,
    then the group table's metrics and why a run failed."""
    metrics = [key for key, _, _ in TABLE_COLUMNS if key in header]
    shown = [key for key in settings if key in header and key != REGULARIZER_KEY]
    return ["job", "status", REGULARIZER_KEY, *shown, "seed", *metrics, "detail"]


def run_section(jobs: Sequence[Job], grouping: Grouping) -> Section:
    header, rows = csv_rows(jobs, grouping)
    columns = run_columns(header, shown_settings(jobs, grouping))
    titles = {key: title for key, title, _ in TABLE_COLUMNS}
    numeric = [column == "seed" or column in titles for column in columns]
    body = []
    for row in rows:
        cells = []
        for column, num in zip(columns, numeric):
            value = row.get(column, "")
            text = f"{value:.4f}" if isinstance(value, float) else ("–" if value == "" else value)
            cells.append(cell(text, num, value=value if isinstance(value, (int, float)) else None,
                              class_=("status " + str(value)) if column == "status" else None,
                              key=column))
        body.append(cells)
    failed = [job for job in jobs if not job.completed]
    text = (f"{len(jobs)} jobs: {status_counts(jobs)}. One row per job folder, as in {SUMMARY_CSV} "
            "(every metric there); a run that failed or has not finished is not averaged.")
    parts = [element("p", esc(text)),
             folded(f"All {len(rows)} runs", table([titles.get(column, column) for column in columns],
                                                   body, numeric, class_="runs"),
                    len(rows) <= OPEN_ROWS)]
    if failed:
        parts.insert(1, problem_list(failed))
    return Section("Runs", "\n".join(parts), "runs")


def problem_list(failed: Sequence[Job]) -> str:
    items = []
    for job in failed:
        detail = f": {esc(job.detail)}" if job.detail else ""
        overrides = f" <code>{esc(shlex.join(job.overrides))}</code>" if job.overrides else ""
        items.append(element("li", f"<code>{esc(job.name)}</code> <strong>{esc(job.status)}</strong>"
                                   f"{detail}{overrides}"))
    return element("h3", "Runs that did not complete") + element("ul", "".join(items), class_="problems")


# --- the sections other modules write as markdown ----------------------------------------------------

IMAGE_LINE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
# Python-Markdown's processors for raw HTML, entities, links and images (3.x registry names): off,
# so text is only ever text and nothing points outside the page.
UNSAFE_PROCESSORS = {"preprocessors": ("html_block",),
                     "inlinePatterns": ("html", "entity", "autolink", "automail", "link",
                                        "image_link", "reference", "image_reference",
                                        "short_reference", "short_image_ref")}


def markdown_converter() -> Any:
    import markdown

    converter = markdown.Markdown(extensions=["tables"])
    for registry, names in UNSAFE_PROCESSORS.items():
        for name in names:
            getattr(converter, registry).deregister(name, strict=False)
    return converter


def markdown_html(text: str, converter: Any) -> str:
    """One markdown block as HTML, tables in their own scrolling box."""
    converter.reset()
    converted = converter.convert(text)
    return converted.replace("<table>", '<div class="scroll"><table>').replace("</table>", "</table></div>")


def image_files(part: str) -> Optional[list[tuple[str, str]]]:
    """(file, alt text) of each line of a part made only of ``![alt](file)`` lines, else None."""
    lines = [line.strip() for line in part.strip().splitlines() if line.strip()]
    matches = [IMAGE_LINE.match(line) for line in lines]
    return [(m.group(2), m.group(1)) for m in matches] if lines and all(matches) else None


def markdown_sections(parts: Sequence[str], figures: "FigureSet") -> list[Section]:
    """summary.md parts ("## Title", then its blocks) as Sections; an image line becomes the
    embedded figure of that file (figures not drawn are left out)."""
    converter = markdown_converter()
    sections: list[Section] = []
    for part in parts:
        if part.startswith("## "):
            sections.append(Section(part[3:].strip(), ""))
            continue
        if not sections:
            sections.append(Section("Notes", ""))
        files = image_files(part)
        items = [line for line in part.splitlines() if line.strip()]
        if files is not None:
            sections[-1].body += "".join(figures.take(name, alt) for name, alt in files)
        elif len(items) > OPEN_ROWS and all(line.startswith("- ") for line in items):
            sections[-1].body += folded(f"{len(items)} notes", card_grid(part, converter), False)
        else:
            sections[-1].body += card_grid(part, converter)
    return sections


def card_grid(part: str, converter: Any) -> str:
    """A block of several "title, table" pairs (the calibration panel's metrics) as a grid of
    cards, each pair side by side at wide windows; any other block as it is."""
    blocks = [block for block in re.split(r"\n\s*\n", part) if block.strip()]
    tables = [i for i, block in enumerate(blocks) if block.lstrip().startswith("|")]
    if len(tables) < 2:
        return markdown_html(part, converter)
    cards, start = [], 0
    for index in tables:
        cards.append(element("div", "".join(markdown_html(block, converter)
                                            for block in blocks[start:index + 1]), class_="card"))
        start = index + 1
    rest = "".join(markdown_html(block, converter) for block in blocks[start:])
    return element("div", "".join(cards), class_="cards") + rest


# --- figures ----------------------------------------------------------------------------------------

def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def render_figure(figure: Any, format_: str) -> bytes:
    """The figure's file in memory; SVG without its date and with fixed ids, so the same sweep
    gives the same page."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "regbench-report"}):
        figure.savefig(buffer, format=format_, **({"metadata": {"Date": None}} if format_ == "svg" else {}))
    return buffer.getvalue()


def figure_uri(folder: Path, name: str, figure: Any) -> Optional[str]:
    """A data: URI of the figure; None for a figure with no axes (a plot that was skipped drawn as
    its reason: the page says it in the text)."""
    if hasattr(figure, "savefig"):
        if not figure.axes:
            return None
        svg = render_figure(figure, "svg")
        if len(svg) <= SVG_LIMIT:
            return data_uri(MIME_TYPES[".svg"], svg)
        written = folder / name
        png = written.read_bytes() if written.suffix == ".png" and written.is_file() else \
            render_figure(figure, "png")
        return data_uri(MIME_TYPES[".png"], png)
    path = folder / Path(figure)
    return data_uri(MIME_TYPES.get(path.suffix.lower(), "application/octet-stream"), path.read_bytes())


@dataclass
class FigureSet:
    """The report's figures, each embedded once, in the first place that asks for it."""

    folder: Path
    figures: Mapping[str, Any]
    used: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def take(self, name: str, alt: str = "") -> str:
        """The figure with its caption (``CAPTIONS``, else ``alt``, else the file's name), or ""
        when it was placed already, was not drawn or shows no plot."""
        if name in self.used or name not in self.figures:
            return ""
        self.used.add(name)
        try:
            uri = figure_uri(self.folder, name, self.figures[name])
        except OSError as error:
            self.problems.append(f"{name} could not be read ({error.strerror or error})")
            return ""
        if uri is None:
            return ""
        caption = CAPTIONS.get(name) or alt[:1].upper() + alt[1:] or Path(name).stem.replace("_", " ")
        return element("figure", f'<img src="{uri}" alt="{esc(caption)}" loading="eager">'
                                 + element("figcaption", f"{esc(caption)} <code>{esc(name)}</code>"))

    def rest(self) -> str:
        return "".join(self.take(name) for name in self.figures)


# --- commands to reproduce ----------------------------------------------------------------------------

def sweep_command(sweep: Path) -> Optional[str]:
    """``python -m regbench -m <overrides>`` from Hydra's multirun.yaml (the task overrides, then
    Hydra's own but for the -m that set hydra.mode); None without a readable file."""
    from omegaconf import OmegaConf

    try:
        config = OmegaConf.load(sweep / MULTIRUN_FILE)
        task = OmegaConf.select(config, "hydra.overrides.task", default=None)
        hydra = OmegaConf.select(config, "hydra.overrides.hydra", default=None)
    except Exception:  # a missing, torn or hand-written file: omegaconf raises several types
        return None
    overrides = [*(task or []), *(o for o in hydra or [] if o != "hydra.mode=MULTIRUN")]
    if not all(isinstance(o, str) for o in overrides):
        return None
    return shlex.join(["python", "-m", "regbench", "-m", *overrides])


def report_command(report: HtmlReport) -> str:
    options = [option for selector in report.baseline for option in ("--baseline", selector)]
    if report.rank_metric != TEST_ACC:
        options += ["--rank-metric", report.rank_metric]
    if report.margins:
        options += ["--equivalence",
                    *(f"{key}={margin!r}" for key, margin in report.margins.items())]
    return shlex.join(["python", "-m", "regbench.report", *map(str, report.sweeps), *options])


def command_block(command: str) -> str:
    return element("pre", element("code", esc(command)))


def reproduce_section(report: HtmlReport) -> Section:
    parts = []
    for sweep in report.sweeps:
        command = sweep_command(Path(sweep))
        where = element("code", esc(sweep))
        if command:
            parts += [element("p", f"The sweep in {where}, as Hydra recorded it in "
                                   f"<code>{MULTIRUN_FILE}</code>:"), command_block(command)]
        else:
            parts.append(element("p", f"{where} has no readable <code>{MULTIRUN_FILE}</code> "
                                      "(not a Hydra multirun): each run's command is below."))
    parts += [element("p", "This report:"), command_block(report_command(report))]
    runs = "\n".join(shlex.join(["python", "-m", "regbench", *job.overrides])
                     for job in report.jobs if job.overrides)
    if runs:
        parts.append(folded("Each run on its own (its .hydra/overrides.yaml)", command_block(runs),
                            False))
    return Section("Commands to reproduce", "\n".join(parts), "reproduce")


# --- the page -------------------------------------------------------------------------------------------

# Where calibration_panel puts its table among the converted markdown parts.
TABLE_MARKER = "REGBENCH-CALIBRATION-TABLE"


def title_of(sweeps: Sequence[Path]) -> str:
    if len(sweeps) == 1:
        return f"Sweep {Path(sweeps[0]).resolve().name}"
    return "Sweeps " + ", ".join(str(sweep) for sweep in sweeps)


def calibration_rows(groups: Sequence[Group], columns: Sequence[str]) -> list[list[str]]:
    """A header row per metric, then a row per group: mean ± std over its seeds under each
    calibrator, the lowest mean of each column in bold (all these metrics: lower is better)."""
    rows: list[list[str]] = []
    for metric in METRICS:
        keys = [metric_key(metric, name) for name in columns]
        if not any(present(groups, key) for key in keys):
            continue
        rows.append([element("th", f"test/{esc(metric)} <span class=\"muted\">lower is better</span>",
                             colspan=len(columns) + 2, scope="rowgroup", class_="rowgroup")])
        means = [[mean_or_none(group, key) for key in keys] for group in groups]
        best = [min((m[i] for m in means if m[i] is not None), default=None) for i in range(len(keys))]
        for group, group_means in zip(groups, means):
            done = group.completed
            cells = [cell(group.label, class_="label"), cell(len(done), numeric=True)]
            cells += [cell(format_mean_std(finite_values(done, key), CALIBRATION_SPEC, len(done)),
                           numeric=True, value=None if mean is None else repr(mean), key=key,
                           class_="best" if mean is not None and mean == low else None)
                      for key, mean, low in zip(keys, group_means, best)]
            rows.append(cells)
    return rows


def calibration_table(groups: Sequence[Group]) -> str:
    """summary.md's calibration tables (one per metric) as one table: the same cells, one header."""
    columns = [name for name in CALIBRATOR_COLUMNS
               if any(present(groups, metric_key(metric, name)) for metric in METRICS)]
    rows = calibration_rows(groups, columns)
    if not rows:
        return ""
    return table(["settings", "seeds", *columns], rows, [False] + [True] * (len(columns) + 1),
                 class_="calibration")


def calibration_panel(report: HtmlReport, figures: FigureSet) -> list[Section]:
    """summary.md's Calibration section, its tables as one (calibration_table), with the
    reliability and confidence figures."""
    groups = report.grouping.groups
    markdown_tables = calibration_table_markdown(groups)
    parts = [TABLE_MARKER if part == markdown_tables else part
             for part in calibration_section(report.grouping)]
    sections = markdown_sections(parts, figures)
    for section in sections:
        section.body = section.body.replace(f"<p>{TABLE_MARKER}</p>", calibration_table(groups))
    drawn = "".join(figures.take(name) for name in CALIBRATION_FIGURES)
    if drawn and not sections:
        sections = [Section("Calibration", "")]
    if sections:
        sections[0].body += drawn
    return sections


def body_sections(report: HtmlReport, figures: FigureSet) -> list[Section]:
    grouping, analysis = report.grouping, report.analysis
    markdown_parts = [*ranking_section(analysis), *shift_section(grouping, analysis.selectors),
                      *ood_section(grouping.groups), *ensemble_section(report.ensembles)]
    sections = [verdict_section(analysis), group_section(report.jobs, grouping),
                comparison_section(analysis), *markdown_sections(markdown_parts, figures),
                *calibration_panel(report, figures),
                *markdown_sections([*probe_sections(grouping.groups), *merge_section(report.jobs)],
                                   figures)]
    if other := figures.rest():
        sections.append(Section("Figures", other, "figures"))
    sections += [run_section(report.jobs, grouping), reproduce_section(report)]
    return [section for section in sections if section is not None]


def warnings_of(report: HtmlReport, figures: FigureSet) -> list[str]:
    """The page's warnings, as HTML."""
    failed = [job for job in report.jobs if not job.completed]
    lines = []
    if failed:
        lines.append(esc(f"{len(failed)} of {len(report.jobs)} jobs did not complete "
                         f"({status_counts(failed)}): they are not averaged; see ")
                     + '<a href="#runs">Runs</a>.')
    lines += map(esc, unusable_calibration_files(report.grouping.groups))
    lines += map(esc, figures.problems)
    return lines


def render_page(report: HtmlReport) -> str:
    figures = FigureSet(Path(report.sweeps[0]), report.figures)
    sections = body_sections(report, figures)
    title = title_of(report.sweeps)
    done = sum(job.completed for job in report.jobs)
    baseline = " ".join(f"{key}={value}" for key, value in report.analysis.selectors)
    varying = shown_settings(report.jobs, report.grouping)
    facts = (f"{len(report.jobs)} jobs ({done} completed), {len(report.grouping.groups)} groups, "
             f"baseline {baseline}; varying: {', '.join(varying) or 'nothing'}.")
    nav = " ".join(element("a", esc(section.title), href=f"#{section.anchor or slug(section.title)}")
                   for section in sections)
    warnings = "".join(element("li", line) for line in warnings_of(report, figures))
    header = (element("h1", esc(title)) + element("p", esc(facts), class_="facts")
              + (element("ul", warnings, class_="warnings") if warnings else "")
              + element("nav", nav))
    body = "\n".join(section.html() for section in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
            f"<header>{header}</header>\n{body}\n<footer>Written by regbench-report; every number at "
            f"full precision in {esc(SUMMARY_CSV)}, {esc(COMPARISONS_CSV)} and the other CSV files "
            "next to this page.</footer>\n</main>\n</body>\n</html>\n")


# Readable at any width: text column up to 72 rem, tables scroll inside their own box, long
# words (paths, overrides) wrap instead of widening the page. Verdict colours are those of
# comparisons.png (Okabe & Ito: bluish green better, vermillion worse, blue for a difference with
# no better direction), always next to the word, so colour is never the only cue.
STYLE = """
:root { color-scheme: light; --text: #1f2328; --muted: #59636e; --line: #d1d9e0;
  --soft: #f6f8fa; --link: #0072b2; --better: #009e73; --worse: #d55e00; --neutral: #0072b2; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--text); background: #fff; line-height: 1.5; font-size: 16px;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  overflow-wrap: anywhere; }
main { max-width: 82rem; margin: 0 auto; padding: 1.5rem 1rem 3rem; }
h1 { font-size: 1.75rem; margin: 0 0 .25rem; }
h2 { font-size: 1.35rem; margin: 2.25rem 0 .75rem; padding-bottom: .3rem;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.25rem 0 .4rem; }
p, ul { max-width: 60rem; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .875em; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: .75rem;
  white-space: pre-wrap; overflow-wrap: anywhere; max-width: 100%; }
nav { display: flex; flex-wrap: wrap; gap: .25rem .5rem; margin: .75rem 0 0; font-size: .9rem; }
nav a { color: var(--link); text-decoration: none; border: 1px solid var(--line);
  border-radius: 999px; padding: .1rem .6rem; }
.facts, .muted, figcaption, footer { color: var(--muted); }
.warnings { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px;
  padding: .5rem .75rem .5rem 2rem; max-width: none; }
.lead { font-weight: 600; }
.scroll { overflow-x: auto; max-width: 100%; margin: .5rem 0 1rem; }
table { border-collapse: collapse; font-size: .8125rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: .3rem .4rem; vertical-align: top;
  overflow-wrap: normal; }
thead th { background: var(--soft); text-align: left; vertical-align: bottom; }
th.num { text-align: right; } td.num { text-align: right; white-space: nowrap; }
td[style*="right"] { white-space: nowrap; }
tbody th { text-align: left; font-weight: 600; }
th.rowgroup { background: #eef1f4; text-align: left; font-weight: 600; padding-top: .45rem; }
td.best { font-weight: 700; } .nowrap { white-space: nowrap; }
td.label { min-width: 8rem; }
tbody tr:nth-child(even) { background: #fbfcfd; }
.swatch { display: inline-block; min-width: 1.4em; border-radius: 999px;
  text-align: center; font-size: .75rem; font-weight: 700; border: 1px solid #0003; }
table.matrix td.verdict, table.matrix thead th.num { text-align: center; white-space: nowrap; }
.verdict .diff { display: block; font-weight: 600; }
.verdict .word { display: block; font-size: .75rem; }
.better { background: #d5f0e7; } .worse { background: #fbe3d3; }
.neutral { background: #dbeefa; } .same { background: #fff; } .few { background: #f3f3f3; color: var(--muted); }
td.better, li.better { border-left: 4px solid var(--better); }
td.worse, li.worse { border-left: 4px solid var(--worse); }
td.neutral, li.neutral { border-left: 4px solid var(--neutral); }
ul.verdicts { list-style: none; padding-left: 0; }
ul.verdicts li { padding: .2rem .5rem; margin: .2rem 0; border-radius: 4px; }
.legend { display: flex; flex-wrap: wrap; gap: .35rem; font-size: .8rem; max-width: none; }
.chip { border: 1px solid var(--line); border-radius: 4px; padding: .05rem .45rem; }
.warn, td.status.failed, td.status.diverged, td.status.unreadable { color: #9a3412; }
td.status.unfinished { color: var(--muted); }
details { margin: .5rem 0; } summary { cursor: pointer; font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(30rem, 1fr)); gap: 0 1.25rem; }
.card p { margin: .75rem 0 0; font-size: .9rem; }
figure { margin: 1.25rem 0; } figure img { display: block; max-width: 100%; height: auto;
  border: 1px solid var(--line); border-radius: 6px; }
figcaption { font-size: .875rem; margin-top: .35rem; }
footer { margin-top: 3rem; font-size: .85rem; border-top: 1px solid var(--line); padding-top: .75rem; }
"""
