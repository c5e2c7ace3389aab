"""The API's list filters, as django-filter FilterSets.

The query-parameter rules stay those of runs/api/filters.py (and their messages): states as a
comma-separated list in any case, times in ISO 8601 converted to UTC, booleans as true/false,
ids as UUIDs. A bad value is a 400 naming the parameter (DjangoFilterBackend raises the
FilterSet's form errors as a DRF ValidationError), never a 500 and never ignored.
"""

import django_filters
from django import forms
from django_filters.rest_framework import DjangoFilterBackend

from runs.models import AuditEntry, FlowRun, TaskRun

from . import filters as parse


class ParsedField(forms.Field):
    """A form field whose value comes from one of runs/api/filters.py's parsers; their
    ValueError or ValidationError becomes this field's error, with the parser's words."""

    def __init__(self, *args, parser, **kwargs):
        self.parser = parser
        kwargs.setdefault("required", False)
        super().__init__(*args, **kwargs)

    def to_python(self, value):
        if value in (None, ""):
            return None
        try:
            return self.parser(value)
        except ValueError as exc:
            # django-filter formats every message with `%` (translate_validation): a value quoted
            # back that holds a % sign would make the 400 a 500.
            raise forms.ValidationError(str(exc).replace("%", "%%")) from None


class ParsedFilter(django_filters.Filter):
    parser = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra["parser"] = type(self).parser

    field_class = ParsedField

    def filter(self, qs, value):
        if value is None:
            return qs
        return super().filter(qs, value)


class StatesFilter(ParsedFilter):
    parser = staticmethod(parse.parse_states)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("lookup_expr", "in")
        super().__init__(*args, **kwargs)


class TimeFilter(ParsedFilter):
    parser = staticmethod(parse.utc_time)


class BooleanFilter(ParsedFilter):
    parser = staticmethod(parse.parse_boolean)


class UUIDFilter(ParsedFilter):
    parser = staticmethod(parse.parse_uuid)


class TextFilter(django_filters.CharFilter):
    """Exact text, cut to `max_length` characters (a longer value matches nothing anyway)."""

    def __init__(self, *args, max_length=200, **kwargs):
        self.max_length = max_length
        super().__init__(*args, **kwargs)

    def filter(self, qs, value):
        return super().filter(qs, value[: self.max_length] if value else value)


class FlowRunFilter(django_filters.FilterSet):
    state = StatesFilter(field_name="state", help_text="Comma-separated states, e.g. FAILED,CRASHED.")
    flow = TextFilter(field_name="flow__name", help_text="The flow's name.")
    schedule = TextFilter(field_name="schedule_slug", help_text="The schedule's slug.")
    auto_scheduled = BooleanFilter(field_name="auto_scheduled", help_text="true: made by the scheduler.")
    scheduled_after = TimeFilter(field_name="scheduled_start", lookup_expr="gte", help_text="Due at or after.")
    scheduled_before = TimeFilter(field_name="scheduled_start", lookup_expr="lt", help_text="Due before.")

    class Meta:
        model = FlowRun
        fields = []


class TaskRunFilter(django_filters.FilterSet):
    flow_run = UUIDFilter(field_name="flow_run_id", help_text="Only this flow run's task runs.")
    state = StatesFilter(field_name="state", help_text="Comma-separated states.")

    class Meta:
        model = TaskRun
        fields = []


class AuditFilter(django_filters.FilterSet):
    action = django_filters.CharFilter(method="by_action", help_text="An action (schedule.pause) or a kind (schedule).")
    actor = TextFilter(field_name="actor", help_text="Who did it, as the trail names them.")
    since = TimeFilter(field_name="occurred", lookup_expr="gte", help_text="occurred ≥ this.")
    until = TimeFilter(field_name="occurred", lookup_expr="lt", help_text="occurred < this.")

    class Meta:
        model = AuditEntry
        fields = []

    def by_action(self, queryset, name, value):
        wanted = value[:60]
        return queryset.filter(action=wanted) if "." in wanted else queryset.filter(target_type=wanted)


class FilterBackend(DjangoFilterBackend):
    """django-filter's backend, only where a view names its FilterSet, and only on its lists (or
    the actions it names in `filtered_actions`, e.g. a download of what the list shows)."""

    def get_filterset_class(self, view, queryset=None):
        if getattr(view, "action", "list") not in getattr(view, "filtered_actions", {"list"}):
            return None
        return super().get_filterset_class(view, queryset)
