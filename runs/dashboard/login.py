"""Sign-in with a limit on failed attempts, for the dashboard's login page and the admin's.

Failures count per client address (orchestrator.client_address) and per username. Past either
rate the form refuses to check any password, the right one included, until the window ends:
unlike API keys, passwords can be guessed, so a throttled guess must not learn whether it was
right. A right password clears its username's count (not the address's: one account's owner must
not be able to reset the count of guesses at others from the same address). The price of the
per-username limit is that someone who knows a username can keep its owner out for a window at
a time (ORCHESTRATOR_THROTTLE_FAILED_LOGIN_USER_RATE, empty turns it off). Like the API's
throttles, the limit fails open when the cache is away.
"""

import hashlib

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from orchestrator.client_address import client_address
from runs.api.throttles import FailureCounter


class FailedLoginLimiter:
    """The failed sign-ins of one client address and of one username."""

    def __init__(self, request, username):
        rates = settings.ORCHESTRATOR
        # Hashed: a username may hold characters or a length a cache key must not.
        name = hashlib.sha256((username or "").strip().lower().encode()).hexdigest()
        self.by_address = FailureCounter("failed_login_address", client_address(request),
                                         rates["THROTTLE_FAILED_LOGIN_RATE"])
        self.by_username = FailureCounter("failed_login_username", name, rates["THROTTLE_FAILED_LOGIN_USER_RATE"])

    def refusal(self):
        """(why no password may be checked now, seconds to wait), or (None, 0)."""
        for counter, whom in ((self.by_address, "from your address"), (self.by_username, "for this username")):
            wait = counter.wait()
            if wait:
                minutes = -(-wait // 60)
                return (f"Too many failed sign-ins {whom}. Try again in {minutes} minute{'s' if minutes > 1 else ''}; "
                        "until then no password is checked."), wait
        return None, 0

    def record_failure(self):
        self.by_address.record()
        self.by_username.record()

    def forget_username(self):
        self.by_username.clear()


class RateLimitedLoginMixin:
    """Checks the failed-sign-in limits before a password, and counts a wrong one."""

    retry_after = 0  # seconds, when the limits refused the attempt

    def clean(self):
        if self.request is None:  # not from a view: nothing to count by
            return super().clean()
        limiter = FailedLoginLimiter(self.request, self.cleaned_data.get("username"))
        refusal, self.retry_after = limiter.refusal()
        if refusal:
            raise ValidationError(refusal, code="throttled")
        try:
            cleaned = super().clean()
        except ValidationError:
            # A user found but refused (inactive, or not staff for the admin) gave the right password.
            if self.user_cache is None:
                limiter.record_failure()
            raise
        if self.user_cache is not None:
            limiter.forget_username()
        return cleaned


class RateLimitedAuthenticationForm(RateLimitedLoginMixin, AuthenticationForm):
    """The dashboard's login form."""


class RateLimitedAdminAuthenticationForm(RateLimitedLoginMixin, AdminAuthenticationForm):
    """The admin's login form (orchestrator/urls.py sets it on the admin site)."""


class LoginView(auth_views.LoginView):
    """The dashboard's login page; an attempt the limits refused is a 429 with Retry-After."""

    authentication_form = RateLimitedAuthenticationForm
    template_name = "dashboard/login.html"
    next_page = "dashboard:overview"

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.retry_after:
            response.status_code = 429
            response["Retry-After"] = str(form.retry_after)
        return response
