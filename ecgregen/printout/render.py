"""Drawing a :class:`~ecgregen.printout.document.Document` as PDF, PNG or SVG bytes, with matplotlib.

Why matplotlib and not an ECG plotting package: the two on the index were checked (2026-12-03). ``pmecg`` 0.3.0 is
GPL-3.0-or-later, which this Apache-2.0 project cannot ship inside itself. ``ecg_plot`` 0.3.0 (MIT) draws a chart of
its own size - rows grow with the signal's amplitude and the chart is scaled to fit a page, which changes the
paper's scale -, cannot lay a recording shorter than 10 s on a 10 s strip (its window must lie inside the
recording, so the chart shrinks with it), labels every amplitude mV (a z-scored NU record would be mislabelled),
has no place for a header or evidence pages, and needs CairoSVG and the system's Cairo for PDF and PNG. matplotlib
is already a dependency and does all of it here.

Why it is drawn the way it is:

* One Axes covers the whole paper with data coordinates in millimetres, and the figure is the paper's size in
  inches: 1 mm of data is 1 mm of paper in the PDF and ``dpi / 25.4`` pixels in the PNG. Nothing is fitted or
  cropped (no ``bbox_inches="tight"``), so the scale on the page is the scale printed beside it.
* Few, large artists: the minor and the major grid are one path each, all traces of a page one line (NaN between
  leads), so a page costs tens of milliseconds, not one artist per grid line.
* Several pages go to one PDF as pages; a PNG or SVG, which hold one picture, gets the pages one below the other
  at the same scale.
* Text stays text: the PDF's in Helvetica, one of the PDF core fonts every reader has (``pdf.use14corefonts``:
  embedding a TrueType subset cost 250 ms a page), the SVG's as ``<text>`` (``svg.fonttype`` "none"), so a reader
  can search and copy the report and the tests read every word on the page. These rcParams are set once when this
  module is imported and never changed, and one document is drawn at a time (a lock): matplotlib is not documented
  as thread-safe, and the server renders in worker threads (the GIL serialises the work anyway).
"""

from __future__ import annotations

import io
import math
import textwrap
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch, Rectangle
from matplotlib.path import Path as MplPath

from ecgregen.ecg import STANDARD_LEADS
from ecgregen.printout.document import Document, Page, PrintEcg, PrintFormat
from ecgregen.printout.paper import (
    LEAD_ROWS,
    MAJOR_MM,
    MINOR_MM,
    MM_PER_INCH,
    MM_PER_S,
    MM_PER_UNIT,
    RHYTHM_LEAD,
    STRIP_S,
    PageGeometry,
    column_windows,
    geometry,
)

matplotlib.rcParams.update({"pdf.use14corefonts": True, "svg.fonttype": "none", "svg.hashsalt": "ecgregen"})

DEFAULT_DPI = 150  # PNG: 5.9 px per mm - a 1 mm square is 6 px; 200 looks finer and costs 1.8x the time
_LOCK = threading.Lock()
_PT_PER_MM = 72 / MM_PER_INCH
_MINOR_COLOR, _MAJOR_COLOR = "#f6c4c4", "#e58080"
_TRACE_MM = 0.3
_TEXT_PT, _TITLE_PT, _LABEL_PT, _FOOTER_PT = 6.8, 9.5, 8.0, 6.0
_LINE_MM = 3.0  # header line pitch at _TEXT_PT
_CHAR_EM = 0.58  # DejaVu Sans' mean advance per character, in em: how many characters a column's line holds
_PAGE_GAP_MM = 4.0  # between pages stacked in one PNG / SVG
_PNG_COMPRESSION = 1  # zlib level: the default 6 spent half the page's time compressing the grid


@dataclass(frozen=True)
class _Type:
    """How one output sets its text: the font's regular weight, and characters the font cannot show, replaced."""

    regular: str
    substitutes: dict[int, str]

    def __call__(self, text: str) -> str:
        return text.translate(self.substitutes)


# The PDF's Helvetica (a PDF core font: nothing embedded, a fraction of the time) is "medium" where DejaVu Sans is
# "normal" (asking each for its own regular weight keeps matplotlib from warning of a substitute on every page), and
# knows Windows-1252 only: German, Swedish and English reports print whole, other characters as "?" - the few a
# report or an LLM's rewording uses are spelled out instead.
_PDF_TYPE = _Type("medium", str.maketrans({"≥": ">=", "≤": "<=", "→": "->", "←": "<-", "≈": "~", "−": "-"}))
_RASTER_TYPE = _Type("normal", {})


def render(document: Document, fmt: PrintFormat, dpi: int = DEFAULT_DPI) -> bytes:
    """The document as `fmt` bytes: a PDF of its pages, or one PNG / SVG picture of them stacked."""
    page = geometry(document.paper)
    with _LOCK:
        buffer = io.BytesIO()
        if fmt == PrintFormat.PDF:
            metadata = {"Title": "12-lead ECG, computer-generated report (not confirmed)", "Creator": "ecgregen",
                        "CreationDate": None}
            with PdfPages(buffer, metadata=metadata) as pdf:
                for content in document.pages:
                    figure = _figure(page, 1)
                    _draw_page(_page_axes(figure, page, 0, 1), page, content, _PDF_TYPE)
                    pdf.savefig(figure)
            return buffer.getvalue()
        n = len(document.pages)
        figure = _figure(page, n)
        for i, content in enumerate(document.pages):
            _draw_page(_page_axes(figure, page, i, n), page, content, _RASTER_TYPE)
        if fmt == PrintFormat.PNG:
            _write_png(figure, dpi, buffer)
        else:
            FigureCanvasSVG(figure).print_svg(buffer, metadata={"Date": None, "Creator": "ecgregen"})
        return buffer.getvalue()


def _write_png(figure: Figure, dpi: int, out: io.BytesIO) -> None:
    """RGB (the page has no transparency: a quarter less to compress than matplotlib's RGBA), fast zlib, and the
    DPI stated in the file so that a viewer can show it at paper size."""
    from PIL import Image

    figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    image.convert("RGB").save(out, format="png", dpi=(dpi, dpi), compress_level=_PNG_COMPRESSION)


def _figure(page: PageGeometry, pages: int) -> Figure:
    height = pages * page.height_mm + (pages - 1) * _PAGE_GAP_MM
    return Figure(figsize=(page.width_mm / MM_PER_INCH, height / MM_PER_INCH), facecolor="white")


def _page_axes(figure: Figure, page: PageGeometry, index: int, pages: int) -> Axes:
    """An Axes over page `index` (from the top) whose data coordinates are the paper's millimetres."""
    total = pages * page.height_mm + (pages - 1) * _PAGE_GAP_MM
    bottom = total - (index + 1) * page.height_mm - index * _PAGE_GAP_MM
    ax = figure.add_axes((0.0, bottom / total, 1.0, page.height_mm / total))
    ax.set_xlim(0, page.width_mm)
    ax.set_ylim(0, page.height_mm)
    ax.set_axis_off()
    if pages > 1:  # the paper's edge, so that stacked pages read as pages
        ax.add_patch(Rectangle((0, 0), page.width_mm, page.height_mm, fill=False, lw=0.3, ec="#999999"))
    return ax


def _draw_page(ax: Axes, page: PageGeometry, content: Page, type_: _Type) -> None:
    _draw_grid(ax, page)
    _draw_header(ax, page, content, type_)
    if content.ecg is not None:
        _draw_ecg(ax, page, content.ecg, type_)
    else:
        text = "\n".join(textwrap.wrap(type_(content.no_signal), 90))
        ax.text(page.grid_left + page.grid_width / 2, page.grid_bottom + page.grid_height / 2, text,
                ha="center", va="center", fontsize=_TEXT_PT + 1, fontweight=type_.regular,
                bbox={"facecolor": "white", "edgecolor": "#999999", "boxstyle": "round,pad=0.6"})
    for i, line in enumerate(content.footer):
        ax.text(page.grid_left, page.grid_bottom - 3.5 - i * 2.5, type_(line), fontsize=_FOOTER_PT,
                fontweight=type_.regular, va="baseline")


def _grid_path(page: PageGeometry, step: float, skip: float | None) -> MplPath:
    """Every `step` mm line across the grid as one path, leaving out those on multiples of `skip` (drawn heavier
    by the other path)."""
    left, bottom = page.grid_left, page.grid_bottom
    right, top = left + page.grid_width, bottom + page.grid_height
    vertices: list[tuple[float, float]] = []
    for k in range(int(round(page.grid_width / step)) + 1):
        if skip is None or (k * step) % skip:
            vertices += [(left + k * step, bottom), (left + k * step, top)]
    for k in range(int(round(page.grid_height / step)) + 1):
        if skip is None or (k * step) % skip:
            vertices += [(left, bottom + k * step), (right, bottom + k * step)]
    codes = [MplPath.MOVETO, MplPath.LINETO] * (len(vertices) // 2)
    return MplPath(vertices, codes)


def _draw_grid(ax: Axes, page: PageGeometry) -> None:
    ax.add_artist(PathPatch(_grid_path(page, MINOR_MM, MAJOR_MM), lw=0.08 * _PT_PER_MM, ec=_MINOR_COLOR, fill=False))
    ax.add_artist(PathPatch(_grid_path(page, MAJOR_MM, None), lw=0.18 * _PT_PER_MM, ec=_MAJOR_COLOR, fill=False))


def _wrapped(lines: Sequence[str], width_mm: float, max_lines: int) -> list[str]:
    """The lines wrapped to a column `width_mm` wide; what does not fit in `max_lines` is cut, and the last line
    kept says so."""
    chars = max(20, int(width_mm / (_TEXT_PT / _PT_PER_MM * _CHAR_EM)))
    out = [part for line in lines for part in (textwrap.wrap(line, chars, subsequent_indent="  ") or [""])]
    if len(out) > max_lines:
        out = out[: max_lines - 1] + [out[max_lines - 1][: chars - 28].rstrip() + " ... (cut: see the full report)"]
    return out


def _draw_header(ax: Axes, page: PageGeometry, content: Page, type_: _Type) -> None:
    top = page.header_top
    ax.text(page.grid_left, top, type_(content.title), fontsize=_TITLE_PT, fontweight="bold", va="top")
    first = top - 5.5
    max_lines = max(1, int((first - page.grid_top - 1.5) / _LINE_MM))
    half = page.grid_width / 2
    for x, lines in ((page.grid_left, content.left), (page.grid_left + half + 2, content.right)):
        text = "\n".join(_wrapped([type_(line) for line in lines], half - 4, max_lines))
        ax.text(x, first, text, fontsize=_TEXT_PT, fontweight=type_.regular, va="top",
                linespacing=_LINE_MM / (_TEXT_PT / _PT_PER_MM))


def _segment(signal: np.ndarray, rate: float, start_s: float, end_s: float, x0: float, baseline: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """x, y in mm of the samples from `start_s` to `end_s` (the last sample included once: columns touch)."""
    first, last = int(math.ceil(start_s * rate - 1e-9)), min(signal.size, int(math.floor(end_s * rate + 1e-9)) + 1)
    index = np.arange(first, last)
    return x0 + (index / rate - start_s) * MM_PER_S, baseline + signal[first:last] * MM_PER_UNIT


def _draw_ecg(ax: Axes, page: PageGeometry, trace: PrintEcg, type_: _Type) -> None:
    ecg, rate = trace.ecg, trace.ecg.sampling_rate_hz
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    gap = np.array([np.nan])

    def add(lead: str, start_s: float, end_s: float, strip_s: float, row: int) -> None:
        x0 = page.x_of(strip_s)
        label = lead + ("*" if lead in trace.derived else "")
        ax.text(x0 + 1.0, page.baseline(row) + 12.0, label, fontsize=_LABEL_PT, fontweight="bold", va="baseline")
        if lead in trace.absent:
            ax.text(x0 + 1.0, page.baseline(row) + 8.0, "not recorded", fontsize=_FOOTER_PT,
                    fontweight=type_.regular, va="baseline")
            return
        x, y = _segment(ecg.signal[STANDARD_LEADS.index(lead)], rate, start_s, end_s, x0, page.baseline(row))
        xs.extend((x, gap))
        ys.extend((y, gap))

    windows = column_windows(ecg.duration_s)
    for row, leads in enumerate(LEAD_ROWS):
        for column, (lead, (start_s, end_s)) in enumerate(zip(leads, windows, strict=True)):
            add(lead, start_s, end_s, column * (STRIP_S / len(windows)), row)
    add(RHYTHM_LEAD, 0.0, min(STRIP_S, ecg.duration_s), 0.0, len(LEAD_ROWS))
    for row in range(len(LEAD_ROWS) + 1):
        pulse = np.array(page.pulse(row))
        xs.extend((pulse[:, 0], gap))
        ys.extend((pulse[:, 1], gap))
    ticks = [(page.x_of(k * STRIP_S / len(windows)), page.baseline(row))
             for row in range(len(LEAD_ROWS)) for k in range(1, len(windows))]
    for x, y in ticks:  # where one lead gives way to the next, as carts mark it
        xs.extend((np.array([x, x]), gap))
        ys.extend((np.array([y - 3.0, y + 3.0]), gap))
    (line,) = ax.plot(np.concatenate(xs), np.concatenate(ys), color="black", lw=_TRACE_MM * _PT_PER_MM,
                      solid_joinstyle="round", solid_capstyle="butt")
    line.set_clip_path(Rectangle((page.grid_left, page.grid_bottom), page.grid_width, page.grid_height,
                                 transform=ax.transData))
