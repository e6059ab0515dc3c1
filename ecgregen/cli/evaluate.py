"""The paper's tables, `evaluate` {report (Table I), qa (Table II)}, `qa-generate`, the ECG-QA-style questions
Table II can be run on, `evaluate measurements`, the measurement stage against the carts and PTB-XL, and `evaluate
consistency`, how often what is served contradicts what was measured."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ecgregen.cli.flags import add_llm_flags, llm_config_from_args
from ecgregen.settings import EVAL_DIR

# Where the shared reference data sit beside a checkout (the tests find them there too).
SHARED_PTBXL = Path("../shared/data/ptbxl")
SHARED_FORMATS = Path("../shared/data/formats")


def add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="the paper's tables: report generation (I) and ECG-QA (II); the measurement stage's checks")
    esub = evaluate.add_subparsers(dest="evaluate_command", required=True)
    ev_report = esub.add_parser("report", help="Table I: retrieved reports vs ground truth, with baselines")
    ev_report.add_argument("--ptbxl", type=Path, required=True, help="PTB-XL-layout folder (index, and test unless --mimic)")
    ev_report.add_argument("--index-folds", default="1-8")
    ev_report.add_argument("--test-folds", default="9")
    ev_report.add_argument("--mimic", type=Path, help="MIMIC-IV-ECG-layout folder to take the test queries from (cross-domain)")
    ev_report.add_argument("--limit", type=int, help="at most N test records (the first N by id)")
    ev_report.add_argument("--no-bertscore", action="store_true", help="skip BERTScore (the slowest metric)")
    ev_report.add_argument("--calibration-folds", default="auto",
                           help="folds (of --ptbxl, searched against the index with their own patient left out) "
                           "that fit the diagnosis calibration; auto = the highest index fold; none = raw votes")
    ev_qa = esub.add_parser("qa", help="Table II: ECG-QA exact match per question type")
    ev_qa.add_argument("--ptbxl", type=Path, required=True)
    ev_qa.add_argument("--questions", type=Path, nargs="+", required=True, help="ECG-QA JSON files or folders")
    ev_qa.add_argument("--index-folds", default="1-8")
    ev_qa.add_argument("--answerer", default="labels", choices=["labels", "llm"])
    ev_qa.add_argument("--k", type=int, default=3)
    ev_qa.add_argument("--limit", type=int, help="at most N questions")
    ev_qa.add_argument("--test-folds", default=None,
                       help="only questions about ECGs of these folds, e.g. 9 (default: every fold with questions)")
    ev_qa.add_argument("--encoder-folds", default=None,
                       help="the folds whose SCP labels trained the encoder, for a checkpoint that does not record "
                            "them (written before `ecgregen pretrain` kept its folds), e.g. 1-7, or none; a "
                            "checkpoint's own record is read otherwise")
    ev_qa.add_argument("--calibration-folds", default="auto",
                       help="the folds the diagnosis calibration (and the band edges, on the same fold split by "
                            "patient) may be fitted on, in order of preference: for each question fold the first one "
                            "that is not the question's fold; folds whose labels trained the encoder are refused. "
                            "auto (default): the highest index fold, then the highest other fold, that is neither")
    ev_qa.add_argument("--no-diagnoses", action="store_true",
                       help="answer by the neighbours' vote as before the calibrated diagnoses")
    ev_qa.add_argument("--no-measurements", action="store_true",
                       help="answer numeric-feature, axis, noise and extra-systole questions as before the "
                            "measurements (neighbours' metadata or labels)")
    ev_qa.add_argument("--serving-fold", type=int, default=8,
                       help="the fold (split by patient) the shipped answer settings are fitted on: neither reported "
                            "nor one the encoder learnt the labels of")
    ev_qa.add_argument("--settings-out", type=Path,
                       help="write the answer settings fitted on --serving-fold (for this encoder) as JSON, e.g. "
                            "ecgregen/models/answer-settings.json")
    add_llm_flags(ev_qa)
    for p in (ev_report, ev_qa):
        p.add_argument("--json", type=Path, dest="json_out", help="write the result as JSON")
        p.add_argument("--data-dir", type=Path, default=EVAL_DIR, help="where the cached evaluation index lives")
        p.add_argument("--qdrant-url", default=None)
        p.add_argument("--checkpoint", type=Path, default=None)
    ev_report.add_argument("--markdown", type=Path, help="write the table as markdown")
    ev_report.add_argument("--plot", type=Path, help="write a bar chart PNG")
    ev_report.add_argument("--language", default="both", choices=["en", "original", "both"],
                           help="score reports in English (references and reports through the glossary; what is "
                           "served by default), as written, or both (default; English is the headline)")
    ev_report.add_argument("--index-sizes",
                           help="also a learning curve: served micro/macro-F1 and BLEU-4 (English) at these index "
                           "sizes, e.g. 250,500,1000,all (nested random subsets of the index folds)")
    ev_report.add_argument("--curve-plot", type=Path, help="write the learning curve as a PNG (with --index-sizes)")
    ev_report.set_defaults(handler=run_report)
    ev_qa.set_defaults(handler=run_qa)
    add_evaluate_measurements(esub)
    add_evaluate_consistency(esub)


def add_evaluate_consistency(esub: argparse._SubParsersAction) -> None:
    ev_consistency = esub.add_parser(
        "consistency", help="how often served reports, diagnoses and answers contradict the ECG's own measurements")
    ev_consistency.add_argument("--ptbxl", type=Path, required=True, help="PTB-XL-layout folder (index and test)")
    ev_consistency.add_argument("--index-folds", default="1-8")
    ev_consistency.add_argument("--test-folds", default="9")
    ev_consistency.add_argument("--calibration-folds", default="auto",
                                help="folds that fit the diagnosis calibration; auto = the highest index fold; "
                                     "none = raw votes")
    ev_consistency.add_argument("--formats", type=Path, default=SHARED_FORMATS,
                                help="folder of hospital ECG files, each read and searched as the server does; none "
                                     "to skip (default: %(default)s)")
    ev_consistency.add_argument("--stream-records", type=int, default=10,
                                help="the first N test records also sent through a real StreamECG call to an "
                                     "in-process server (0: none; default: %(default)s)")
    ev_consistency.add_argument("--limit", type=int, help="at most N test records (the first N by id)")
    ev_consistency.add_argument("--max-contradicted", type=float, metavar="SHARE",
                                help="exit non-zero when the verified or statements mode's share of contradicted "
                                     "reports exceeds SHARE (0-1) for any input")
    ev_consistency.add_argument("--json", type=Path, dest="json_out", help="write the result as JSON")
    ev_consistency.add_argument("--data-dir", type=Path, default=EVAL_DIR, help="where the cached evaluation index lives")
    ev_consistency.add_argument("--qdrant-url", default=None)
    ev_consistency.add_argument("--checkpoint", type=Path, default=None)
    ev_consistency.set_defaults(handler=run_consistency)


def add_evaluate_measurements(esub: argparse._SubParsersAction) -> None:
    ev_measure = esub.add_parser(
        "measurements", help="the measurement stage vs the carts' own measurements and PTB-XL's annotations")
    ev_measure.add_argument("--ptbxl", type=Path, default=SHARED_PTBXL,
                            help="PTB-XL-layout folder (default: %(default)s)")
    ev_measure.add_argument("--folds", default="9",
                            help="PTB-XL folds to measure, e.g. 9 or 1-8 (default: %(default)s)")
    ev_measure.add_argument("--formats", type=Path, default=SHARED_FORMATS,
                            help="folder of hospital ECG files, some stating their cart's measurements "
                                 "(default: %(default)s)")
    ev_measure.add_argument("--sections", default="carts,ptbxl", help="carts, ptbxl or both (default: %(default)s)")
    ev_measure.add_argument("--limit", type=int, help="at most N PTB-XL records (the first N by ecg_id)")
    ev_measure.add_argument("--workers", type=int, default=2, help="processes measuring PTB-XL records (default: 2)")
    ev_measure.add_argument("--json", type=Path, dest="json_out",
                            help="write the result, every record included, as JSON")
    ev_measure.set_defaults(handler=run_measurements)


def add_qa_generate(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser("qa-generate", help="ECG-QA-style questions from PTB-XL metadata")
    generate.add_argument("--ptbxl", type=Path, required=True)
    generate.add_argument("--out", type=Path, required=True)
    generate.add_argument("--folds", default=None, help="only records of these folds (default: all)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--check", type=Path, nargs="+",
                          help="real ECG-QA question files to validate the answer rules against")
    generate.set_defaults(handler=run_qa_generate)


def run_report(args: argparse.Namespace) -> None:
    from ecgregen.evaluate.learning_curve import curve_markdown, learning_curve, parse_sizes, plot_curve
    from ecgregen.evaluate.report import LANGUAGES, evaluate_reports, markdown_table, write_outputs
    from ecgregen.records import load_mimic_ecg, load_ptbxl, parse_folds

    index_folds = parse_folds(args.index_folds)
    index = load_ptbxl(args.ptbxl, index_folds)
    if args.mimic:
        queries, test = load_mimic_ecg(args.mimic, args.limit), f"MIMIC-IV-ECG {args.mimic}"
    else:
        test_folds = parse_folds(args.test_folds)
        queries = sorted(load_ptbxl(args.ptbxl, test_folds), key=lambda r: int(r.ecg_id))[: args.limit]
        test = f"{args.ptbxl} folds {args.test_folds}"
    if not index or not queries:
        raise SystemExit(f"nothing to evaluate: {len(index)} index records, {len(queries)} test records")
    calibration_folds = (
        [] if args.calibration_folds == "none"
        else [max(index_folds)] if args.calibration_folds == "auto" else parse_folds(args.calibration_folds)
    )
    calibration = load_ptbxl(args.ptbxl, calibration_folds) if calibration_folds else []
    if args.curve_plot and not args.index_sizes:
        raise SystemExit("--curve-plot draws the learning curve: give --index-sizes too")
    try:
        sizes = parse_sizes(args.index_sizes, len(index)) if args.index_sizes else []
    except ValueError as exc:
        raise SystemExit(f"--index-sizes: {exc}") from None
    result = evaluate_reports(
        index, queries, calibration=calibration, data_dir=args.data_dir, qdrant_url=args.qdrant_url,
        checkpoint=args.checkpoint, bertscore=not args.no_bertscore,
        languages=LANGUAGES if args.language == "both" else (args.language,),
    )
    if sizes:
        result["learning_curve"] = learning_curve(index, queries, calibration, sizes, data_dir=args.data_dir,
                                                  qdrant_url=args.qdrant_url, checkpoint=args.checkpoint)
        if args.curve_plot:
            plot_curve(result["learning_curve"], args.curve_plot)
    result.update(index_folds=index_folds, index=f"{args.ptbxl} folds {args.index_folds}", test=test,
                  calibration_folds=calibration_folds, calibration_source=f"{args.ptbxl} folds {calibration_folds}")
    if not args.mimic:
        result["test_folds"] = parse_folds(args.test_folds)
    write_outputs(result, args.json_out, args.markdown, args.plot)
    print(markdown_table(result))
    if sizes:
        print(curve_markdown(result["learning_curve"]))


def run_qa(args: argparse.Namespace) -> None:
    from ecgregen.evaluate.qa import FoldError, evaluate_qa, format_qa
    from ecgregen.records import parse_folds

    try:  # in the order given: the order of preference
        calibration_folds = None if args.calibration_folds == "auto" else list(dict.fromkeys(
            int(f) for f in args.calibration_folds.split(",") if f.strip()))
    except ValueError:
        raise SystemExit(f"--calibration-folds takes auto or folds like 8,9; got {args.calibration_folds!r}") from None
    encoder_folds = (None if args.encoder_folds is None else []
                     if args.encoder_folds.strip().lower() == "none" else parse_folds(args.encoder_folds))
    try:
        result = evaluate_qa(
            args.ptbxl, args.questions, parse_folds(args.index_folds), answerer=args.answerer, k=args.k,
            limit=args.limit, data_dir=args.data_dir, qdrant_url=args.qdrant_url, checkpoint=args.checkpoint,
            llm=llm_config_from_args(args),
            test_folds=parse_folds(args.test_folds) if args.test_folds else None,
            diagnoses=not args.no_diagnoses, measurements=not args.no_measurements,
            calibration_folds=calibration_folds, serving_fold=args.serving_fold, encoder_label_folds=encoder_folds,
        )
    except FoldError as exc:
        raise SystemExit(f"evaluate qa: {exc}") from None
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    if args.settings_out:
        if result["settings_for_serving"] is None:
            raise SystemExit("--settings-out needs the diagnoses (drop --no-diagnoses)")
        args.settings_out.write_text(json.dumps(result["settings_for_serving"]["settings"], indent=2) + "\n")
    print(format_qa(result))


def run_measurements(args: argparse.Namespace) -> None:
    from ecgregen.evaluate.measurement_tables import format_measurements
    from ecgregen.evaluate.measurements import evaluate_measurements
    from ecgregen.records import parse_folds

    result = evaluate_measurements(
        [s.strip() for s in args.sections.split(",") if s.strip()], formats_dir=args.formats, ptbxl=args.ptbxl,
        folds=parse_folds(args.folds), limit=args.limit, workers=args.workers,
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(format_measurements(result), end="")


def run_consistency(args: argparse.Namespace) -> None:
    from ecgregen.evaluate.consistency import evaluate_consistency, gate, reader_coverage
    from ecgregen.evaluate.consistency_tables import markdown_table
    from ecgregen.records import load_ptbxl, parse_folds

    index_folds, test_folds = parse_folds(args.index_folds), parse_folds(args.test_folds)
    index = load_ptbxl(args.ptbxl, index_folds)
    queries = sorted(load_ptbxl(args.ptbxl, test_folds), key=lambda r: int(r.ecg_id))[: args.limit]
    if not index or not queries:
        raise SystemExit(f"nothing to evaluate: {len(index)} index records, {len(queries)} test records")
    calibration_folds = (
        [] if args.calibration_folds == "none"
        else [max(index_folds)] if args.calibration_folds == "auto" else parse_folds(args.calibration_folds)
    )
    formats = None if str(args.formats) == "none" else args.formats
    if formats is not None and not formats.is_dir():
        raise SystemExit(f"--formats {formats}: no such folder (none to skip the hospital files)")
    try:
        result = evaluate_consistency(
            index, queries, calibration=load_ptbxl(args.ptbxl, calibration_folds) if calibration_folds else [],
            formats_dir=formats, stream_records=args.stream_records, data_dir=args.data_dir,
            qdrant_url=args.qdrant_url, checkpoint=args.checkpoint,
        )
    except ValueError as exc:
        raise SystemExit(f"evaluate consistency: {exc}") from None
    result.update(index=f"{args.ptbxl} folds {args.index_folds}", test=f"{args.ptbxl} folds {args.test_folds}")
    reports = next((p for p in (args.ptbxl / "ptbxl_database_all_reports.csv", args.ptbxl / "ptbxl_database.csv")
                    if p.is_file()), None)
    if reports is not None:
        result["reader_coverage"] = {"file": str(reports), **reader_coverage(reports)}
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(markdown_table(result), end="")
    if args.max_contradicted is not None:
        failures = gate(result, args.max_contradicted)
        if failures:
            raise SystemExit("contradicted reports above --max-contradicted:\n" + "\n".join(failures))


def run_qa_generate(args: argparse.Namespace) -> None:
    from ecgregen.evaluate.ecgqa import PtbxlMetadata, check_against_real, load_questions, write_generated
    from ecgregen.records import parse_folds

    folds = parse_folds(args.folds) if args.folds else None
    summary = write_generated(args.ptbxl, args.out, folds=folds, seed=args.seed)
    if args.check:
        # The fullest metadata table the folder has: the real questions refer to ECGs without signals too.
        table = args.ptbxl / "ptbxl_database_all_reports.csv"
        metadata = PtbxlMetadata.from_csv(table if table.exists() else args.ptbxl / "ptbxl_database.csv")
        summary["check"] = check_against_real(load_questions(args.check), metadata)
    print(json.dumps(summary, indent=2))
