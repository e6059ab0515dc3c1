"""Where everything sits on the printed page, in millimetres of real paper: the scale, the paper sizes and the
standard 12-lead layout. Stdlib only (no drawing here), so the layout is one set of numbers that the renderer draws
and the tests measure against.

The page is the one every cart prints and every reader of ECGs knows: 25 mm/s, 10 mm/mV, a 1 mm grid with heavier
5 mm lines, four rows - I/aVR/V1/V4, II/aVL/V2/V5, III/aVF/V3/V6 (2.5 s each) and a 10 s lead II rhythm strip - each
starting with a 1 mV calibration pulse. Sizes are physical: a page printed at 100 % (no "fit to page") measures
true on paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MM_PER_S = 25.0  # paper speed
MM_PER_UNIT = 10.0  # gain: per mV (or per NU on a page of z-scored signals, which says so)
MINOR_MM, MAJOR_MM = 1.0, 5.0  # the grid
STRIP_S = 10.0  # seconds a row holds
COLUMN_S = 2.5  # seconds each lead of the 3 x 4 part holds
CALIBRATION_MM = 10.0  # the band at the start of each row that holds the calibration pulse
PULSE_S = 0.2  # the calibration pulse's width (1 unit high)
ROW_MM = 35.0  # row pitch: 7 large squares (+2 mV / -1.5 mV around the baseline)
BASELINE_BELOW_ROW_TOP_MM = 20.0  # on a heavy line; R waves go up, so more room above than below
ROWS = 4
MM_PER_INCH = 25.4

# The 3 x 4 part, row by row (each row's leads in column order), and the rhythm strip below it.
LEAD_ROWS: tuple[tuple[str, ...], ...] = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"),
                                          ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"


class Paper(StrEnum):
    """Landscape paper the page is laid out on."""

    A4 = "a4"
    LETTER = "letter"


PAPER_MM: dict[Paper, tuple[float, float]] = {Paper.A4: (297.0, 210.0), Paper.LETTER: (279.4, 215.9)}
PAPER_NAMES: dict[Paper, str] = {Paper.A4: "A4 landscape", Paper.LETTER: "US Letter landscape"}

_FOOTER_MM = 12.0  # below the grid: scale, ids, page number
_TOP_MM = 6.0  # above the header


def parse_paper(name: str) -> Paper:
    """A paper by name (case-insensitive; empty = A4); raises ValueError naming the choices."""
    key = (name or Paper.A4).strip().lower()
    try:
        return Paper(key)
    except ValueError:
        raise ValueError(f"unknown paper {name!r}; one of {', '.join(Paper)}") from None


@dataclass(frozen=True)
class PageGeometry:
    """One page's layout in mm, origin at the paper's bottom-left corner, y upwards."""

    paper: Paper
    width_mm: float
    height_mm: float

    @property
    def grid_width(self) -> float:
        return CALIBRATION_MM + STRIP_S * MM_PER_S

    @property
    def grid_height(self) -> float:
        return ROWS * ROW_MM

    @property
    def grid_left(self) -> float:
        """Centred, rounded to whole mm so that the grid's lines fall on the paper's millimetres."""
        return float(round((self.width_mm - self.grid_width) / 2))

    @property
    def grid_bottom(self) -> float:
        return _FOOTER_MM

    @property
    def grid_top(self) -> float:
        return self.grid_bottom + self.grid_height

    @property
    def strip_left(self) -> float:
        """x of time 0 of every row, after the calibration band."""
        return self.grid_left + CALIBRATION_MM

    @property
    def header_top(self) -> float:
        return self.height_mm - _TOP_MM

    def baseline(self, row: int) -> float:
        """y of row `row`'s zero line (row 0 at the top; row 3 the rhythm strip)."""
        return self.grid_top - row * ROW_MM - BASELINE_BELOW_ROW_TOP_MM

    def x_of(self, seconds: float) -> float:
        """x of a time on the strip, seconds from the strip's start."""
        return self.strip_left + seconds * MM_PER_S

    def pulse(self, row: int) -> tuple[tuple[float, float], ...]:
        """The calibration pulse of a row as a polyline: 1 unit high, :data:`PULSE_S` wide, centred in its band."""
        y0, y1 = self.baseline(row), self.baseline(row) + MM_PER_UNIT
        rise = self.grid_left + (CALIBRATION_MM - PULSE_S * MM_PER_S) / 2
        fall = rise + PULSE_S * MM_PER_S
        return ((self.grid_left + 1, y0), (rise, y0), (rise, y1), (fall, y1), (fall, y0),
                (self.strip_left - 1, y0))


def geometry(paper: Paper) -> PageGeometry:
    width, height = PAPER_MM[paper]
    return PageGeometry(paper, width, height)


def column_windows(duration_s: float) -> tuple[tuple[float, float], ...]:
    """The seconds of the recording each column of the 3 x 4 part shows.

    A recording of 10 s or more: consecutive 2.5 s (0-2.5, 2.5-5, 5-7.5, 7.5-10), as carts print. A shorter one
    cannot fill four consecutive columns without leaving the chest leads blank, so every column shows the same
    first 2.5 s (the "simultaneous" format carts offer), each column at its own place on the strip - nothing is
    stretched, and what the recording lacks stays blank.
    """
    if duration_s >= STRIP_S - 1e-6:
        return tuple((k * COLUMN_S, (k + 1) * COLUMN_S) for k in range(len(LEAD_ROWS[0])))
    end = min(COLUMN_S, duration_s)
    return tuple((0.0, end) for _ in LEAD_ROWS[0])
