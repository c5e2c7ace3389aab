"""What every dashboard page's header shows: the person's role in each of their workspaces.

Given to templates as a callable, so only a page that shows the header (the dashboard's, not the
admin's or the API's) pays its one query.
"""

from functools import cached_property

from runs.models import Membership

# The header names this many workspaces; the rest are counted.
SHOWN = 3


class HeaderRoles:
    def __init__(self, user):
        self.user = user

    @cached_property
    def rows(self):
        """[(role, where)] for the header; ("admin", "every workspace") for a platform admin."""
        if not getattr(self.user, "is_authenticated", False):
            return []
        if self.user.is_superuser:
            return [("admin", "every workspace")]
        memberships = list(
            Membership.objects.filter(user_id=self.user.pk)
            .order_by("workspace__account__slug", "workspace__slug")
            .values_list("role", "workspace__account__slug", "workspace__slug")[: SHOWN + 1]
        )
        rows = [(role, f"{account}/{workspace}") for role, account, workspace in memberships[:SHOWN]]
        if len(memberships) > SHOWN:
            rows.append(("…", "more workspaces"))
        return rows

    def __iter__(self):
        return iter(self.rows)

    def __bool__(self):
        return bool(self.rows)


def header_roles(request):
    return {"header_roles": HeaderRoles(getattr(request, "user", None))}
