# ecgregen service image: `docker build -t ecgregen:0.1.0 .` (used by deploy/compose and deploy/k8s)
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
# The CPU build of torch (PyPI's torch is the CUDA one: several GB the service does not use; Triton has the GPU)
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock
COPY protos protos
COPY ecgregen ecgregen
COPY server server
COPY indexer indexer
COPY encoder_export encoder_export
RUN python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. protos/ecgregen/v1/ecgregen.proto \
 && touch ecgregen/v1/__init__.py && pip install --no-cache-dir --no-deps -e .
# The in-process encoder serves through onnxruntime: export the shipped weights once at build time (checked against
# PyTorch again at every start) instead of at every start of a container whose user has no home.
ENV XDG_CACHE_HOME=/app/.cache NUMBA_CACHE_DIR=/app/.cache/numba
# ... and compile the filters (numba) into the same cache, so no start compiles them.
RUN python -c "from ecgregen.pipeline import in_process_encoder; in_process_encoder(None)" \
 && python -c "from ecgregen.measure.workers import warm; warm()" && chown -R 10001 /app/.cache
USER 10001
EXPOSE 50051 9464
# gRPC on 50051 (grpc.health.v1 for probes), Prometheus metrics on 9464
ENTRYPOINT ["ecgregen"]
CMD ["serve", "--host", "0.0.0.0", "--metrics-host", "0.0.0.0", "--data-dir", "/data"]
