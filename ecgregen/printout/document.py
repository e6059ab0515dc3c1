"""What a printed document is made of: the ECG as the page draws it, pages of worded text around it, and the
formats it is drawn in.

The words are made by :mod:`ecgregen.printout.content`, the ECG by :mod:`ecgregen.printout.sources`, and
:mod:`ecgregen.printout.render` draws them; these types are all the three share, so the renderer never looks into a
service result and the wording never into matplotlib - and a caller checks a format without importing matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ecgregen.ecg import Ecg
from ecgregen.printout.paper import Paper


class PrintFormat(StrEnum):
    PDF = "pdf"
    PNG = "png"
    SVG = "svg"


CONTENT_TYPES: dict[PrintFormat, str] = {PrintFormat.PDF: "application/pdf", PrintFormat.PNG: "image/png",
                                         PrintFormat.SVG: "image/svg+xml"}


def parse_format(name: str) -> PrintFormat:
    """A print format by name or file suffix ("pdf", ".PNG"); raises ValueError naming the choices."""
    key = name.strip().lower().removeprefix(".")
    try:
        return PrintFormat(key)
    except ValueError:
        raise ValueError(f"unknown print format {name!r}; one of {', '.join(PrintFormat)}") from None


class Units(StrEnum):
    """What one unit of the page's 10 mm/unit is."""

    MV = "mV"
    NU = "NU"  # z-scored per lead (most shared PTB-XL records): drawn 10 mm per NU, and the page says so


@dataclass(frozen=True)
class PrintEcg:
    """An ECG as the page draws it: the samples (standard lead order), what one unit is, and which leads were not
    recorded as such - `derived` computed from others when the file was read (marked on the page), `absent` not
    recorded at all (a monitor that sends 3 leads: left blank, never drawn as a flat line)."""

    ecg: Ecg
    units: Units = Units.MV
    derived: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class Page:
    """One page: a bold title line, two header columns of worded lines (the renderer wraps them and cuts what does
    not fit, marking the cut), the ECG on the grid - or, when there is none, why - and two footer lines (scale;
    what made the page)."""

    title: str
    left: tuple[str, ...]
    right: tuple[str, ...]
    ecg: PrintEcg | None
    no_signal: str = ""
    footer: tuple[str, ...] = ()


@dataclass(frozen=True)
class Document:
    paper: Paper
    pages: tuple[Page, ...]
