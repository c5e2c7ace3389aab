"""Bearer authentication: API keys (looked up by their hash, the secret is never stored, and kept
verified in the process for a few seconds: runs/api/key_cache.py) and the report tokens of flow runs
(checked without a query; see runs/run_tokens.py)."""

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from runs import access
from runs.models import ApiKey, hash_api_key
from runs.run_tokens import InvalidRunToken, is_run_token, read_token

from .key_cache import verified_keys
from .throttles import FailedAuthenticationLimiter

# Writing last_used_at on every request would turn each heartbeat into two writes; once a minute
# is precise enough for "when was this key last used".
LAST_USED_PRECISION = timedelta(seconds=60)


class NotAPerson:
    """A principal that is no person (no user row): authenticated, never staff."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None
    username = ""

    def __str__(self):
        return self.username


class ServiceKeyUser(NotAPerson):
    """The principal of an API key that does not act for a person (an agent, a CI job)."""

    def __init__(self, key):
        self.key = key
        self.username = f"api-key:{key.name}"


class RunPrincipal(NotAPerson):
    """The principal of a flow run's report token: the runner (or agent) of one attempt of one run."""

    def __init__(self, grant):
        self.grant = grant
        self.username = f"run:{grant.run_id}"


def _bearer(request):
    header = authentication.get_authorization_header(request).decode("latin-1").split()
    return header if header and header[0] == "Bearer" else None


class RunTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer orr_…`: a flow run's report token. Which run and attempt it may report
    for is the view's to check (runs/api/agents.py); here only that this server made it."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = _bearer(request)
        if not header or len(header) != 2 or not is_run_token(header[1]):
            return None
        try:
            grant = read_token(header[1])
        except InvalidRunToken as exc:
            FailedAuthenticationLimiter(request).refuse(str(exc))
        return RunPrincipal(grant), grant

    def authenticate_header(self, request):
        return self.keyword


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = _bearer(request)
        if not header:
            return None
        # The key is looked up first and only failures are throttled (see FailedAuthenticationLimiter).
        if len(header) != 2:
            FailedAuthenticationLimiter(request).refuse("Send the key as 'Authorization: Bearer <key>'.")
        now = timezone.now()
        hashed = hash_api_key(header[1])
        verified = verified_keys.get(hashed)
        if verified is None:
            found = (
                ApiKey.objects.select_related("user", "workspace__account")
                .filter(hashed_secret=hashed, revoked_at__isnull=True)
                .first()
            )
            if found is None or not found.is_usable:
                FailedAuthenticationLimiter(request).refuse("This API key is unknown, revoked or expired.")
            verified = verified_keys.put(hashed, found, acting_role(found))
        elif verified.key.expires_at is not None and verified.key.expires_at <= now:
            # Expiry is the clock's, not the cache's: an expired key is refused at once.
            verified_keys.forget(hashed)
            FailedAuthenticationLimiter(request).refuse("This API key is unknown, revoked or expired.")
        last_used = verified.key.last_used_at
        if last_used is None or last_used < now - LAST_USED_PRECISION:
            ApiKey.objects.filter(pk=verified.key.pk).filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_PRECISION)
            ).update(last_used_at=now)
            verified.key.last_used_at = now  # the cached key too, or every request would write again
        key = verified.fresh()
        user = key.user if key.user_id else ServiceKeyUser(key)
        return user, key

    def authenticate_header(self, request):
        return self.keyword


def acting_role(key):
    """The role a key acts with. A service key has its own; a person's key never more than the
    person has now, so removing, demoting or deactivating someone also limits their keys."""
    if not key.user_id:
        return key.role
    if not key.user.is_active:
        raise exceptions.AuthenticationFailed("This API key belongs to a deactivated account.")
    role = access.personal_key_role(key.role, access.role_of(key.user, key.workspace_id))
    if role is None:
        raise exceptions.AuthenticationFailed("This API key's owner is no longer a member of its workspace.")
    return role


class RunTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "runs.api.authentication.RunTokenAuthentication"
    name = "runToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "A flow run's report token (orr_…), from the claim that handed the run out."}


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "runs.api.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API key of the workspace."}
