"""Commands that write or inspect a store directly: `index` (and `index --migrate-to`), `calibrate`, and `corpus`
{stats, batches, rollback, optimize, snapshot, restore, translate}."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ecgregen.cli.flags import add_index_flags, add_runtime_flag, add_store_flags, index_settings, scp_codes

if TYPE_CHECKING:
    from ecgregen.pipeline import RetrievalPipeline
    from ecgregen.records import EcgRecord
    from ecgregen.store import VectorStore


def add_index(commands: argparse._SubParsersAction) -> None:
    index = commands.add_parser("index", help="embed records and upsert them into the corpus")
    index.add_argument("files", nargs="*", help="WFDB records (path without extension) or hospital exports (HL7 aECG, "
                       "GE MUSE, Philips Sierra, SCP-ECG, DICOM, EDF, ISHNE, MFER)")
    index.add_argument("--ptbxl", type=Path, help="a folder in PTB-XL layout")
    index.add_argument("--folds", default="1-8", help="strat folds to index with --ptbxl (default 1-8)")
    index.add_argument("--server", help="send to a running server (HOST:PORT) instead of writing the store directly")
    index.add_argument("--batch-size", type=int, default=64)
    index.add_argument("--no-resume", action="store_true", help="re-embed records that are already indexed")
    index.add_argument("--recreate", action="store_true",
                       help="empty the store first (needed after changing the encoder)")
    index.add_argument("--source", default=None, help="source name for FILES (default 'custom')")
    index.add_argument("--report", default=None,
                       help="report for FILES (default: a WFDB header's '# report:' comment; none for other files)")
    index.add_argument("--scp-codes", default="{}", help='labels for FILES as JSON, e.g. \'{"NORM": 100}\'')
    index.add_argument("--patient-id", default="")
    index.add_argument("--batch-id", default=None, help="id of this insert, for rollback (default: a new one)")
    index.add_argument("--migrate-to", metavar="URL",
                       help="copy the whole store (--data-dir/--qdrant-url) into the Qdrant at URL, vectors and "
                            "payloads as they are (no re-embedding)")
    add_store_flags(index)
    add_runtime_flag(index)
    add_index_flags(index)
    index.set_defaults(handler=run_index)


def add_calibrate(commands: argparse._SubParsersAction) -> None:
    calibrate = commands.add_parser(
        "calibrate", help="fit the diagnosis calibration of a corpus on validation ECGs and keep it with the corpus")
    calibrate.add_argument("--ptbxl", type=Path, help="PTB-XL-layout folder holding the validation ECGs")
    calibrate.add_argument("--folds", default="8",
                           help="validation folds (default 8): not the folds you report on, nor ones the encoder "
                           "learnt the labels of")
    calibrate.add_argument("--out", type=Path, help="also write the calibration to this JSON file")
    calibrate.add_argument("--from-file", type=Path,
                           help="install a calibration JSON fitted elsewhere (refused for another encoder)")
    calibrate.add_argument("--dry-run", action="store_true", help="fit and print, keep nothing in the store")
    add_store_flags(calibrate)
    add_runtime_flag(calibrate)
    calibrate.set_defaults(handler=run_calibrate)


def add_corpus(commands: argparse._SubParsersAction) -> None:
    corpus = commands.add_parser("corpus", help="operate on a store directly (the server must not hold it)")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True)
    for name, text, handler in (("stats", "points, HNSW coverage, optimizer state, index settings", corpus_stats),
                                ("batches", "the inserts the corpus holds, oldest first", corpus_batches),
                                ("optimize", "build the HNSW index over points written since the last build",
                                 corpus_optimize),
                                ("translate", "store each report's English beside it where it is missing or was made "
                                 "with an older glossary (payloads only; resumable, idempotent)", corpus_translate)):
        p = corpus_sub.add_parser(name, help=text)
        add_store_flags(p)
        p.set_defaults(handler=handler)
    rollback = corpus_sub.add_parser("rollback", help="delete every record one insert wrote")
    rollback.add_argument("batch_id")
    add_store_flags(rollback)
    rollback.set_defaults(handler=corpus_rollback)
    snapshot = corpus_sub.add_parser("snapshot", help="write the embedded store to one tar file")
    snapshot.add_argument("--out", type=Path, required=True)
    add_store_flags(snapshot)
    snapshot.set_defaults(handler=corpus_snapshot)
    restore = corpus_sub.add_parser("restore", help="replace the embedded store by a snapshot")
    restore.add_argument("archive", type=Path)
    restore.add_argument("--force", action="store_true", help="replace an existing store")
    add_store_flags(restore)
    restore.set_defaults(handler=corpus_restore)


def _open_pipeline(args: argparse.Namespace, **options: object) -> RetrievalPipeline:
    """The pipeline the store and encoder flags describe."""
    from ecgregen.pipeline import open_pipeline

    return open_pipeline(args.data_dir, args.qdrant_url, args.checkpoint, triton_url=args.triton_url,
                         triton_model=args.triton_model, triton_wait_s=args.triton_wait,
                         encoder_runtime=args.encoder_runtime, **options)


def _records_from_files(args: argparse.Namespace) -> list[EcgRecord]:
    from ecgregen.ecg_files import is_wfdb
    from ecgregen.records import EcgRecord, wfdb_comments

    records = []
    for f in args.files:
        wfdb = is_wfdb(f)
        path = Path(f).with_suffix("") if wfdb and Path(f).suffix in {".hea", ".dat"} else Path(f)
        report = args.report
        if report is None and wfdb:
            comments = wfdb_comments(path)
            report = next((c.split(":", 1)[1].strip() for c in comments if c.lower().startswith("report:")), "")
        records.append(
            EcgRecord(
                ecg_id=path.name, patient_id=args.patient_id, report=report or "", scp_codes=scp_codes(args.scp_codes),
                source=args.source or "custom", path=path,
            )
        )
    return records


def run_index(args: argparse.Namespace) -> None:
    if args.migrate_to:
        run_migrate(args)
        return
    from ecgregen.indexer.build import GrpcSink, LocalSink, index_records
    from ecgregen.records import load_ptbxl, parse_folds

    if bool(args.ptbxl) == bool(args.files):
        raise SystemExit("give either --ptbxl DIR or record FILES")
    records = load_ptbxl(args.ptbxl, parse_folds(args.folds)) if args.ptbxl else _records_from_files(args)
    if not records:
        raise SystemExit(f"no records with signals found ({args.ptbxl or args.files}, folds {args.folds})")
    if args.server:
        if args.recreate:
            raise SystemExit("--recreate works on a store (--data-dir/--qdrant-url), not through --server")
        report = index_records(records, GrpcSink(args.server), batch_size=args.batch_size, resume=False,
                               batch_id=args.batch_id)
    else:
        pipeline = _open_pipeline(args, recreate=args.recreate, index=index_settings(args))
        try:
            report = index_records(records, LocalSink(pipeline), batch_size=args.batch_size, resume=not args.no_resume,
                                   batch_id=args.batch_id)
        finally:
            pipeline.store.close()
    print(report.summary())


def run_migrate(args: argparse.Namespace) -> None:
    from ecgregen.indexer.migrate import migrate
    from ecgregen.store import open_store

    if args.files or args.ptbxl:
        raise SystemExit("--migrate-to copies a whole store; give no FILES or --ptbxl")
    with open_store(args.data_dir, args.qdrant_url) as source, open_store(args.data_dir, args.migrate_to) as target:
        print(migrate(source, target).summary())


def run_calibrate(args: argparse.Namespace) -> None:
    from ecgregen.calibrate import calibrate_records, save, summary
    from ecgregen.diagnoses import Calibration
    from ecgregen.records import load_ptbxl, parse_folds

    if bool(args.ptbxl) == bool(args.from_file):
        raise SystemExit("give --ptbxl DIR (fit on its --folds) or --from-file FILE (install a fitted calibration)")
    pipeline = _open_pipeline(args, load_calibration=False)  # the stored one may be another encoder's: replaced here
    try:
        if pipeline.store.count() == 0:
            raise SystemExit("the corpus is empty: index it first (ecgregen index ...), then calibrate")
        if args.from_file:
            calibration = Calibration.from_json(json.loads(args.from_file.read_text()))
        else:
            folds = parse_folds(args.folds)
            records = load_ptbxl(args.ptbxl, folds)
            if not records:
                raise SystemExit(f"no records of folds {args.folds} in {args.ptbxl}")
            calibration = calibrate_records(pipeline, records, description=f"{args.ptbxl} folds {args.folds}")
        if not args.dry_run:
            save(pipeline, calibration)
        if args.out:
            args.out.write_text(json.dumps(calibration.to_json(), indent=1))
        print(summary(calibration))
        print("dry run: nothing kept" if args.dry_run else "kept with the corpus; a server started on it serves it")
    finally:
        pipeline.store.close()


def _open_store(args: argparse.Namespace) -> VectorStore:
    from ecgregen.store import open_store

    return open_store(args.data_dir, args.qdrant_url)


def corpus_stats(args: argparse.Namespace) -> None:
    with _open_store(args) as store:
        print("\n".join(f"{k}: {v}" for k, v in dataclasses.asdict(store.stats()).items()))


def corpus_batches(args: argparse.Namespace) -> None:
    with _open_store(args) as store:
        batches = store.batches()
    for b in batches:
        print(f"{b.batch_id or '(no batch id)'}  {b.points} points  {b.first_inserted_at} .. {b.last_inserted_at}")
    print(f"{len(batches)} batches")


def corpus_rollback(args: argparse.Namespace) -> None:
    with _open_store(args) as store:
        print(f"deleted {store.delete_batch(args.batch_id)} records of batch {args.batch_id}")


def corpus_optimize(args: argparse.Namespace) -> None:
    with _open_store(args) as store:
        start = time.perf_counter()
        store.optimize()
        stats = store.stats()
        print(f"optimized in {time.perf_counter() - start:.1f} s: {stats.indexed_vectors} of {stats.points} "
              f"points indexed, {stats.segments} segments")


def corpus_translate(args: argparse.Namespace) -> None:
    from ecgregen.indexer.translate import translate_corpus

    with _open_store(args) as store:
        print(translate_corpus(store).summary())


def corpus_snapshot(args: argparse.Namespace) -> None:
    with _open_store(args) as store:
        path, points = store.snapshot(args.out)
        print(f"snapshot of {points} points written to {path} ({path.stat().st_size / 1e6:.1f} MB)")


def corpus_restore(args: argparse.Namespace) -> None:
    from ecgregen.store import open_store, restore_snapshot

    if args.qdrant_url:
        raise SystemExit("restore writes the embedded store (--data-dir); a Qdrant server restores its own snapshots")
    target = args.data_dir / "qdrant-edge" / "ecgregen"
    restore_snapshot(args.archive, target, force=args.force)
    with open_store(args.data_dir) as store:
        print(f"restored {args.archive} into {target}: {store.count()} points")
