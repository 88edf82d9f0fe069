"""Secrets out of everything the router stores, shows or logs.

Providers answer with whatever they like, and some echo the request, headers included, in
their error bodies: a provider's token would then reach the execution's error, the job view
and the store. Every provider outcome passes through `Redactor` where it enters the domain
(the scheduler, once a call returns; an HTTP provider also masks its own credentials in all
it returns, metadata included), and the server's log handler passes every record through
`RedactingFilter`.

Two kinds of secret are masked: the configured ones (provider tokens and users' keys read from
the environment, the store URL's password), wherever they appear, and anything written as a
credential (`Bearer ...`, `Authorization: ...`, `api_key=...`), whoever's it is.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from hybrid_router.core.model import Completion, Failure, evolve
from hybrid_router.settings import Settings

MASK = "[redacted]"
# Shorter configured values are left alone: masking every "abc" would garble messages and
# say which letters a key is made of.
MIN_SECRET_CHARS = 4

# What a credential looks like, so that words are left alone ("a bearer token is missing"):
# six or more token characters with a digit among them, or twenty or more.
_CREDENTIAL = r"(?:(?=[\w\-.~+/]*\d)[\w\-.~+/]{6,}|[\w\-.~+/]{20,})=*"
# `Bearer <token>`, `Basic <credentials>` anywhere.
_SCHEME = re.compile(rf"(?i)\b(bearer|basic)(\s+){_CREDENTIAL}")
# A credential's name, a colon or equals sign (quoted or not, as in headers, JSON, queries),
# maybe a scheme, then its value: any value after a name only credentials have, one that
# looks like a credential after a name that words have too ("token: expired").
_SEPARATOR = r"""(["']?\s*[:=]\s*["']?(?:(?:bearer|basic)\s+)?+)"""
_NAMED = re.compile(
    rf"""(?i)(\b(?:proxy-)?authorization|\bx-api-key|\bapi[-_]?key|\bmodal-(?:key|secret)
        |\bpassword){_SEPARATOR}(?!\[redacted\])[^\s"',;&}}]+""",
    re.VERBOSE,
)
_NAMED_LOOSELY = re.compile(
    rf"(?i)(\baccess[-_]?token|\btoken|\bsecret){_SEPARATOR}{_CREDENTIAL}", re.VERBOSE
)


# Every pattern above needs one of these words: text without any (most log lines) skips them.
_CREDENTIAL_WORDS = ("bearer", "basic", "authorization", "key", "password", "token", "secret")


class Redactor:
    """Masks the given secrets, and credential-looking values, in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        kept = {s for s in secrets if len(s) >= MIN_SECRET_CHARS}
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted(kept, key=len, reverse=True)

    @classmethod
    def from_settings(cls, settings: Settings, env: Mapping[str, str] | None = None) -> Redactor:
        """Masks the secrets `settings` names: provider tokens and user keys from `env`, and
        the store URL's password."""
        env = os.environ if env is None else env
        names = [
            name
            for p in settings.providers.values()
            for name in (p.token_env, p.token_id_env, p.token_secret_env)
        ]
        names += [u.api_key_env for u in settings.users.values()]
        secrets = [env[name] for name in names if name and env.get(name)]
        password = urlsplit(settings.store_url).password
        if password:
            secrets.append(password)
        return cls(secrets)

    def __call__(self, text: str) -> str:
        """`text` with every secret and credential-looking value masked."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        # casefold, as the patterns' (?i) would match "ſecret" or a Kelvin sign's "K".
        folded = text.casefold()
        if any(word in folded for word in _CREDENTIAL_WORDS):
            for pattern in (_SCHEME, _NAMED, _NAMED_LOOSELY):
                text = pattern.sub(rf"\1\2{MASK}", text)
        return text

    def outcome(self, outcome: Completion | Failure) -> Completion | Failure:
        """A provider's outcome as the router may keep it: its message or text masked."""
        if isinstance(outcome, Failure):
            return evolve(outcome, message=self(outcome.message))
        return evolve(outcome, response=self(outcome.response))


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record's message and traceback before any handler writes it."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        # The message and each argument on their own: formatters such as uvicorn's access
        # log read the arguments themselves.
        if isinstance(record.msg, str):
            record.msg = self.redactor(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {k: self._masked(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(self._masked(a) for a in record.args)
        if record.exc_info:
            # Formatted here, once: the handler then writes the masked text as it is.
            record.exc_text = self.redactor(logging.Formatter().formatException(record.exc_info))
        return True

    def _masked(self, value: object) -> object:
        if isinstance(value, str):
            return self.redactor(value)
        if isinstance(value, BaseException):
            return self.redactor(str(value))
        return value
