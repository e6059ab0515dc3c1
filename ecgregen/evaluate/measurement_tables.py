"""The tables `ecgregen evaluate measurements` prints: the carts' comparison and the PTB-XL sections, as markdown.

Kept apart from :mod:`ecgregen.evaluate.measurements`, which measures and scores: what is measured and how it is
worded change for different reasons. Every heading names its folds and whether they were held out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ecgregen.evaluate.measurements import (
    AXIS_CLASSES,
    LISTED,
    RHYTHM_PRECEDENCE,
    SAME_ECG_ATOL_MV,
    STAGE_FIT_FOLDS,
    TARGET_FOLDS,
    fold_spec,
    share_of,
)
from ecgregen.measure import Rhythm


def fold_heading(folds: Sequence[int]) -> str:
    """How a table's folds relate to what the stage was tuned on, for its heading."""
    spec = fold_spec(folds)
    seen = sorted(set(folds) & set(STAGE_FIT_FOLDS))
    name = "fold" if len(set(folds)) == 1 else "folds"
    if not seen:
        return f"PTB-XL {name} {spec}, held out"
    return f"PTB-XL {name} {spec}, in-sample: the stage was tuned on fold(s) {fold_spec(seen)}"


def format_measurements(result: dict[str, Any]) -> str:
    parts = []
    if "carts" in result:
        parts.append(format_carts(result["carts"]))
    if "ptbxl" in result:
        parts.append(format_ptbxl(result["ptbxl"]))
    return "\n\n".join(parts) + "\n"


def _num(value: float | None, digits: int = 0, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pct(share: float | None, digits: int = 0) -> str:
    return _num(None if share is None else 100 * share, digits)


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def format_carts(carts: dict[str, Any]) -> str:
    """One table per file that states its cart's measurements, the summary, and our values for the others."""
    lines = [f"## Measurements vs the carts' own ({carts['formats_dir']}: external sample files, not a PTB-XL fold)"]
    copies: dict[str, list[str]] = {}
    for f in carts["files"]:
        if f["rows"]:
            copies.setdefault(f["ecg"], []).append(f["file"])
    for f in (f for f in carts["files"] if f["rows"]):
        others = [name for name in copies[f["ecg"]] if name != f["file"]]
        same = f"; the same ECG as {', '.join(others)}" if others else ""
        lines += ["", f"### {f['file']} ({f['format']}, {f['rate_hz']:g} Hz, {f['duration_s']:g} s{same})", "",
                  "| measurement | cart | ours | ours - cart | tolerance | within |", "|---|---|---|---|---|---|"]
        for row in f["rows"]:
            cart = _num(row["cart"], 1 if row["cart_source"] != "stated" else 0)
            if row["cart_source"] != "stated":
                cart += f" ({row['cart_source']})"
            ours = (_num(row["ours"], 1) if row["ours"] is not None
                    else f"absent: {row['absent_reason'] or '(no reason given)'}")
            diff = _num(row["difference"], 1, signed=True)
            lines.append(f"| {row['measurement']} ({row['unit']}) | {cart} | {ours} | {diff} | ±{row['tolerance']:g} "
                         f"| {_yes(row['within'])} |")
        lines.append("")
        lines.append(_ours_line(f))
    s = carts["summary"]
    lines += ["", "### Summary (carts)", "", "| ECG | files | measurements | within tolerance |", "|---|---|---|---|"]
    for ecg, names in copies.items():
        pairs = [p for p in carts["pairs"] if p["ecg"] == ecg]
        missed = [p["measurement"] for p in pairs if not p["within"]]
        lines.append(f"| {ecg} | {len(names)} | {len(pairs)} | {sum(p['within'] for p in pairs)}"
                     + (f" (not: {', '.join(missed)})" if missed else "") + " |")
    share = s["within_share"]
    rate = s["max_rate_error_bpm"]
    share_ok = share is not None and share >= s["target_within_share"]
    rate_ok = rate is not None and rate <= s["target_max_rate_error_bpm"] and not s["rate_absent_on"]
    lines += [
        "",
        f"**Within tolerance: {s['within']} of {s['pairs']} (ECG, measurement) pairs = {_pct(share)}%** "
        f"(target >= {100 * s['target_within_share']:.0f}%: {'met' if share_ok else 'NOT met'}). "
        f"{s['ecgs']} ECGs: files whose 12 leads agree sample for sample (within {SAME_ECG_ATOL_MV * 1000:g} µV) "
        "are one ECG, each of its measurements one pair, within only if ours is within against every copy that "
        "states it.",
        f"**Max rate error: {_num(rate, 1)} bpm** (target <= {s['target_max_rate_error_bpm']:g} bpm: "
        f"{'met' if rate_ok else 'NOT met'})"
        + (f"; ours absent on {', '.join(s['rate_absent_on'])}" if s["rate_absent_on"] else "") + ".",
    ]
    lines += ["", "### Held out of tuning (carts)", "",
              f"T end's threshold was tuned on {', '.join(carts['tuned_on']) or 'none'} (and their copies); "
              f"held out of tuning: {', '.join(carts['held_out']) or 'none'}. The thresholds before it (issue 25) "
              "had seen every file.", "",
              "| ECGs | pairs | within tolerance |", "|---|---|---|"]
    for label, part in (("tuned on", carts["tuned_summary"]), ("held out of tuning", carts["held_out_summary"])):
        lines.append(f"| {label} | {part['pairs']} | {part['within']} ({_pct(part['within_share'])}%) |")
    qt = s["qt_errors_ms"]
    qt_ok = bool(qt) and all(e is not None and e <= s["target_qt_ms"] for e in qt.values())
    verdict = "met" if qt_ok else "NOT met"
    lines += ["", f"**QT within {s['target_qt_ms']:g} ms of every cart that states one: {verdict}** ("
              + ", ".join(f"{name}{' (held out)' if _held(carts, name) else ''} "
                          f"{'absent' if e is None else f'{e:.0f} ms'}" for name, e in qt.items()) + ")."]
    silent = [f for f in carts["files"] if not f["rows"]]
    if silent:
        lines += ["", "Files stating no cart measurements (ours only):"]
        lines += [f"- {f['file']} ({f['format']}, {f['duration_s']:g} s): {_ours_line(f)}" for f in silent]
    lines += [f"- not read: {u['file']}: {u['reason']}" for u in carts["unreadable"]]
    return "\n".join(lines)


def _held(carts: dict[str, Any], name: str) -> bool:
    """Whether file `name` is (a copy of) an ECG held out of tuning."""
    return next(f["ecg"] for f in carts["files"] if f["file"] == name) in carts["held_out"]


def _ours_line(f: dict[str, Any]) -> str:
    ours = f["ours"]
    flagged = "; ".join(f"{lead} {'/'.join(flags)}" for lead, flags in ours["flags"].items()) or "none"
    premature = ", ".join(f"{n} {origin}" for origin, n in ours["premature"].items() if n) or "none"
    absent = "; ".join(f"{name}: {why}" for name, why in ours["missing"].items()) or "none"
    return (f"Ours: {f['cart_line']} | rhythm {ours['rhythm']}, {ours['beat_count']} beats, premature {premature} | "
            f"flagged leads: {flagged} | absent: {absent} | {f['measure_s'] * 1000:.0f} ms")


_SCORE_HEADER = ("| n | positive | precision | recall | F1 | accuracy | majority acc | always-present F1 |",
                 "|---|---|---|---|---|---|---|---|")


def _score_cells(s: dict[str, Any]) -> str:
    return (f"{s['n']} | {s['positives']} ({_pct(s['prevalence'], 1)}%) | "
            f"{_num(s['precision'], 2)} | {_num(s['recall'], 2)} | {_num(s['f1'], 2)} | {_num(s['accuracy'], 2)} | "
            f"{_num(s['majority_accuracy'], 2)} | {_num(s['always_present_f1'], 2)}")


def _ids(items: Sequence[Any], render: Any = str) -> str:
    shown = ", ".join(render(item) for item in items[:LISTED])
    return shown + (f" (+{len(items) - LISTED} more in the JSON)" if len(items) > LISTED else "") if items else "none"


def format_ptbxl(p: dict[str, Any]) -> str:
    """The PTB-XL tables: heart axis, signal quality, extra beats, pacemaker, rhythm codes."""
    folds = p["folds"]
    heading = fold_heading(folds)
    held_out = not set(folds) & set(STAGE_FIT_FOLDS)
    on_target_fold = sorted(folds) == TARGET_FOLDS
    units = p["units"]
    raw, nu = units.get("mV", 0), units.get("NU", 0)
    other = {k: v for k, v in units.items() if k not in {"mV", "NU"}}
    first = f" (the first {p['limit']} by ecg_id)" if p["limit"] else ""
    lines = [
        f"## PTB-XL annotations and rhythm codes ({heading})",
        "",
        f"{p['ptbxl']}, fold(s) {fold_spec(folds)}{first}: {p['records']} records at "
        f"{'/'.join(f'{r:g}' for r in p['rates_hz'])} Hz, {'/'.join(f'{d:g}' for d in p['durations_s'])} s - "
        f"{raw} raw (mV), {nu} band-passed "
        "0.5-40 Hz and z-scored per lead (units NU: timing intact, amplitudes and inter-lead amplitude ratios not)"
        + (f", other units {other}" if other else "") + ". "
        + ("Nothing in the measurement stage was fitted on these records: its thresholds come from folds "
           f"{fold_spec(STAGE_FIT_FOLDS)} only." if held_out else
           f"The stage's thresholds were set on folds {fold_spec(STAGE_FIT_FOLDS)}: these numbers are in-sample, "
           "not an estimate of accuracy on new ECGs."),
        f"Measured in {p['wall_time_s']} s with {p['workers']} worker(s); per record median "
        f"{1000 * p['seconds_per_record']['median']:.0f} ms, max {1000 * p['seconds_per_record']['max']:.0f} ms. "
        f"The stage failed on {len(p['failed'])} record(s)"
        + (": " + _ids(p["failed"], lambda f: f"{f['ecg_id']} ({f['error']})") if p["failed"] else "")
        + " (left out of every table below).",
    ]
    ax = p["heart_axis"]
    met = ("met" if (ax["agreement"] or 0) >= ax["target"] else "NOT met") if on_target_fold else "stated for fold 9"
    lines += [
        "", f"### Heart axis: our qrs_axis_deg vs heart_axis ({heading}; {ax['n']} records state an axis, "
        f"{ax['without_axis']} do not)", "",
        "Classes: normal -30..90 deg, left -90..-30, right 90..180, extreme/indeterminate -180..-90. PTB-XL: MID, AXL, "
        "AXR normal; ALAD left; RAD, ARAD right; SAG(M) extreme/indeterminate; LAD normal where its report says "
        "Linkstyp (-30..+30 deg), else left.", "",
        "| | agreement |", "|---|---|",
        f"| ours | **{_num(ax['agreement'], 3)}** (target {ax['target']:.2f}: {met}) |",
        f"| majority class ({ax['majority_class']}) | {_num(ax['majority_agreement'], 3)} |",
        f"| ours, every LAD taken as left | {_num(ax['agreement_lad_as_left'], 3)} |",
        "", "| PTB-XL heart_axis (class) | n | " + " | ".join([*AXIS_CLASSES, "unmeasured"]) + " |",
        "|---|---|" + "---|" * (len(AXIS_CLASSES) + 1),
    ]
    for row, counts in ax["confusion"].items():
        cells = [str(counts.get(c, 0)) for c in [*AXIS_CLASSES, "unmeasured"]]
        lines.append(f"| {row} | {sum(counts.values())} | " + " | ".join(cells) + " |")
    lines += ["", "Disagreements (ecg_id heart_axis: ours): " + _ids(
        ax["disagreements"], lambda d: f"{d['ecg_id']} {d['heart_axis']}: "
        + (f"{d['qrs_axis_deg']:.0f} deg" if d["qrs_axis_deg"] is not None else f"absent ({d['absent_reason']})"))]

    lines += ["", f"### Signal quality: our per-lead flags vs the noise columns ({heading})", "",
              "Record level: the column notes anything / any lead carries one of the flags. Lead level: each of the 12 "
              "leads of records whose note names its leads (or is blank). Blank = nothing noted. Band-passing removed "
              "most baseline drift and high-frequency noise from the NU records, hence the mV rows.", "",
              "| PTB-XL column | our flags | level | " + _SCORE_HEADER[0][2:],
              "|---|---|---|" + _SCORE_HEADER[1][1:]]
    for column, q in p["quality"].items():
        for level, scores in q["scores"].items():
            lines.append(f"| {column} | {', '.join(q['flags'])} | {level} | {_score_cells(scores)} |")
    unstated = {c: q["leads_unstated"] for c, q in p["quality"].items() if q["leads_unstated"]}
    if unstated:
        lines.append("\nNotes naming no lead (record level only): "
                     + ", ".join(f"{c} {n}" for c, n in unstated.items()) + ".")

    lines += ["", f"### Extra beats: our premature_beats vs extra_beats ({heading})", "",
              "| extra_beats | " + _SCORE_HEADER[0][2:], "|---|" + _SCORE_HEADER[1][1:]]
    for name, e in p["extra_beats"].items():
        lines.append(f"| {name} | {_score_cells(e['scores'])} |")
    typed = p["extra_beats"]["ventricular"]["left_out_kind_unstated"]
    lines.append(f"\nTyped rows leave out the {typed} record(s) whose note does not say the kind (\"1ES\", \"ES\"). "
                 "Missed (any): " + _ids(p["extra_beats"]["any extra beat"]["missed"]) + ". False alarms (any): "
                 + _ids(p["extra_beats"]["any extra beat"]["false_alarms"]) + ".")
    pm = p["pacemaker"]
    lines.append(f"\nPacemaker (column pacemaker or SCP code PACE): {pm['records']} of {pm['n']} records "
                 f"({_pct(share_of(pm['records'], pm['n']), 1)}%); the stage does not detect pacing, so "
                 "prevalence only.")

    r = p["rhythm"]
    lines += ["", f"### Rhythm: our rhythm vs the scp_codes rhythm statements ({heading})", "",
              "| code | ours | " + _SCORE_HEADER[0][2:] + " target |", "|---|---|" + _SCORE_HEADER[1][1:] + "---|"]
    for code, c in r["per_code"].items():
        s = c["scores"]
        target = ""
        if code in r["target_codes"]:
            target = (f"F1 >= {r['target']:.2f}: {'met' if (s['f1'] or 0) >= r['target'] else 'NOT met'}"
                      if on_target_fold else f"F1 >= {r['target']:.2f} on fold 9")
        lines.append(f"| {code} | {c['ours']} | {_score_cells(s)} | {target} |")
    columns = [rhythm.value for rhythm in Rhythm]
    lines += ["", "| PTB-XL rhythm (first of " + ", ".join(RHYTHM_PRECEDENCE) + ") | n | " + " | ".join(columns) + " |",
              "|---|---|" + "---|" * len(columns)]
    for label, counts in r["confusion"].items():
        lines.append(f"| {label} | {sum(counts.values())} | "
                     + " | ".join(str(counts.get(c, 0)) for c in columns) + " |")

    def example(e: dict[str, Any]) -> str:
        return (f"{e['ecg_id']} {'+'.join(e['codes']) or 'no code'} -> {e['ours']} ({_num(e['rate_bpm'])} bpm, "
                f"RR irregularity {_num(e['rr_irregularity'], 2)})")

    lines.append("")
    for code, c in r["per_code"].items():
        if c["missed"] or c["false_alarms"]:
            lines.append(f"- {code} missed: {_ids(c['missed'], example)}; "
                         f"false alarms: {_ids(c['false_alarms'], example)}")
    return "\n".join(lines)
