"""Settings the command line offers as flags and the code that runs takes: each default stated once, here.

Stdlib only (and the LLM's settings, themselves stdlib only): every parser of `ecgregen` is built from these, so
`ecgregen --help` or `ecgregen client stats` loads no model, store or HTTP client. The server, the store and the
encoders import the same definitions, so a flag's default is the running code's default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecgregen.llm.settings import LlmConfig

if TYPE_CHECKING:
    from ecgregen.server.security import TlsSettings

# The 300-record demo corpus shipped in the package (see its README): PTB-XL layout. What an empty server indexes,
# and the records the commands that need some default to.
DEMO_PTBXL = Path(__file__).resolve().parent / "demo_corpus" / "ptbxl"
DATA_DIR = Path("./var")  # the embedded store, snapshots, the audit log
EVAL_DIR = DATA_DIR / "eval"  # the evaluation's cached indexes
BENCH_DIR = DATA_DIR / "bench"  # the benchmarks' corpora and servers
ENCODER_RUNTIMES = ("onnxruntime", "torch")  # how the in-process encoder runs; the first is the default
TRITON_MODEL = "ecg_encoder"  # the encoder's name in a Triton model repository
TRITON_WAIT_S = 30.0  # how long to wait for Triton and the model at start
QUANTIZATIONS = ("none", "int8")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a 5-minute 12-lead ECG at 1 kHz as float32 is ~15 MB


@dataclass(frozen=True)
class IndexSettings:
    """How a collection is indexed. Fixed when the collection is created and kept with it, so a store reopens
    with the settings it was built with (flags given later for an existing collection are ignored, with a log).

    ``full_scan_threshold_kb``: segments with fewer KB of vectors are searched by brute force even when indexed,
    which is faster there and exact (Qdrant's default 10 MB). ``on_disk``: vectors memory-mapped instead of in RAM.
    ``quantization="int8"``: scalar quantisation (4x smaller vectors in RAM); searches rescore the candidates with
    the original vectors.
    """

    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    full_scan_threshold_kb: int = 10_000
    on_disk: bool = False
    quantization: str = "none"
    shards: int = 1  # a Qdrant cluster: shards spread over the nodes (the embedded store has one)
    replicas: int = 1  # a Qdrant cluster: copies of each shard (2+ survives a node loss)

    def __post_init__(self) -> None:
        if self.hnsw_m < 2 or self.hnsw_ef_construct < 4 or self.full_scan_threshold_kb < 0:
            raise ValueError("HNSW m must be >= 2, ef_construct >= 4 and full_scan_threshold_kb >= 0")
        if self.shards < 1 or self.replicas < 1:
            raise ValueError("shards and replicas must be >= 1")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> IndexSettings:
        """Settings kept with a collection; a collection made before they were kept used the defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


def default_measure_workers() -> int:
    """One measurement process per core beyond the first (the first runs the event loop, encoder and store), at
    least one and at most four: each measures a 10 s ECG in a few milliseconds."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class ServeSettings:
    """What `ecgregen serve` runs with; its flags' defaults are these fields' defaults."""

    host: str = "127.0.0.1"
    port: int = 50051
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    data_dir: Path = DATA_DIR
    qdrant_url: str | None = None
    checkpoint: Path | None = None
    seed_demo: bool = True
    shutdown_grace_s: float = 10.0
    llm: LlmConfig = LlmConfig()
    index: IndexSettings | None = None  # for a collection this server creates
    triton_url: str | None = None  # encode in Triton (gRPC HOST:PORT) instead of in-process
    triton_model: str = TRITON_MODEL
    triton_wait_s: float = TRITON_WAIT_S
    max_streams: int = 64
    max_in_flight: int = 256  # calls handled at once; beyond: RESOURCE_EXHAUSTED (load shedding)
    tls: TlsSettings | None = None
    tokens_file: Path | None = None  # bearer tokens with roles; None: no authentication (loopback development)
    rate_limit: float = 0.0  # calls per second per client; 0: unlimited
    daily_quota: int = 0  # calls per client per UTC day; 0: unlimited
    max_stream_s: float = 24 * 3600.0
    # PTB-XL-layout folders where a printed report's evidence pages find the neighbours' signals (the store keeps
    # none); the demo corpus is always looked in, last
    signal_dirs: tuple[Path, ...] = (DEMO_PTBXL,)
    triton_fallback_local: bool = False  # encode in-process while Triton is unavailable
    encoder_runtime: str = ENCODER_RUNTIMES[0]
    max_message_bytes: int = MAX_MESSAGE_BYTES
    report_mode: str = "verified"  # verified, top1, consensus, statements, or auto: the corpus calibration's best
    report_language: str = "en"  # en (neighbours' reports through the corpus glossary) or original
    measure_workers: int = field(default_factory=default_measure_workers)  # 0: in the request threads
    # onnxruntime threads per forward pass; 0: one per core (the trade: ecgregen.encoders.onnxrt.OnnxRuntimeEncoder)
    encoder_threads: int = 0



# Where a client calls by default: a server started with the defaults.
DEFAULT_SERVER = f"{ServeSettings.host}:{ServeSettings.port}"
