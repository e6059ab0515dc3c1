"""Who may call: TLS (and mutual TLS), bearer tokens with roles, and load shedding - in one server interceptor.

- TLS from PEM files; with a client CA, clients must present a certificate it signed (mutual TLS).
- Tokens: a JSON file of ``{"name", "sha256", "roles"}`` entries - only hashes are stored, the token is shown once
  when created (``ecgregen token add``). Roles: ``read`` (report, search, ask, streams, stats) and ``write``
  (insert, delete, snapshot, optimize). A call without a valid token gets UNAUTHENTICATED, with a token lacking the
  role PERMISSION_DENIED. Health and reflection stay open (probes and tooling).
- Other patients' ids: the neighbours a query returns are other people, so their ``patient_id`` goes out as a keyed
  pseudonym (:class:`Pseudonyms`, the audit log's) unless the caller's token has the ``admin`` role (given with
  ``read``); :data:`SEES_PATIENT_IDS` tells the handlers. Without tokens nobody has it: everyone gets pseudonyms.
- Shedding: at most ``max_in_flight`` calls are handled at once; beyond, RESOURCE_EXHAUSTED at once, so accepted
  calls keep their latency instead of everything slowing down together. Per token (without tokens, all callers
  share one budget: the interceptor does not see peer addresses) at most ``rate_limit`` calls per second (token
  bucket, bursts of one second's worth but at least one call, so rates below 1/s work) and ``daily_quota`` calls
  per UTC day (in memory: a restart resets it).
- The caller's identity is put in :data:`CALLER` for the audit log of writes, which shows patient ids only as keyed
  pseudonyms (HMAC under a secret kept in the data dir).
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

SERVICE_PREFIX = "/ecgregen.v1.EcgReGen/"
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("ecgregen_caller", default="anonymous")
# Whether this call's caller may see other patients' real ids (a token with the admin role); pseudonyms otherwise.
SEES_PATIENT_IDS: contextvars.ContextVar[bool] = contextvars.ContextVar("ecgregen_sees_patient_ids", default=False)
WRITE_METHODS = frozenset({"InsertRecords", "DeleteRecords", "CreateSnapshot", "OptimizeCorpus"})
ADMIN_ROLE = "admin"  # adds to `read`: the neighbours' real patient ids instead of pseudonyms
ROLES = ("read", "write", ADMIN_ROLE)


@dataclass(frozen=True)
class TlsSettings:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: mutual TLS, clients need a certificate signed by this CA


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
        require_client_auth=tls.client_ca is not None,
    )


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    roles: frozenset[str]


def _check_roles(roles: set[str] | frozenset[str]) -> str | None:
    """What is wrong with a set of roles, or None."""
    if not roles or not roles <= set(ROLES):
        return f"roles must be among {', '.join(ROLES)}"
    if ADMIN_ROLE in roles and "read" not in roles:
        return f"the {ADMIN_ROLE!r} role only adds real patient ids to what 'read' returns: give read,{ADMIN_ROLE}"
    return None


def load_keys(path: Path) -> list[ApiKey]:
    data = json.loads(Path(path).read_text())
    keys = [ApiKey(k["name"], k["sha256"], frozenset(k["roles"])) for k in data.get("keys", [])]
    for key in keys:
        problem = _check_roles(key.roles) or (None if len(key.sha256) == 64 else "it needs a sha256 hex digest")
        if problem:
            raise ValueError(f"{path}: key {key.name!r}: {problem}")
    return keys


def add_key(path: Path, name: str, roles: set[str]) -> str:
    """Create a token for `name`, store only its hash in `path`, and return the token (shown once)."""
    problem = _check_roles(roles)
    if problem:
        raise ValueError(problem)
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {"keys": []}
    if any(k["name"] == name for k in data["keys"]):
        raise ValueError(f"{path} already has a key named {name!r}")
    token = f"ecg_{secrets.token_urlsafe(32)}"
    data["keys"].append({"name": name, "sha256": token_hash(token), "roles": sorted(roles)})
    path.write_text(json.dumps(data, indent=2) + "\n")
    path.chmod(0o600)
    return token


# (request streaming, response streaming) -> the handler's behaviour attribute and how to make one of that kind
_KINDS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _same_kind(handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind and (de)serialisers that runs `behaviour`."""
    _, make = _KINDS[(handler.request_streaming, handler.response_streaming)]
    return make(behaviour, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that only refuses."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return _same_kind(handler, refuse)


class _Bucket:
    """Token bucket: `rate` calls per second, bursts of one second's worth - but at least one call: a call takes a
    whole token, so a bucket holding only `rate` < 1 tokens would refuse every call."""

    def __init__(self, rate: float) -> None:
        self.rate, self.capacity = rate, max(1.0, rate)
        self.tokens, self.stamp = self.capacity, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Authentication, roles, rate limits and load shedding for the ecgregen service (others pass through)."""

    def __init__(self, keys: list[ApiKey] | None, max_in_flight: int, rate_limit: float = 0.0,
                 daily_quota: int = 0) -> None:
        self.keys = keys
        self.max_in_flight = max_in_flight
        self.rate_limit = rate_limit
        self.daily_quota = daily_quota
        self.in_flight = 0
        self._buckets: dict[str, _Bucket] = {}
        self._used: dict[tuple[str, dt.date], int] = {}  # (caller, UTC day) -> calls (kept in memory)

    def _authorize(self, method: str, metadata: dict[str, str]) -> tuple[ApiKey | None, tuple[grpc.StatusCode, str] | None]:
        """(the caller's key - None without tokens or without a valid one -, refusal or None)."""
        if self.keys is None:
            return None, None
        header = metadata.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        digest = token_hash(token) if token else ""
        key = next((k for k in self.keys if token and hmac.compare_digest(k.sha256, digest)), None)
        if key is None:
            return None, (grpc.StatusCode.UNAUTHENTICATED,
                          "a valid bearer token is required (metadata 'authorization')")
        needed = "write" if method in WRITE_METHODS else "read"
        if needed not in key.roles:
            return key, (grpc.StatusCode.PERMISSION_DENIED, f"key {key.name!r} lacks the {needed!r} role for {method}")
        return key, None

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler  # health, reflection, unknown methods: untouched
        method = details.method.removeprefix(SERVICE_PREFIX)
        key, refusal = self._authorize(method, {k: v for k, v in (details.invocation_metadata or ())})
        if refusal is not None:
            return _deny(handler, *refusal)
        caller = key.name if key is not None else "anonymous"
        if self.rate_limit > 0 and not self._buckets.setdefault(caller, _Bucket(self.rate_limit)).take():
            return _deny(handler, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"rate limit of {self.rate_limit:g} calls/s for {caller!r} exceeded; retry with backoff")
        if self.daily_quota > 0:
            day = (caller, dt.datetime.now(dt.UTC).date())
            if self._used.get(day, 0) >= self.daily_quota:
                return _deny(handler, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"{caller!r} has used its quota of {self.daily_quota} calls today (UTC)")
            self._used = {k: v for k, v in self._used.items() if k[1] == day[1]}  # forget earlier days
            self._used[day] = self._used.get(day, 0) + 1
        if self.in_flight >= self.max_in_flight:
            return _deny(handler, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"the server is at its limit of {self.max_in_flight} calls in flight; retry with backoff")
        return self._tracked(handler, caller, key is not None and ADMIN_ROLE in key.roles)

    def _tracked(self, handler: grpc.RpcMethodHandler, caller: str, sees_patient_ids: bool) -> grpc.RpcMethodHandler:
        """The same handler, run with CALLER and SEES_PATIENT_IDS set and counted in `in_flight` (streams are capped
        elsewhere)."""
        guard = self
        attribute, _ = _KINDS[(handler.request_streaming, handler.response_streaming)]
        inner = getattr(handler, attribute)
        if handler.response_streaming:

            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                CALLER.set(caller)
                SEES_PATIENT_IDS.set(sees_patient_ids)
                async for item in inner(request, context):
                    yield item

            behaviour: Callable[..., Any] = streaming
        else:

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                CALLER.set(caller)
                SEES_PATIENT_IDS.set(sees_patient_ids)
                guard.in_flight += 1
                try:
                    return await inner(request, context)
                finally:
                    guard.in_flight -= 1

            behaviour = unary
        return _same_kind(handler, behaviour)


PSEUDONYM_KEY_FILE = "pseudonym.key"
PSEUDONYM_KEY_BYTES = 32


def pseudonym_key(folder: Path) -> bytes:
    """The secret that keys patient pseudonyms: ``folder/pseudonym.key``, made on first use, read afterwards.

    Patient ids are small integers: an unkeyed hash of one is reversed by hashing them all, a keyed one is not. The
    key must stay the same across restarts (equal ids keep equal pseudonyms in the audit log) and private to the
    server's user, so a file readable by others or of the wrong size is refused (ValueError) rather than used or
    replaced. A new key is written to a private temporary file and linked into place: of concurrent first starts,
    exactly one link succeeds and the others read that complete file.
    """
    path = Path(folder) / PSEUDONYM_KEY_FILE
    if not path.exists():
        temporary = path.with_name(f".{PSEUDONYM_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(PSEUDONYM_KEY_BYTES))
                f.flush()
                os.fsync(f.fileno())
            os.link(temporary, path)
            folder_fd = os.open(path.parent, os.O_RDONLY)  # the new name must survive a crash too
            try:
                os.fsync(folder_fd)
            finally:
                os.close(folder_fd)
        except FileExistsError:
            pass  # another start linked its key first: use that one
        finally:
            temporary.unlink()
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode & 0o777
        if mode & 0o077:
            raise ValueError(f"{path} (the key of patient pseudonyms) has mode {mode:o}: it must be readable by "
                             f"the server's user only; run `chmod 600 {path}`")
        key = f.read()
    if len(key) != PSEUDONYM_KEY_BYTES:
        raise ValueError(f"{path} (the key of patient pseudonyms) holds {len(key)} bytes, not {PSEUDONYM_KEY_BYTES}: "
                         f"restore the server's own copy; delete it only to start new pseudonyms for every patient")
    return key


class Pseudonyms:
    """Patient ids as logs and responses may show them: HMAC-SHA256 under a secret key, cut to 16 hex digits. Equal
    ids stay equal, and without the key an id cannot be found by hashing candidate ids."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, identifier: str) -> str:
        return hmac.new(self._key, identifier.encode(), hashlib.sha256).hexdigest()[:16] if identifier else ""


class AuditLog:
    """Append-only JSON lines of corpus writes: who (token name), when, what (method, batch, record keys); patient
    ids only as keyed pseudonyms. Flushed and fsynced per entry: the audit trail must survive a crash like the data.

    The key of the pseudonyms is :func:`pseudonym_key` of the log's folder (the data dir); the service shows the
    neighbours' patient ids under the same pseudonyms (:attr:`pseudonyms`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.pseudonyms = Pseudonyms(pseudonym_key(self.path.parent))
        self._appending = threading.Lock()  # entries are appended from worker threads: one whole line at a time

    def pseudonym(self, identifier: str) -> str:
        """A patient id as the log shows it (see :class:`Pseudonyms`)."""
        return self.pseudonyms(identifier)

    async def write(self, method: str, **what: Any) -> None:
        """Append one entry and return once it is on disk. The fsync runs in a worker thread: it can take
        milliseconds (far more on a busy disk), which on the event loop would stall every other call."""
        entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), "caller": CALLER.get(),
                 "method": method, **what}
        await asyncio.to_thread(self._append, json.dumps(entry, ensure_ascii=False) + "\n")

    def _append(self, line: str) -> None:
        with self._appending, self.path.open("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def make_dev_certs(out: Path, hostnames: list[str], *, days: int = 30) -> list[Path]:
    """A throwaway CA, a server certificate for `hostnames` (and 127.0.0.1) and a client certificate: for
    development and tests only."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, cert: x509.Certificate, private: ec.EllipticCurvePrivateKey) -> list[Path]:
        (out / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = out / f"{stem}.key"
        key_path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        key_path.chmod(0o600)
        return [out / f"{stem}.pem", key_path]

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("ecgregen dev CA")).issuer_name(name("ecgregen dev CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    written = write("ca", ca, ca_key)

    def leaf(cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[x509.Certificate, Any]:
        private = key()
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), private

    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    written += write("server", *leaf(hostnames[0], ExtendedKeyUsageOID.SERVER_AUTH, sans))
    written += write("client", *leaf("ecgregen client", ExtendedKeyUsageOID.CLIENT_AUTH, []))
    return written
