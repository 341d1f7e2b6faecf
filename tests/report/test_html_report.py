"""report.html on hand-built sweeps (tests/report/sweep_folders.py): parsed with the standard
library's html.parser (every image embedded and decodable, nothing outside the page, verdicts before
the tables, the numbers those of summary.csv, every string escaped, the commands to reproduce) and
rendered in headless Chromium at 1280 px (no missing image, no horizontal scroll)."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import re
import shutil
import statistics
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from sweep_folders import fake_sweep, write_calibration

from regbench import files
from regbench.files import TEMPORARY_GLOB
from regbench.report import html as html_report
from regbench.report.analysis import analyse
from regbench.report.command import main, make_report
from regbench.report.ensembles import EnsembleReport, build_ensembles
from regbench.report.groups import group_jobs
from regbench.report.html import HtmlReport, figure_uri, write_html_report
from regbench.report.jobs import load_sweeps
from regbench.report.outputs import REPORT_HTML, SUMMARY_CSV

# label_smoothing's ECE is 0.1 above none's, plus 0, 0.0001, 0.0004 by seed: a "worse" verdict.
INJECTED = '<script>alert("x")</script> & <b>not bold</b>'
SWEEP_COMMAND = "python -m regbench -m regularizer=none,dropout,label_smoothing seed=0,1,2"


def metrics(regularizer: str, seed: int) -> dict:
    shift = {"none": 0.0, "dropout": 0.002, "label_smoothing": 0.1}[regularizer]
    spread = seed ** 2 / 10_000 if regularizer == "label_smoothing" else 0.0
    return {"test/acc": 0.9 + seed / 100 + shift / 10, "test/nll": 0.3 + seed / 50,
            "test/ece": 0.02 + shift + seed / 1000 + spread, "test/ece@temperature": 0.015 + seed / 1000,
            "test/ece_adaptive": 0.03 + shift, "test/mean_confidence": 0.9 - shift,
            "gap/acc": 0.05 - seed / 100, "epochs": 3, "seconds": 1.5 + seed}


def write_multirun_yaml(folder: Path) -> None:
    """What Hydra writes in a sweep folder, reduced to the overrides the report reads."""
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {
        "hydra": [f"hydra.sweep.dir={folder}", "hydra.mode=MULTIRUN"],
        "task": ["regularizer=none,dropout,label_smoothing", "seed=0,1,2"]}}}),
        folder / "multirun.yaml")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """3 regularizers x 3 seeds with calibration files, a diverged run whose error holds HTML and
    an unfinished one; the report made by ``main`` (what python -m regbench.report runs)."""
    folder = tmp_path_factory.mktemp("html") / "sweep"
    runs = [(regularizer, seed, metrics(regularizer, seed))
            for regularizer in ("none", "dropout", "label_smoothing") for seed in range(3)]
    fake_sweep(folder, [*runs, ("dropout", 3, {"error": INJECTED}, "diverged"), ("none", 4, None)])
    for number in range(len(runs)):
        write_calibration(folder / str(number), seed=number)
    write_multirun_yaml(folder)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        main([str(folder)])
    return folder, stdout.getvalue()


class Page(HTMLParser):
    """Every element's tag and attributes in document order, the text of each section (by id)
    and each table's cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.section_text: dict[str, str] = {}
        self.cells: list[tuple[str, dict, str]] = []  # (section id, td attributes, text)
        self.section = ""
        self.cell: dict | None = None
        self.cell_text = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag == "section":
            self.section = attributes["id"]
            self.section_text[self.section] = ""
        if tag == "td":
            self.cell, self.cell_text = attributes, ""

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.cells.append((self.section, self.cell, self.cell_text.strip()))
            self.cell = None

    def handle_data(self, data):
        if self.section:
            self.section_text[self.section] += data
        if self.cell is not None:
            self.cell_text += data


def page_of(folder: Path) -> Page:
    return Page((folder / REPORT_HTML).read_text())


def summary_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / SUMMARY_CSV).open() as file:
        return list(csv.DictReader(file))


def test_python_m_regbench_report_prints_the_path_of_report_html(sweep):
    folder, stdout = sweep
    assert f"open it:      {(folder / REPORT_HTML).resolve()}" in stdout
    assert (folder / REPORT_HTML).is_file()


def test_every_image_is_a_data_uri_that_decodes_to_an_svg_or_a_png(sweep):
    images = [attributes for tag, attributes in page_of(sweep[0]).elements if tag == "img"]
    # accuracy_vs_ece, reliability, confidence_hist, comparisons (ranks: skipped, one block)
    assert len(images) == 4
    for image in images:
        kind, _, data = image["src"].partition(";base64,")
        content = base64.b64decode(data, validate=True)
        assert kind in ("data:image/svg+xml", "data:image/png")
        assert b"<svg" in content[:1000] if kind.endswith("svg+xml") else content.startswith(b"\x89PNG")
        assert image["alt"]


def test_the_page_loads_nothing_from_outside_itself(sweep):
    text = (sweep[0] / REPORT_HTML).read_text()
    page = page_of(sweep[0])
    assert not {"script", "link", "iframe", "object", "embed"} & {tag for tag, _ in page.elements}
    for tag, attributes in page.elements:
        for name in ("src", "href"):
            if name in attributes:
                assert attributes[name].startswith(("data:", "#")), (tag, attributes[name][:80])
    style = re.search(r"<style>(.*?)</style>", text, re.S).group(1)
    assert "url(" not in style and "@import" not in style
    assert not re.search(r"https?://", re.sub(r"base64,[A-Za-z0-9+/=]+", "", text))


def test_the_verdicts_come_first_then_the_tables_calibration_figures_runs_and_commands(sweep):
    folder = sweep[0]
    page = page_of(folder)
    order = [attributes["id"] for tag, attributes in page.elements if tag == "section"]
    assert order[:3] == ["verdicts", "groups", "comparisons"]
    assert order.index("calibration") < order.index("figures") < order.index("runs") < order.index("reproduce")
    # Every verdict sentence of summary.md is in the verdicts section, and nowhere before it.
    summary = (folder / "summary.md").read_text()
    lines = [line[2:] for line in summary.split("## Groups")[0].splitlines()
             if line.startswith("- ") and " vs none: " in line]
    assert len(lines) == 2 * 6  # two groups against none on the six key metrics
    assert all(line in page.section_text["verdicts"] for line in lines)
    matrix = [(attributes.get("class"), text) for section, attributes, text in page.cells
              if section == "verdicts" and "verdict" in (attributes.get("class") or "")]
    assert ("verdict worse", "+0.1002worse") in matrix  # label_smoothing's ECE: higher is worse


def test_the_tables_numbers_are_summary_csvs(sweep):
    folder = sweep[0]
    rows = summary_rows(folder)
    cells = page_of(folder).cells
    # The runs table: every run's value, full precision, in summary.csv's job order.
    runs = [(attributes["data-key"], attributes.get("data-value", ""))
            for section, attributes, _ in cells if section == "runs"]
    keys = list(dict.fromkeys(key for key, value in runs if value))  # the numeric columns
    assert keys == ["seed", "test/acc", "test/nll", "test/ece", "test/ece@temperature",
                    "test/mean_confidence", "gap/acc", "epochs", "seconds"]
    for key in keys:
        shown = [value for name, value in runs if name == key]
        assert [float(v) if v else None for v in shown] == \
            [float(row[key]) if row[key] else None for row in rows], key
    # The groups table: the mean over each group's completed seeds, shown as mean ± sample std.
    completed = [row for row in rows if row["status"] == "completed"]
    groups = [(attributes["data-value"], text) for section, attributes, text in cells
              if section == "groups" and attributes.get("data-key") == "test/acc"]
    accuracy = {regularizer: [float(row["test/acc"]) for row in completed
                              if row["regularizer"] == regularizer]
                for regularizer in ("none", "dropout", "label_smoothing")}
    assert len(groups) == 3
    for (value, text), values in zip(groups, accuracy.values()):
        assert float(value) == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert text == f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def test_every_string_is_escaped_so_a_failed_runs_error_is_text(sweep):
    page = page_of(sweep[0])
    assert "script" not in {tag for tag, _ in page.elements}
    assert "b" not in {tag for tag, _ in page.elements}
    assert INJECTED in page.section_text["runs"]
    assert "diverged" in page.section_text["runs"] and "unfinished" in page.section_text["runs"]


def test_the_commands_to_reproduce_are_the_sweeps_the_reports_and_each_runs(sweep):
    folder = sweep[0]
    text = page_of(folder).section_text["reproduce"]
    assert f"{SWEEP_COMMAND} hydra.sweep.dir={folder}" in text
    assert f"python -m regbench.report {folder}" in text
    assert "python -m regbench seed=2 regularizer=label_smoothing" in text


def test_a_sweep_of_one_group_gives_a_page_without_comparisons(tmp_path):
    folder = fake_sweep(tmp_path / "one", [("none", seed, metrics("none", seed)) for seed in range(2)])
    make_report(folder)
    page = page_of(folder)
    order = [attributes["id"] for tag, attributes in page.elements if tag == "section"]
    assert order[:2] == ["verdicts", "groups"] and "comparisons" not in order
    assert "No comparisons" in page.section_text["verdicts"]
    assert "has no readable multirun.yaml" in page.section_text["reproduce"]


def test_a_section_written_as_markdown_shows_html_as_text_and_links_nowhere(tmp_path):
    parts = ["## Notes on <i>x</i>", f"- {INJECTED} in `a<b`, **bold**",
             "[a link](https://example.com) <https://example.com> ![a picture](https://example.com/x.png)",
             "![accuracy](accuracy_vs_ece.png)", "| a | b |\n|---|---:|\n| <b>1</b> | 2 |"]
    figures = html_report.FigureSet(tmp_path, {})
    (section,) = html_report.markdown_sections(parts, figures)
    page = Page(section.html())
    assert {tag for tag, _ in page.elements} == {"section", "h2", "ul", "li", "code", "strong", "p",
                                                 "div", "table", "thead", "tbody", "tr", "th", "td"}
    text = page.section_text["notes-on-i-x-i"]
    assert section.title == "Notes on <i>x</i>" and INJECTED in text and "a<b" in text
    assert "[a link](https://example.com)" in text  # as it was written, not a link
    assert not any(name in attributes for _, attributes in page.elements for name in ("href", "src"))


def test_a_figure_is_embedded_as_svg_or_past_the_limit_as_the_png_beside_the_page(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 2))
    figure.subplots().plot([0, 1], [1, 0])
    figure.savefig(tmp_path / "plot.png")
    assert figure_uri(tmp_path, "plot.png", figure).startswith("data:image/svg+xml;base64,")
    monkeypatch.setattr(html_report, "SVG_LIMIT", 100)
    kind, _, data = figure_uri(tmp_path, "plot.png", figure).partition(";base64,")
    assert kind == "data:image/png" and base64.b64decode(data) == (tmp_path / "plot.png").read_bytes()
    sentence = Figure()
    sentence.text(0.5, 0.5, "Ranks across settings: skipped")
    assert figure_uri(tmp_path, "ranks.png", sentence) is None  # its text is in the page


def test_a_page_interrupted_while_written_leaves_the_previous_one_and_no_temporary(tmp_path, monkeypatch):
    """Ctrl-C after the new page's bytes are written, before they are renamed over the old."""
    folder = fake_sweep(tmp_path / "sweep", [("none", 0, metrics("none", 0))])
    (folder / REPORT_HTML).write_text("the previous page")
    jobs = load_sweeps([folder])
    grouping = group_jobs(jobs)
    report = HtmlReport([folder], jobs, grouping, analyse(jobs, grouping), EnsembleReport([]))

    def interrupted(handle: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_html_report(report)
    assert (folder / REPORT_HTML).read_text() == "the previous page"
    assert list(folder.rglob(TEMPORARY_GLOB)) == []


# --- rendered in a real browser ----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# Opens every <details>, then writes the page's width and its images' state into the DOM (in a
# copy of the page: report.html itself carries no script).
MEASURE = """<script>
window.addEventListener("load", () => {
  document.querySelectorAll("details").forEach(d => { d.open = true; });
  const images = [...document.images];
  const result = {scrollWidth: document.scrollingElement.scrollWidth, width: window.innerWidth,
    images: images.length,
    broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)};
  const out = document.createElement("pre");
  out.id = "measurement";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def rendered(page: Path, width: int = 1280) -> dict:
    """The measurement of a copy of ``page`` opened in headless Chromium at ``width`` pixels."""
    copy = page.with_name("measured.html")
    copy.write_text(page.read_text().replace("</body>", f"{MEASURE}</body>"))
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             f"--window-size={width},900", "--virtual-time-budget=10000", "--dump-dom",
                             copy.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="measurement">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def many_group_sweep(folder: Path) -> Path:
    """4 regularizers x 3 learning rates x 2 seeds: 12 groups, longer labels, wide tables (no
    calibration files: the figures of the main sweep are checked, the tables here)."""
    runs = [(regularizer, seed, metrics("dropout" if regularizer == "dropout" else "none", seed),
             "completed", {"lr": lr})
            for regularizer in ("none", "dropout", "label_smoothing", "confidence_penalty")
            for lr in (0.1, 0.03, 0.01) for seed in range(2)]
    return fake_sweep(folder, runs)


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (chromium) installed to render the page")
def test_the_page_renders_in_chromium_at_1280_px_with_every_image_and_no_horizontal_scroll(sweep, tmp_path):
    measurement = rendered(sweep[0] / REPORT_HTML)
    assert measurement["images"] == 4 and measurement["broken"] == [], measurement
    assert measurement["scrollWidth"] <= measurement["width"] == 1280, measurement
    measurement = rendered(tables_only_page(many_group_sweep(tmp_path / "many")))
    assert measurement["scrollWidth"] <= measurement["width"] == 1280, measurement


def tables_only_page(folder: Path) -> Path:
    """report.html of ``folder`` without figures (the main sweep's are checked): every table,
    at the cost of the tables alone."""
    jobs = load_sweeps([folder])
    grouping = group_jobs(jobs)
    analysis = analyse(jobs, grouping)
    return write_html_report(HtmlReport([folder], jobs, grouping, analysis,
                                        build_ensembles(grouping, analysis.selectors)))
