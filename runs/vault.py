"""Encryption of a workspace's secrets at rest (Fernet: AES-128-CBC with an HMAC, from `cryptography`).

Keys come from ORCHESTRATOR_SECRETS_KEY, a comma-separated list of Fernet keys: the first encrypts,
every one decrypts, so a key is rotated by putting a new one first, restarting, and running
`manage.py rotate_secrets_key` (which re-encrypts every secret with the first key), after which
the old key can go. Without ORCHESTRATOR_SECRETS_KEY a key is derived from SECRET_KEY, which is
fine for `make run` but ties the secrets to SECRET_KEY: production sets its own (a deploy check
says so).
"""

import base64
import functools
import hashlib

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from agent.logs import redact, redaction_list  # noqa: F401 - redact is this module's too

# A value this long at most (characters); a secret is a password, a token, a small key file.
MAX_VALUE_CHARS = 65536


class CannotDecrypt(Exception):
    """The stored value was encrypted with a key that is not configured (any more)."""


def derived_key():
    digest = hashlib.sha256(f"orchestrator.secrets.v1:{settings.SECRET_KEY}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()


def configured_keys():
    """The Fernet keys in use, the encrypting one first."""
    return list(settings.ORCHESTRATOR["SECRETS_KEYS"]) or [derived_key()]


@functools.lru_cache(maxsize=4)
def _fernet(keys):
    from cryptography.fernet import Fernet, MultiFernet  # on first use: processes that never decrypt skip it

    try:
        return MultiFernet([Fernet(key) for key in keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "ORCHESTRATOR_SECRETS_KEY must be a comma-separated list of Fernet keys (32 url-safe base64 bytes "
            "each; make one with `python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'`)."
        ) from exc


def _invalid_token():
    from cryptography.fernet import InvalidToken

    return InvalidToken


def fernet():
    return _fernet(tuple(configured_keys()))


def encrypt(value):
    return fernet().encrypt(value.encode()).decode()


def decrypt(ciphertext):
    try:
        return fernet().decrypt(ciphertext.encode()).decode()
    except _invalid_token():
        raise CannotDecrypt("This secret was encrypted with a key ORCHESTRATOR_SECRETS_KEY does not hold.") from None


def reencrypt(ciphertext):
    """The same value encrypted with the first key (MultiFernet.rotate)."""
    try:
        return fernet().rotate(ciphertext.encode()).decode()
    except _invalid_token():
        raise CannotDecrypt("This secret was encrypted with a key ORCHESTRATOR_SECRETS_KEY does not hold.") from None


# Redaction is the agent's (agent/logs.py, plain Python): the server redacts the same forms of a
# secret (as it is, stripped, JSON- and repr-escaped, line by line) that runners and agents do, so
# the two can never disagree.
redaction_forms = redaction_list


def check_secrets_key(app_configs=None, **kwargs):
    """Deploy check: production sets its own key, so that changing SECRET_KEY keeps the secrets readable."""
    from django.core.checks import Warning

    if settings.ORCHESTRATOR["SECRETS_KEYS"]:
        try:
            fernet()
        except ImproperlyConfigured as exc:
            return [Warning(str(exc), id="orchestrator.W002")]
        return []
    return [Warning(
        "ORCHESTRATOR_SECRETS_KEY is not set: workspace secrets are encrypted with a key derived from SECRET_KEY, "
        "and changing SECRET_KEY would make them unreadable.",
        hint="Set ORCHESTRATOR_SECRETS_KEY to a Fernet key (README: Secrets).", id="orchestrator.W001")]
