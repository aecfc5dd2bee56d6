"""API keys (hashed, constant-time, per-key token buckets) and log redaction.

Keys are random tokens (`mangaassist keys new`: 256 bits), so one sha256 is enough to store them:
there is no dictionary to attack, and the check stays a microsecond per request. Logs never see a
key, an e-mail address or an order number: `redact` is applied to every record by `RedactingFilter`.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import secrets
from pathlib import Path

import token_bucket

from .config import AuthSettings
from .routing import _ORDER

SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# credentials as they appear in headers or text: bearer tokens, x-api-key values, AWS key ids
CREDENTIAL = re.compile(r"(?i)(bearer\s+|x-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]+|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")


def redact(text: str) -> str:
    """The text with credentials, e-mail addresses and order numbers replaced by placeholders."""
    text = CREDENTIAL.sub(lambda m: f"{m.group(1) or ''}[key]", text)
    text = EMAIL.sub("[email]", text)
    return _ORDER.sub("[order]", text)


class RedactingFilter(logging.Filter):
    """Redacts every record passing a handler: its message with the arguments merged in."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's own error path
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:  # tracebacks carry exception messages
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def install_log_redaction(*names: str) -> None:
    """Add the filter to every handler of the root logger and of the named loggers (idempotent)."""
    for logger in (logging.getLogger(), *map(logging.getLogger, names)):
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "ma_" + secrets.token_urlsafe(32)


def load_key_hashes(settings: AuthSettings) -> list[str]:
    """The configured digests, then those of the environment variable and of the file (Kubernetes
    Secrets). Anything else is refused by its position only: it may be a key pasted by mistake."""
    sources = {"auth.key_hashes": list(settings.key_hashes)}
    if settings.key_hashes_env:
        sources[f"${settings.key_hashes_env}"] = re.split(r"[,\s]+", os.environ.get(settings.key_hashes_env, ""))
    if settings.key_hashes_file:
        sources[settings.key_hashes_file] = re.split(r"[,\s]+", Path(settings.key_hashes_file).read_text())
    hashes = []
    for source, values in sources.items():
        values = [v.strip() for v in values if v.strip()]
        bad = [i for i, v in enumerate(values) if not SHA256_HEX.fullmatch(v)]
        if bad:
            raise ValueError(f"entries {bad} of {source} are not sha256 hex digests (64 hex characters); "
                             "hash keys with `mangaassist keys hash`")
        hashes += [v.lower() for v in values]
    return hashes


class AuthError(Exception):
    def __init__(self, status: int, type_: str, message: str, retry_after: int | None = None):
        self.status, self.type, self.message, self.retry_after = status, type_, message, retry_after


class ApiKeys:
    """Checks a request's key and charges its bucket. Buckets live in the gateway replica: with N
    gateway replicas a key may get up to N times `rate_per_s` in all."""

    def __init__(self, settings: AuthSettings):
        self.enabled = settings.enabled
        self.digests = [bytes.fromhex(h) for h in load_key_hashes(settings)] if settings.enabled else []
        if self.enabled and not self.digests:
            raise ValueError("auth.enabled is true but no API key digests are configured "
                             f"(auth.key_hashes, ${settings.key_hashes_env}, auth.key_hashes_file)")
        self.rate = settings.rate_per_s
        self.buckets = token_bucket.Limiter(settings.rate_per_s, settings.burst, token_bucket.MemoryStorage())

    @staticmethod
    def presented(headers) -> str | None:
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return headers.get("x-api-key") or None

    def check(self, headers) -> None:
        """Raise AuthError (401: missing or unknown key, one message for both; 429: over the key's rate)."""
        if not self.enabled:
            return
        key = self.presented(headers)
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest() if key else b""
        # compare with every digest, no early exit: the time does not tell which one nearly matched
        matched = b""
        for candidate in self.digests:
            if hmac.compare_digest(candidate, digest):
                matched = candidate
        if not matched:
            raise AuthError(401, "unauthorized", "a valid API key is required (Authorization: Bearer <key> or x-api-key)")
        if not self.buckets.consume(matched):
            raise AuthError(429, "rate_limited", "too many requests for this API key", max(1, math.ceil(1 / self.rate)))
