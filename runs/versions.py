"""Flow versions: which version a run runs, and what changed between two versions.

A schedule either follows its flow's latest version (`Schedule.flow_version` empty) or is pinned
to one version. The version is decided when an agent claims the run, not when the run is made:
the scheduler makes runs up to ten fire times ahead, and a deploy between making and claiming
must reach the following schedules' next runs (Prefect runs a deployment's current code the same
way). Runs are still made with the version that would run if claimed now, and re-pointed when
that changes (a registration, a pin or an unpin), so a waiting run shows what it will run.
Manual runs without a schedule keep the version they were made with: the person asked for that.
"""

from django.db.models import BigIntegerField, Case, F, OuterRef, Subquery, When
from django.db.models.functions import Coalesce

from runs.models import CLAIMABLE_STATES, FlowRun, FlowVersion, Schedule

# JSON's names for the types of parameter defaults, as a person reading a schema expects them.
_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
               (dict, "object"))


def json_type(value):
    """The JSON type of a parameter's default: string, integer, number, boolean, null, array or object."""
    if value is None:
        return "null"
    for python_type, name in _JSON_TYPES:  # bool before int: True is an int in Python
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def version_at_claim():
    """The flow_version_id a claimed run takes, as one expression of the claim's UPDATE: its
    schedule's pinned version, else the flow's latest; a run without a schedule keeps its own."""
    pinned = Schedule.objects.filter(pk=OuterRef("schedule_id")).values("flow_version_id")[:1]
    latest = FlowVersion.objects.filter(flow_id=OuterRef("flow_id"), is_latest=True).values("id")[:1]
    as_id = BigIntegerField()
    return Case(
        When(schedule_id__isnull=True, then=F("flow_version_id")),
        default=Coalesce(Subquery(pinned, output_field=as_id), Subquery(latest, output_field=as_id),
                         F("flow_version_id"), output_field=as_id),
        output_field=as_id,
    )


def waiting_runs_of(schedules):
    """Runs of `schedules` (a queryset or list) no agent has claimed yet: those a pin change re-points."""
    return FlowRun.objects.alive().filter(schedule__in=schedules, state__in=CLAIMABLE_STATES,
                                          start_time__isnull=True)


def repoint_waiting_runs(schedule):
    """After a pin or unpin: the schedule's unclaimed runs show the version they will now run."""
    version_id = schedule.flow_version_id
    if version_id is None:
        version_id = FlowVersion.objects.filter(flow_id=schedule.flow_id, is_latest=True).values("id")[:1]
        version_id = Subquery(version_id)
    return waiting_runs_of([schedule.pk]).update(flow_version_id=version_id)


def repoint_following_runs(flow_id, version_id):
    """After `version_id` became the latest of `flow_id`: unclaimed runs of its following schedules
    show it. One UPDATE; the claim decides anyway, this keeps what a waiting run shows true."""
    following = Schedule.objects.filter(flow_id=flow_id, flow_version__isnull=True)
    stale = waiting_runs_of(following).filter(flow_id=flow_id).exclude(flow_version_id=version_id)
    return stale.update(flow_version_id=version_id)


def _diff_mapping(old, new, *, with_types):
    """Keys added, removed and changed between two JSON objects, each sorted by key."""
    def entry(key, value, prefix=""):
        item = {"key": key, f"{prefix}value": value}
        if with_types:
            item[f"{prefix}type"] = json_type(value)
        return item

    added = [entry(k, new[k]) for k in sorted(new.keys() - old.keys())]
    removed = [entry(k, old[k]) for k in sorted(old.keys() - new.keys())]
    changed = []
    for key in sorted(old.keys() & new.keys()):
        before, after = old[key], new[key]
        # 1 and 1.0, or 1 and True, are equal in Python but not the same default in JSON.
        if before != after or json_type(before) != json_type(after):
            item = {"key": key, "old_value": before, "new_value": after}
            if with_types:
                item.update(old_type=json_type(before), new_type=json_type(after))
            changed.append(item)
    unchanged = len(old.keys() & new.keys()) - len(changed)
    return {"added": added, "removed": removed, "changed": changed, "unchanged": unchanged}


def compare_versions(base, head):
    """What changed from version `base` to version `head` (two FlowVersions of one flow):
    entrypoint, default parameters (keys added, removed or changed, with their JSON types),
    job_env (keys added, removed or changed, with old and new values) and secret names."""
    base_secrets, head_secrets = set(base.secrets or []), set(head.secrets or [])
    parameters = _diff_mapping(base.parameters or {}, head.parameters or {}, with_types=True)
    job_env = _diff_mapping(base.job_env or {}, head.job_env or {}, with_types=False)
    secrets = {"added": sorted(head_secrets - base_secrets), "removed": sorted(base_secrets - head_secrets),
               "unchanged": len(base_secrets & head_secrets)}
    entrypoint = {"old": base.entrypoint, "new": head.entrypoint, "changed": base.entrypoint != head.entrypoint}
    identical = not (entrypoint["changed"] or any(parameters[k] or job_env[k] or secrets.get(k)
                                                  for k in ("added", "removed", "changed")))
    return {"base": base, "head": head, "entrypoint": entrypoint, "parameters": parameters, "job_env": job_env,
            "secrets": secrets, "identical": identical}
