"""Report scores against values computed by hand on tiny inputs.

Each `caption_scores` call starts one METEOR JVM (about 4 s), so the METEOR-backed cases share a few calls.
BERTScore loads the bundled all-MiniLM-L6-v2 once (a few seconds) and reuses it.
"""

from __future__ import annotations

import math
import subprocess

import pytest

from ecgregen.evaluate import text_metrics as tm

needs_java = pytest.mark.skipif(not tm.java_available(), reason=tm.JAVA_MISSING)

CAPTION_KEYS = {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}

# Distinct reports of at least 4 tokens, so every n-gram order up to 4 has something to match.
REPORTS = [
    "Sinusrhythmus. Linkstyp. Sonst normales EKG.",
    "Vorhofflimmern, Lagetyp normal, Linksschenkelblock",
    "sinus rhythm. left axis deviation. otherwise normal ecg.",
]
CODES = [{"NORM", "SR"}, {"AFIB", "CLBBB"}, {"SR", "LAFB"}]


def test_tokenize_lowercases_keeps_umlauts_and_splits_on_punctuation() -> None:
    text = "Sinusrhythmus, QRS-Komplex: fÜr GRÖSSE Straße!\nV1-V3  0.5 mV ||| ISC_"
    assert tm.tokenize(text) == "sinusrhythmus qrs komplex für grösse straße v1 v3 0 5 mv isc"
    assert tm.tokenize("fu\u0308r") == "für"  # decomposed umlaut (u + combining diaeresis) is composed first
    assert tm.tokenize(" .,;-() ") == ""


@needs_java
def test_identical_reports_score_perfectly() -> None:
    scores = tm.score_reports(REPORTS, REPORTS, CODES, CODES)
    assert set(scores) == CAPTION_KEYS | {"bertscore_f1", "scp_f1_micro", "scp_f1_macro"}
    for n in range(1, 5):  # pycocoevalcap's (matches + 1e-15) / (guesses + 1e-9) leaves 1 - O(1e-10)
        assert scores[f"bleu{n}"] == pytest.approx(1.0, abs=1e-6)
    # METEOR 1.5 gives a segment whose words all match, in one chunk, no fragmentation penalty and adds no
    # chunks for it to the corpus count, so an identical corpus scores exactly 1 (not 1 - 0.6 * (1/n)^0.2).
    assert scores["meteor"] == 1.0
    assert scores["rouge_l"] == 1.0
    # CIDEr-D: cosine 1 for each n = 1..4, no length penalty, times 10.
    assert scores["cider"] == pytest.approx(10.0)
    assert scores["bertscore_f1"] > 0.99
    assert scores["scp_f1_micro"] == scores["scp_f1_macro"] == 1.0


@needs_java
def test_disjoint_reports_score_zero_and_codes_are_optional() -> None:
    hypotheses = ["aa bb cc dd ee", "ff gg hh ii", "jj kk ll mm nn oo"]
    scores = tm.score_reports(REPORTS, hypotheses, bertscore=False)
    assert set(scores) == CAPTION_KEYS
    for key in CAPTION_KEYS:
        assert scores[key] == pytest.approx(0.0, abs=1e-6), key


@needs_java
def test_known_pair_bleu_rouge_meteor_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """One pair: the hypothesis is the reference without "unbestätigter" (6 of 7 tokens, in order).

    ref: sinusrhythmus linkstyp sonst normales ekg unbestätigter bericht   (7 tokens)
    hyp: sinusrhythmus linkstyp sonst normales ekg bericht                 (6 tokens)
    Clipped n-gram precisions: 1-grams 6/6; 2-grams 4/5 ("ekg bericht" misses); 3-grams 3/4; 4-grams 2/3.
    Brevity penalty exp(1 - 7/6) = 0.846482.
    BLEU-n = BP * (p1 * ... * pn)^(1/n): 0.846482, 0.846482 * 0.8^(1/2) = 0.757116,
    0.846482 * 0.6^(1/3) = 0.713950, 0.846482 * 0.4^(1/4) = 0.673182.
    ROUGE-L: LCS 6, P = 6/6, R = 6/7, F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 0.910448.
    METEOR (alpha 0.85, beta 0.2, gamma 0.6; all 6 words match exactly, in 2 chunks):
    Fmean = P R / (0.85 P + 0.15 R) = 0.875912, penalty 0.6 * (2/6)^0.2 = 0.481645,
    score = 0.875912 * (1 - 0.481645) = 0.454034.
    CIDEr of a single pair is 0: every n-gram is in all (one) reference documents, so its idf is 0.
    """
    stopped: list[subprocess.Popen] = []
    close = tm._Meteor.close

    def recording_close(self: tm._Meteor) -> None:
        close(self)
        stopped.append(self.meteor_p)

    monkeypatch.setattr(tm._Meteor, "close", recording_close)
    scores = tm.caption_scores(
        ["Sinusrhythmus, Linkstyp: sonst normales EKG. Unbestätigter Bericht"],
        ["sinusrhythmus linkstyp sonst normales ekg bericht"],
    )
    bp = math.exp(1 - 7 / 6)
    assert scores["bleu1"] == pytest.approx(bp, abs=1e-6)
    assert scores["bleu2"] == pytest.approx(bp * 0.8 ** (1 / 2), abs=1e-6)
    assert scores["bleu3"] == pytest.approx(bp * 0.6 ** (1 / 3), abs=1e-6)
    assert scores["bleu4"] == pytest.approx(bp * 0.4 ** (1 / 4), abs=1e-6)
    assert scores["bleu4"] == pytest.approx(0.673182, abs=1e-6)
    assert scores["rouge_l"] == pytest.approx(0.910448, abs=1e-6)
    assert scores["meteor"] == pytest.approx(0.454034, abs=1e-5)
    assert scores["cider"] == 0.0
    # The JVM has exited and its pipes are closed once the call returns.
    assert len(stopped) == 1 and stopped[0].poll() is not None and stopped[0].stdout.closed


@needs_java
def test_empty_texts_are_scored_not_dropped() -> None:
    """An empty hypothesis loses its reference's recall; an empty/empty pair adds nothing to corpus statistics.

    pair 1 identical (3 tokens), pair 2 empty hypothesis vs "linkstyp", pair 3 both empty.
    BLEU-1: p1 = 3/3, lengths 3 vs 4, BP = exp(1 - 4/3) = 0.716531.
    METEOR: P = 3/3, R = 3/4, Fmean = P R / (0.85 P + 0.15 R) = 0.779221, and no fragmentation penalty: METEOR
    1.5 adds no chunks to the corpus count for a perfectly matched segment (MeteorStats.addStats), and the
    empty pairs add none, so the corpus has 0 chunks. (Scored alone, "sinusrhythmus normales ekg" against
    "sinusrhythmus normales ekg linkstyp" gets the penalty 0.6 * (1/3)^0.2: 0.403913.)
    ROUGE-L per pair 1, 0, 1 (pycocoevalcap compares [""] with [""]): mean 2/3.
    """
    references = ["Sinusrhythmus normales EKG", "Linkstyp.", "..."]
    scores = tm.caption_scores(references, ["sinusrhythmus normales ekg", "", ""])
    assert scores["bleu1"] == pytest.approx(math.exp(1 - 4 / 3), abs=1e-6)
    assert scores["meteor"] == pytest.approx(0.779221, abs=1e-5)
    assert scores["rouge_l"] == pytest.approx(2 / 3)


def test_caption_scores_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="references but"):
        tm.caption_scores(["a b"], ["a b", "c"])
    with pytest.raises(ValueError, match="empty"):
        tm.caption_scores(["...", ""], ["a", "b"])


@needs_java
def test_a_jvm_that_does_not_answer_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tm, "_METEOR_TIMEOUT_S", 0.5)  # METEOR needs ~4 s to load its tables before answering
    with pytest.raises(RuntimeError, match="no answer within"):
        tm.caption_scores(REPORTS, REPORTS)


def test_missing_java_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tm.shutil, "which", lambda name: None)
    assert not tm.java_available()
    with pytest.raises(RuntimeError, match="apt-get install default-jre-headless"):
        tm.caption_scores(["a b"], ["a b"])


def test_bertscore_orders_related_above_unrelated_and_caches_the_model() -> None:
    reference = "Sinusrhythmus. Linkstyp. Sonst normales EKG."
    identical = tm.bertscore_f1([reference], [reference])
    related = tm.bertscore_f1([reference], ["Sinusrhythmus, Lagetyp normal, normales EKG"])
    unrelated = tm.bertscore_f1([reference], ["Vorhofflimmern mit schneller Überleitung"])
    assert identical > 0.99
    assert related > unrelated + 0.3  # measured: about 0.77 vs 0.24
    assert tm._bert_scorer.cache_info().currsize == 1 and tm._bert_scorer.cache_info().hits >= 2


def test_bertscore_empty_pairs() -> None:
    # An empty side scores 0 and still counts in the mean.
    assert tm.bertscore_f1(["sinus rhythm, normal ecg", "linkstyp"], ["sinus rhythm, normal ecg", "  "]) == (
        pytest.approx(0.5, abs=0.005)
    )
    assert tm.bertscore_f1([""], [""]) == 0.0
    assert "all-MiniLM-L6-v2" in tm.BERTSCORE_MODEL_NAME and "layer 6" in tm.BERTSCORE_MODEL_NAME


def test_scp_f1_micro_and_macro_by_hand() -> None:
    """true: {NORM, SR}, {AFIB, CLBBB}, {SR, LVH};  predicted: {NORM, SR}, {AFIB, SR}, {IMI}.

    Per code (TP, FP, FN -> F1): NORM (1,0,0) 1; SR (1,1,1) 2/4 = 0.5; AFIB (1,0,0) 1; CLBBB (0,0,1) 0;
    LVH (0,0,1) 0; IMI (0,1,0) is never true, so it has no macro term but is a false positive for micro.
    micro = 2*3 / (2*3 + 2 + 3) = 6/11; macro = (1 + 0.5 + 1 + 0 + 0) / 5 = 0.5.
    """
    truth = [{"NORM", "SR"}, {"AFIB", "CLBBB"}, {"SR", "LVH"}]
    predicted = [frozenset({"NORM", "SR"}), ["AFIB", "SR"], {"IMI": 100.0}]
    scores = tm.scp_f1(truth, predicted)
    assert scores["micro"] == pytest.approx(6 / 11)
    assert scores["macro"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no ground-truth"):
        tm.scp_f1([set(), set()], [{"NORM"}, set()])


def test_score_reports_needs_both_code_lists() -> None:
    with pytest.raises(ValueError, match="both"):
        tm.score_reports(REPORTS, REPORTS, CODES, None)


@needs_java
def test_one_meteor_session_scores_each_corpus_as_its_own_jvm_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two corpora scored in one `meteor_session` (one JVM, as `evaluate report` scores its five methods): the
    second, the known pair above, still gets its hand-computed score 0.454034 (what a JVM of its own gives), the
    first a score of its own; one JVM is started and it is ended on leaving."""
    started: list[tm._Meteor] = []
    init = tm._Meteor.__init__

    def recording_init(self: tm._Meteor) -> None:
        init(self)
        started.append(self)

    monkeypatch.setattr(tm._Meteor, "__init__", recording_init)
    with tm.meteor_session():
        first = tm._meteor_score(["sinus rhythm left axis deviation", "inferior infarct age undetermined"],
                                 ["sinus rhythm", "old inferior infarct"])
        known = tm._meteor_score(["sinusrhythmus linkstyp sonst normales ekg unbestätigter bericht"],
                                 ["sinusrhythmus linkstyp sonst normales ekg bericht"])
    assert len(started) == 1 and started[0].meteor_p.poll() is not None
    assert known == pytest.approx(0.454034, abs=1e-5) and 0 < first < 1 and first != known
