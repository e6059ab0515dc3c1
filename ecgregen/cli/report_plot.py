"""`client report --plot`: the query's 12 leads beside its top-3 neighbours', and its median beat with the fiducials the
server measured the intervals between (matplotlib, imported only to plot)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ecgregen.ecg import STANDARD_LEADS, Ecg, ecg_from_array
from ecgregen.printout.sources import neighbour_signals
from ecgregen.records import WfdbSignal
from ecgregen.settings import DEMO_PTBXL

# How each fiducial of the median beat is drawn (FIDUCIALS of ecgregen.measure): a colour per wave, onsets dashed and
# ends dotted, as the column's title says (a legend would cover the beat or the title).
FIDUCIAL_STYLE = {
    "p_onset": ("tab:green", "--"), "p_offset": ("tab:green", ":"), "qrs_onset": ("tab:red", "--"),
    "qrs_offset": ("tab:red", ":"), "t_end": ("tab:purple", ":"),
}
FIDUCIAL_KEY = "P green, QRS red, T purple; -- onset, ·· end"


def plot_report(query: WfdbSignal, query_name: str, result: dict, folders: Sequence[Path], out: Path) -> None:
    """The query beside its top-3 neighbours, each titled with report and score, and the query's median beat with its
    fiducials (when `result` carries it: the request asked for it); a neighbour's signal is looked for in `folders`
    and the demo corpus (PTB-XL layout)."""
    # Accepted by the server, so it is a valid ECG: checked here again only to plot it in standard lead order.
    ecg = ecg_from_array(query.signal, query.sampling_rate_hz, query.lead_names, query.units)
    neighbours = result["neighbours"][:3]
    signals = [trace.ecg if trace else None for trace in neighbour_signals(neighbours, [*folders, DEMO_PTBXL])]
    _plot(ecg, query_name, result, signals, out)


def _plot(query: Ecg, query_name: str, result: dict, neighbour_ecgs: Sequence[Ecg | None], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = "report_en" if result["report_language"] == "en" else "report"  # the neighbours in the report's language
    columns = [(f"query {query_name}", query)] + [
        (f"#{i + 1} ecg {n['ecg_id']}  score {n['score']:.3f}\n{_wrap(n[shown])}", ecg)
        for i, (n, ecg) in enumerate(zip(result["neighbours"][:3], neighbour_ecgs))
    ]
    fig, axes = plt.subplots(12, len(columns) + 1, figsize=(4.2 * (len(columns) + 1), 11), sharex="col",
                             squeeze=False)
    _plot_median_beat(axes[:, -1], result.get("measurements"))
    for col, (title, ecg) in enumerate(columns):
        axes[0, col].set_title(title, fontsize=8, loc="left")
        for row, lead in enumerate(STANDARD_LEADS):
            ax = axes[row, col]
            if ecg is not None:
                t = np.arange(ecg.n_samples) / ecg.sampling_rate_hz
                ax.plot(t, ecg.signal[row], lw=0.6, color="black" if col == 0 else "tab:blue")
            else:
                ax.text(0.5, 0.5, "signal not available here", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            ax.set_yticks([])
            ax.tick_params(labelsize=6)
            if col == 0:
                ax.set_ylabel(lead, rotation=0, labelpad=14, fontsize=8)
    for ax in axes[-1, :-1]:
        ax.set_xlabel("s", fontsize=7)
    present = [d for d in result.get("diagnoses", []) if d["present"]]
    diagnoses = ", ".join(f"{d['code']} {d['probability']:.2f}" for d in present) or "none present"
    fig.suptitle(f"Generated report: {_wrap(result['report'], 120)}\nDiagnoses: {_wrap(diagnoses, 140)}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_median_beat(axes: Sequence, measurements: dict | None) -> None:
    """One column: the 12 leads of the median beat in ms from its alignment point (the R wave: the fiducials' time
    0), a vertical line at each fiducial found, the cart line above; why there is no beat where there is none."""
    from ecgregen.client import cart_values_line

    beat = (measurements or {}).get("median_beat")
    title = f"median beat ({FIDUCIAL_KEY})" if beat else "median beat"
    axes[0].set_title(title + (f"\n{_wrap(cart_values_line(measurements), 52)}" if measurements else ""),
                      fontsize=8, loc="left")
    if beat is None:
        why = "not measured (see the warnings)" if measurements is None else "no median beat could be formed"
        axes[0].text(0.5, 0.5, why, ha="center", va="center", fontsize=7, transform=axes[0].transAxes)
    samples_of = {lead["name"]: lead["samples"] for lead in beat["leads"]} if beat else {}
    for lead, ax in zip(STANDARD_LEADS, axes):
        ax.set_yticks([])
        ax.tick_params(labelsize=6)
        if lead not in samples_of:
            continue
        samples = np.asarray(samples_of[lead])
        ax.plot((np.arange(samples.size) - beat["r_index"]) / beat["rate_hz"] * 1e3, samples, lw=0.8, color="black")
        for name, ms in beat["fiducials_ms"].items():
            color, style = FIDUCIAL_STYLE.get(name, ("tab:gray", "-"))
            ax.axvline(ms, color=color, ls=style, lw=0.8)
    axes[-1].set_xlabel("ms from the beat's alignment point (R)", fontsize=7)


def _wrap(text: str, width: int = 48) -> str:
    return "\n".join(textwrap.wrap(text, width)[:3])
