"""The tables of ``ecgregen evaluate consistency`` (:mod:`ecgregen.evaluate.consistency` judges; this words what it
found): reports per source and mode, diagnoses and answers, the rhythm codes' F1 both ways, the reader's coverage,
the folds and the examples, as markdown."""

from __future__ import annotations

from ecgregen.evaluate.consistency import QUESTIONS, SOURCE_NAMES
from ecgregen.records import folds_text


def _share(tally: dict) -> str:
    if not tally["n"]:
        return "-"
    return f"{tally['contradicted']}/{tally['n']} ({100 * tally['share']:.1f} %)"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(result: dict) -> str:
    """Reports per source and mode, diagnoses and answers per source, the rhythm codes' F1 both ways, examples."""
    lines = ["| input | mode | reports contradicted | BLEU-4 (en) | micro-F1 |", "|---|---|---|---|---|"]
    for source, judged in result["sources"].items():
        for mode, row in judged["modes"].items():
            lines.append(f"| {SOURCE_NAMES[source]} | {mode} | {_share(row)} | {_number(row['bleu4'])} | "
                         f"{_number(row['f1_micro'])} |")
    lines += ["", "| input | present diagnoses contradicted: served | PTB-XL conventions (agree=False) | "
              "answers contradicted |", "|---|---|---|---|"]
    for source, judged in result["sources"].items():
        conventions = judged["diagnoses"].get("ptbxl_conventions")
        lines.append(f"| {SOURCE_NAMES[source]} | {_share(judged['diagnoses']['served'])} | "
                     f"{_share(conventions) if conventions else '-'} | {_share(judged['answers'])} |")
    rhythm = result["sources"]["ptbxl"].get("rhythm_f1")
    if rhythm:
        stated = rhythm["clinical_rhythm_stated"]
        lines += ["", "| code | F1 vs PTB-XL labels: served | PTB-XL conventions | F1 by the clinical definitions: "
                  f"served | PTB-XL conventions | clinical, the {stated['n']} ECGs with a PTB-XL rhythm statement: "
                  "served | PTB-XL conventions |", "|---|---|---|---|---|---|---|"]
        for labelled, clinical, known in zip(rhythm["ptbxl_labels"]["codes"], rhythm["clinical"]["codes"],
                                             stated["codes"]):
            lines.append(f"| {labelled['code']} | {_number(labelled['after']['f1'])} | "
                         f"{_number(labelled['before']['f1'])} | {_number(clinical['after']['f1'])} | "
                         f"{_number(clinical['before']['f1'])} | {_number(known['after']['f1'])} | "
                         f"{_number(known['before']['f1'])} |")
    read = result.get("reader_coverage")
    if read:
        lines += ["", f"Statements read from the {read['reports']:,} reports of {read['file']} (in English): "
                      f"{read['sentences_read']:.1%} of {read['sentences']:,} sentences, "
                      f"{read['reports_fully_read']:.1%} of the reports whole."]
    lines += ["", _notes(result)]
    examples = [f"- {SOURCE_NAMES[source]}, {what}: {e['record']}: \"{e['statement']}\" - {e['reason']}"
                for source, judged in result["sources"].items()
                for what, tally in [*((f"{mode} report", row) for mode, row in judged["modes"].items()),
                                    *((f"{name} diagnoses", t) for name, t in judged["diagnoses"].items()),
                                    ("answers", judged["answers"])]
                for e in tally["examples"]]
    if examples:
        lines += ["", "Examples (up to 3 per row):", *examples]
    skipped = [f"- {s['record']}: {s['reason']}" for judged in result["sources"].values() for s in judged["skipped"]]
    if skipped:
        lines += ["", "Files the server refuses (not judged):", *skipped]
    return "\n".join(lines) + "\n"


def _micro_note(micro: dict | None) -> str:
    """All codes' micro-F1, served beside the calibration's own decisions, against both truths."""
    if not micro:
        return ""
    labels, clinical = micro["ptbxl_labels"], micro["clinical"]
    return (f"; over all codes, served / PTB-XL conventions: {labels['served']:.3f} / "
            f"{labels['ptbxl_conventions']:.3f} against PTB-XL's labels, {clinical['served']:.3f} / "
            f"{clinical['ptbxl_conventions']:.3f} by the clinical definitions")


def _notes(result: dict) -> str:
    training = result["encoder_training"]
    cal = result["calibration"]
    sources = result["sources"]
    stream = sources.get("stream")
    text = (f"n = {result['n']} test records ({result.get('test', '?')}) searched against {result['n_index']} "
            f"index records ({result.get('index', '?')}), own patient left out; encoder `{result['encoder']}`: "
            f"{training['description']}; diagnoses calibrated on "
            + (f"{cal['records']} records of fold(s) {folds_text(cal['folds'])}" if cal else "nothing (raw votes)")
            + f"; wall time {result['wall_time_s']} s.")
    for key, what in (("test_folds_trained_on", "trained the encoder with their labels"),
                      ("test_folds_that_chose_an_epoch", "chose an epoch of the encoder (self-supervised)")):
        if training[key]:
            text += f" Test fold(s) {folds_text(training[key])} {what}."
    if "files" in sources:
        text += (f" Hospital files: {sources['files']['n']} read and searched (no reference report or labels: no "
                 "BLEU or F1).")
    if stream:
        text += (f" Stream: {stream['n']} records, each sent through a real StreamECG call to an in-process server "
                 "on a loopback port, once per report mode and per question; judged on the wire's measurements; the "
                 "calibration's own decisions are not on the wire (-).")
    text += (" A report is contradicted when one of its statements is (ecgregen.reports.verify.contradictions); a "
             "diagnosis when the measurements contradict its code's finding beyond the margin, or it is one of "
             "SR/SBRAD/STACH/AFIB beside another; an answer when it says yes to a finding the measurements "
             f"contradict or no to the measured rhythm ({len(QUESTIONS)} questions, options yes/no/not sure). "
             "micro-F1: the served diagnoses against PTB-XL's labels (the same for every mode)"
             + _micro_note(sources.get("ptbxl", {}).get("f1_micro_all_codes")) + ". The service serves "
             "the clinical reading (served = reconciled with the measurements); PTB-XL conventions = the "
             "calibration's own decisions. Clinical truth: a PTB-XL sinus label re-read by the measured rate "
             "(< 60 SBRAD, > 100 STACH, else SR), AFIB and SARRH as labelled.")
    return text
