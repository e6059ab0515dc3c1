"""Count the evidence of the measured statements (``ecgregen.diagnoses.MEASURED_STATEMENTS``) on PTB-XL folds.

Every record of the folds is measured as the service measures a request; per statement, the records where its
measurement is there are binned at the statement's edges, and each bin's log-likelihood ratio
``log P(bin | code) - log P(bin | not code)`` is printed (0.5 added to every count) beside the shipped one. The
shipped table was counted on folds 1-7: neither the calibration fold (8) nor the report fold (9).

    python scripts/measured_evidence.py --ptbxl ../shared/data/ptbxl --folds 1-7
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ecgregen.diagnoses import MEASURED_STATEMENTS
from ecgregen.measure import measure
from ecgregen.records import load_ptbxl, parse_folds

SMOOTHING = 0.5  # added to every (bin, class) count: an empty bin still has a finite ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl", type=Path, required=True)
    parser.add_argument("--folds", default="1-7")
    args = parser.parse_args()

    records = [r for r in load_ptbxl(args.ptbxl, parse_folds(args.folds)) if r.scp_codes]
    measured = [(frozenset(r.scp_codes), measure(r.load_ecg()))
                for r in tqdm(records, desc="measuring", unit="ecg", dynamic_ncols=True)]
    print(f"{len(measured)} records of folds {args.folds}\n")
    print("| code | measured | edges | positives / negatives per bin | evidence counted | evidence shipped |")
    print("|---|---|---|---|---|---|")
    for code, statement in MEASURED_STATEMENTS.items():
        bins = len(statement.edges) + 1
        counts = np.zeros((2, bins))
        for codes, m in measured:
            value = statement.value(m)
            if value is not None:
                counts[int(code in codes), int(np.digitize(value, statement.edges))] += 1
        negatives, positives = counts
        evidence = [
            math.log((positives[b] + SMOOTHING) / (positives.sum() + SMOOTHING * bins))
            - math.log((negatives[b] + SMOOTHING) / (negatives.sum() + SMOOTHING * bins))
            for b in range(bins)
        ]
        print(f"| {code} | {statement.measured} | {', '.join(f'{e:g}' for e in statement.edges)} | "
              + " ".join(f"{int(p)}/{int(n)}" for p, n in zip(positives, negatives)) + " | "
              + ", ".join(f"{e:+.2f}" for e in evidence) + " | "
              + ", ".join(f"{e:+.2f}" for e in statement.evidence) + " |")


if __name__ == "__main__":
    main()
