"""Pages of API lists: page numbers for small lists, keyset cursors for runs and logs.

DRF's CursorPagination keys a page on the first ordering field alone and breaks ties with an
offset (capped at 1000). Runs tie a lot: the scheduler gives every run of a pass the same
`created`, and many schedules fire at 02:00. Such pages would repeat or skip rows, and past the
cap loop forever. A keyset cursor holds the last row's (value, id); the next page is the rows
strictly after it in (field, id) order, one index range scan at any depth, and a row inserted
meanwhile never shifts a page.
"""

import base64
import binascii
import json
from datetime import datetime, timezone

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q
from rest_framework import serializers
from rest_framework.pagination import CursorPagination, PageNumberPagination
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param


class PagePagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


class KeysetPagination(CursorPagination):
    """Cursor pages keyed on (ordering field, id). Subclasses name their `orderings`, the first
    being the default; with `ordering_query_param` set, clients choose among them."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    orderings = ("-created",)
    ordering_query_param = None
    display_page_controls = False  # no HTML page links in the browsable API
    invalid_cursor = "This cursor is not valid here; follow the next and previous links as given."
    max_cursor_length = 400  # a real one is about 150 characters

    def chosen_ordering(self, request):
        if self.ordering_query_param is None:
            return self.orderings[0]
        chosen = request.query_params.get(self.ordering_query_param) or self.orderings[0]
        if chosen not in self.orderings:
            raise serializers.ValidationError(
                {self.ordering_query_param: [f"Choose one of {', '.join(self.orderings)}."]})
        return chosen

    def paginate_queryset(self, queryset, request, view=None):
        self.request, self.page_size = request, self.get_page_size(request)
        self.ordering = self.chosen_ordering(request)
        self.field = self.ordering.lstrip("-")
        cursor = self.decode_cursor(request, queryset.model)
        backwards = self.backwards = bool(cursor and cursor["backwards"])
        # Forward through a descending order, or backward through an ascending one, walks down.
        down = self.ordering.startswith("-") != backwards
        if cursor:
            value, pk, op = cursor["value"], cursor["pk"], "lt" if down else "gt"
            # The redundant bound (value ≤ / ≥) lets the database start an index range scan there.
            queryset = queryset.filter(**{f"{self.field}__{op}e": value}).filter(
                Q(**{f"{self.field}__{op}": value}) | Q(**{self.field: value, f"pk__{op}": pk}))
        sign = "-" if down else ""
        rows = list(queryset.order_by(f"{sign}{self.field}", f"{sign}pk")[: self.page_size + 1])
        more = len(rows) > self.page_size
        rows = rows[: self.page_size]
        if backwards:
            rows.reverse()
        self.next_row = rows[-1] if rows and (backwards or more) else None
        self.previous_row = rows[0] if rows and (more if backwards else cursor is not None) else None
        # A page emptied meanwhile (its rows deleted) still leads somewhere: back to the first page.
        self.restart = cursor is not None and not rows
        return rows

    def decode_cursor(self, request, model):
        raw = request.query_params.get(self.cursor_query_param)
        if not raw:
            return None
        try:
            if len(raw) > self.max_cursor_length:
                raise ValueError("too long")
            token = json.loads(base64.urlsafe_b64decode(raw.encode("ascii")))
            if not isinstance(token, dict) or token.get("o") != self.ordering or not isinstance(token.get("v"), str) \
                    or not isinstance(token.get("id"), (str, int)) or isinstance(token.get("id"), bool):
                raise ValueError("not a cursor of this list")
            value = model._meta.get_field(self.field).to_python(token["v"])
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise ValueError("not an aware time")
            # In UTC here, as the database will want it: an offset past ±15:59 or a time outside
            # years 1..9999 in UTC is the client's 400, not a 500 in the driver.
            value = value.astimezone(timezone.utc)
            pk = model._meta.pk.to_python(token["id"])
            if isinstance(pk, int) and not -2**63 <= pk < 2**63:
                raise ValueError("an id out of the database's range")
            return {"value": value, "pk": pk, "backwards": bool(token.get("b"))}
        except (ValueError, TypeError, KeyError, UnicodeError, OverflowError, RecursionError, binascii.Error,
                DjangoValidationError):
            raise serializers.ValidationError({self.cursor_query_param: [self.invalid_cursor]}) from None

    def link(self, row, backwards):
        value = getattr(row, self.field)
        token = {"o": self.ordering, "v": value.isoformat() if hasattr(value, "isoformat") else value,
                 "id": str(row.pk), "b": int(backwards)}
        encoded = base64.urlsafe_b64encode(json.dumps(token, separators=(",", ":")).encode()).decode("ascii")
        return replace_query_param(self.request.build_absolute_uri(), self.cursor_query_param, encoded)

    def first_page(self):
        return remove_query_param(self.request.build_absolute_uri(), self.cursor_query_param)

    def get_next_link(self):
        if self.next_row:
            return self.link(self.next_row, backwards=False)
        return self.first_page() if self.restart and self.backwards else None

    def get_previous_link(self):
        if self.previous_row:
            return self.link(self.previous_row, backwards=True)
        return self.first_page() if self.restart and not self.backwards else None

    def get_paginated_response(self, data):
        return Response({"next": self.get_next_link(), "previous": self.get_previous_link(), "results": data})
