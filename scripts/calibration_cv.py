"""Choose the diagnosis calibration's settings without touching the report fold: two-fold cross-validation by
patient within one validation fold.

The validation fold's ECGs are searched against the index folds (own patient left out) and measured, split in two
halves by patient; each setting is fitted on one half and scored (micro / macro F1 of the present diagnoses) on the
other, and the scores are averaged over both halves of `--seeds` random splits. The raw vote at a fixed threshold
is printed beside them, and every setting also with its measured statements left out (votes only).

The table is written, with the command, the date, the encoder (and the folds that trained it, from its checkpoint)
and the folds, to ``--out`` (default ``docs/calibration-cv.md``): the one place its figures are stated - the README
and the comments in ``ecgregen/diagnoses.py`` that chose the settings refer to it by row.

    python scripts/calibration_cv.py --ptbxl ../shared/data/ptbxl --index-folds 1-8 --fold 8 --seeds 4 \
        [--checkpoint FILE] [--out docs/calibration-cv.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ecgregen.calibrate import corpus_prevalence, validation_cases
from ecgregen.diagnoses import Diagnoser, ValidationCase, fit_calibration, load_statements, neighbour_votes, present_codes
from ecgregen.evaluate.corpus import open_eval_index
from ecgregen.evaluate.text_metrics import scp_f1
from ecgregen.records import load_ptbxl, parse_folds
from ecgregen.settings import EVAL_DIR

SETTINGS = {  # name -> fit_calibration keyword arguments
    "search k 5-30, T 0.02-0.1, weight 1, own >= 20": dict(k_grid=(5, 10, 20, 30), temperature_grid=(0.02, 0.05, 0.1),
                                                           macro_weight=1.0, own_positives=20),
    "k 10, T 0.1, weight 1": dict(k_grid=(10,), temperature_grid=(0.1,), macro_weight=1.0),
    "k 10, T 0.1, weight 0.5, own >= 20": dict(k_grid=(10,), temperature_grid=(0.1,), macro_weight=0.5, own_positives=20),
    "k 10, T 0.1, weight 0.5 (default)": {},
    "k 20, T 0.1, weight 0.5": dict(k_grid=(20,), temperature_grid=(0.1,)),
    "default, measured: no own fits": dict(measured_own_positives=10**9),
    "default, measured: own fits from 20 positives": dict(measured_own_positives=20),
    "default, measured: prior precision 3": dict(measured_precision=3.0),
    "default, measured: prior precision 0.1": dict(measured_precision=0.1),
}


def _commit() -> str:
    """The checkout's commit (and whether files differ from it), for the record."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "ecgregen", "scripts")
    return f"{head}{' + uncommitted changes' if changed else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl", type=Path, required=True)
    parser.add_argument("--index-folds", default="1-8")
    parser.add_argument("--fold", type=int, default=8, help="the validation fold split in two")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=EVAL_DIR)
    parser.add_argument("--seeds", type=int, default=1, help="random splits by patient, each scored both ways")
    parser.add_argument("--out", type=Path, default=Path("docs/calibration-cv.md"),
                        help="where the table goes, with the command, date and folds (default: %(default)s)")
    args = parser.parse_args()
    started = time.perf_counter()

    pipeline = open_eval_index(load_ptbxl(args.ptbxl, parse_folds(args.index_folds)), data_dir=args.data_dir,
                               checkpoint=args.checkpoint)
    try:
        prevalence, points = corpus_prevalence(pipeline)
        records = load_ptbxl(args.ptbxl, [args.fold])
        cases = validation_cases(pipeline, records, k=30)  # enough for every setting tried
        encoder_id = pipeline.encoder.encoder_id
    finally:
        pipeline.store.close()
    usable = [r for r in records if r.scp_codes]
    patients = sorted({r.patient_id for r in usable})
    splits = []
    for seed in range(args.seeds):
        shuffled = list(patients)
        np.random.default_rng(seed).shuffle(shuffled)
        first = set(shuffled[: len(shuffled) // 2])
        halves = ([c for r, c in zip(usable, cases) if r.patient_id in first],
                  [c for r, c in zip(usable, cases) if r.patient_id not in first])
        splits += [halves, halves[::-1]]
    statements = load_statements()

    def score(predict: callable, test: list[ValidationCase]) -> dict[str, float]:  # type: ignore[valid-type]
        return scp_f1([c.codes for c in test], [predict(c) for c in test])

    from ecgregen.encoders.checkpoint import SHIPPED_CHECKPOINT
    from ecgregen.pretrain.provenance import describe, read_training

    training = read_training(args.checkpoint or SHIPPED_CHECKPOINT)
    print(f"encoder {encoder_id}, fold {args.fold} split by patient in two, {args.seeds} time(s)")
    rows = [("raw vote, k 10, T 0.1, threshold 0.5", [
        score(lambda c: frozenset(code for code, v in neighbour_votes(c.hits, 10, 0.1).items() if v >= 0.5), test)
        for _, test in splits])]
    for name, kwargs in SETTINGS.items():
        measured, votes_only = [], []
        for fit, test in splits:
            calibration = fit_calibration(fit, prevalence, encoder_id=encoder_id, corpus_points=points, **kwargs)
            diagnoser = Diagnoser(statements, calibration)
            measured.append(score(lambda c, d=diagnoser: present_codes(d.diagnose(c.hits, c.measurements)), test))
            diagnoser = Diagnoser(statements, dataclasses.replace(calibration, measured=None))
            votes_only.append(score(lambda c, d=diagnoser: present_codes(d.diagnose(c.hits)), test))
        rows += [(name, measured), (f"{name}, votes only", votes_only)]
    table = ["| setting | micro-F1 | macro-F1 |", "|---|---|---|"] + [
        f"| {name} | {np.mean([r['micro'] for r in results]):.3f} | {np.mean([r['macro'] for r in results]):.3f} |"
        for name, results in rows]
    print("\n".join(table))
    command = "python scripts/calibration_cv.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join([
        "# The diagnosis calibration's settings, by cross-validation within one validation fold",
        "",
        "Generated by `scripts/calibration_cv.py` - do not edit; run it again. The README (Diagnoses, Results) and the",
        "comments in `ecgregen/diagnoses.py` that chose the settings refer to the rows below.",
        "",
        f"- Command: `{command}`",
        f"- Date: {time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s, code {_commit()}",
        f"- Encoder: `{encoder_id}` - {describe(training)}",
        f"- Index: folds {args.index_folds} ({points} points); validation fold {args.fold} ({len(usable)} ECGs with "
        f"codes, {len(patients)} patients), split in two halves by patient {args.seeds} time(s) (seed"
        f"{'s 0-' + str(args.seeds - 1) if args.seeds > 1 else ' 0'}); each setting fitted on one half and scored on the other, both ways round, and the "
        "micro / macro F1 of the present diagnoses (every SCP statement) averaged over the "
        f"{len(splits)} scorings. Nothing here touches any other fold.",
        "",
        *table,
        "",
    ]))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
