"""Bearer API-key authentication. Keys are looked up by their hash; the secret is never stored."""

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from runs import access
from runs.models import ApiKey, hash_api_key

from .throttles import FailedAuthenticationLimiter

# Writing last_used_at on every request would turn each heartbeat into two writes; once a minute
# is precise enough for "when was this key last used".
LAST_USED_PRECISION = timedelta(seconds=60)


class ServiceKeyUser:
    """The principal of an API key that does not act for a person (an agent, a CI job)."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, key):
        self.key = key
        self.username = f"api-key:{key.name}"

    def __str__(self):
        return self.username


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1").split()
        if not header or header[0] != self.keyword:
            return None
        limiter = FailedAuthenticationLimiter(request)
        limiter.check()
        if len(header) != 2:
            limiter.record_failure()
            raise exceptions.AuthenticationFailed("Send the key as 'Authorization: Bearer <key>'.")
        now = timezone.now()
        key = (
            ApiKey.objects.select_related("user", "workspace__account")
            .filter(hashed_secret=hash_api_key(header[1]))
            .first()
        )
        if key is None or not key.is_usable:
            limiter.record_failure()
            raise exceptions.AuthenticationFailed("This API key is unknown, revoked or expired.")
        key.acting_role = acting_role(key)
        if key.last_used_at is None or key.last_used_at < now - LAST_USED_PRECISION:
            ApiKey.objects.filter(pk=key.pk).filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_PRECISION)
            ).update(last_used_at=now)
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


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "runs.api.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API key of the workspace."}
