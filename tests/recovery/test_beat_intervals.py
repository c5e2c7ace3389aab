"""Beat's rows follow the environment: every beat start and every migrate apply the services' intervals.

The environment is the one source of a service's interval (ORCHESTRATOR_…_LOOP_SECONDS); the
admin keeps one switch per service, `enabled`.
"""

import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connections
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from orchestrator.celery import app as celery_app
from services import registry
from services.beat import apply_service_intervals
from services.models import ServiceSchedule


def _row(name):
    return PeriodicTask.objects.select_related("interval").get(name=f"service: {name}")


def _every(name):
    row = _row(name)
    return row.interval.every, row.interval.period


@pytest.fixture
def environment(settings):
    """environment(**{setting: seconds}) -> the ORCHESTRATOR settings as a restarted process would read them."""

    def set_to(**values):
        settings.ORCHESTRATOR = {**settings.ORCHESTRATOR, **values}

    return set_to


@pytest.mark.django_db
def test_a_changed_variable_moves_the_beat_row_on_the_next_start(environment, periodic_tasks):
    environment(LAZARUS_LOOP_SECONDS=120, ZOMBIE_KILLER_LOOP_SECONDS=45)
    assert sorted(apply_service_intervals()) == ["lazarus", "zombie-killer"]
    assert (_every("lazarus"), _every("zombie-killer")) == ((120, "seconds"), (45, "seconds"))
    environment(LAZARUS_LOOP_SECONDS=900)
    assert apply_service_intervals() == ["lazarus"]
    assert _every("lazarus") == (900, "seconds")
    assert apply_service_intervals() == []  # nothing to do: a second beat starting changes nothing


@pytest.mark.django_db
def test_migrate_applies_the_environments_intervals(environment, periodic_tasks):
    environment(AGENT_MONITOR_LOOP_SECONDS=75)
    call_command("migrate", verbosity=0)
    assert _every("agent-monitor") == (75, "seconds")


@pytest.mark.django_db
def test_an_admins_disabled_service_stays_disabled_across_restarts(environment, periodic_tasks):
    PeriodicTask.objects.filter(name="service: lazarus").update(enabled=False)
    environment(LAZARUS_LOOP_SECONDS=1200)
    apply_service_intervals()
    row = _row("lazarus")
    assert (row.enabled, row.interval.every) == (False, 1200)


@pytest.mark.django_db
def test_rows_edited_or_deleted_by_hand_are_put_back(periodic_tasks):
    # An admin moved zombie-killer to a crontab and edited the interval lazarus shares with nobody.
    crontab = CrontabSchedule.objects.create(minute="*/5")
    PeriodicTask.objects.filter(name="service: zombie-killer").update(interval=None, crontab=crontab, args="[]")
    lazarus_interval = _row("lazarus").interval
    lazarus_interval.every = 7
    lazarus_interval.save()
    PeriodicTask.objects.filter(name="service: agent-monitor").delete()
    before = PeriodicTasks.last_change()
    assert sorted(apply_service_intervals()) == ["agent-monitor", "lazarus", "zombie-killer"]
    zombie = _row("zombie-killer")
    assert (zombie.crontab_id, zombie.interval.every, zombie.args) == (None, 60, '["zombie-killer"]')
    assert _every("lazarus") == (600, "seconds") and _row("agent-monitor").enabled
    # Running beats notice the change (django-celery-beat reloads when this timestamp moves).
    assert before is None or PeriodicTasks.last_change() > before


@pytest.mark.django_db(transaction=True)
def test_the_beat_scheduler_applies_the_environment_before_its_first_schedule(environment):
    """What `celery -A orchestrator beat` does on start (CELERY_BEAT_SCHEDULER), without a broker."""
    from django.conf import settings

    from services.beat_scheduler import ServiceScheduler

    assert settings.CELERY_BEAT_SCHEDULER == "services.beat_scheduler:ServiceScheduler"
    environment(LAZARUS_LOOP_SECONDS=240)
    scheduler = ServiceScheduler(app=celery_app)
    try:
        entry = scheduler.schedule["service: lazarus"]
        assert entry.schedule.run_every == timedelta(seconds=240) and entry.args == ["lazarus"]
        assert set(scheduler.schedule) >= {f"service: {name}" for name in registry.all_services()}
    finally:
        scheduler._finalize.cancel()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_beats_starting_at_once_leave_one_row_per_service(postgres_only, environment):
    PeriodicTask.objects.filter(name__startswith="service: ").delete()
    ServiceSchedule.objects.all().delete()
    environment(LAZARUS_LOOP_SECONDS=4321)  # an interval no row has yet: both starts would create it
    copies = 4
    barrier = threading.Barrier(copies)
    results, errors = [], []

    def start_a_beat():
        try:
            barrier.wait()
            results.append(apply_service_intervals())
        except Exception as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=start_a_beat) for _ in range(copies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    names = [f"service: {name}" for name in registry.all_services()]
    assert sorted(PeriodicTask.objects.filter(name__in=names).values_list("name", flat=True)) == sorted(names)
    assert IntervalSchedule.objects.filter(every=4321, period="seconds").count() == 1
    assert ServiceSchedule.objects.count() == len(names)
    # One start created every row; the others found them as they should be.
    assert sorted(len(changed) for changed in results) == [0] * (copies - 1) + [len(names)]


@pytest.mark.django_db
def test_the_admin_shows_a_services_interval_read_only_and_keeps_enabled_editable(admin_client, periodic_tasks):
    row = _row("zombie-killer")
    page = admin_client.get(f"/admin/django_celery_beat/periodictask/{row.pk}/change/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "ORCHESTRATOR_ZOMBIE_KILLER_LOOP_SECONDS" in html and 'name="enabled"' in html
    assert 'name="interval"' not in html and 'name="task"' not in html
    answer = admin_client.post(f"/admin/django_celery_beat/periodictask/{row.pk}/change/", {})  # unchecked
    assert answer.status_code == 302
    row = _row("zombie-killer")
    assert (row.enabled, row.interval.every) == (False, 60)
    listing = admin_client.get("/admin/django_celery_beat/periodictask/").content.decode()
    assert "ORCHESTRATOR_LAZARUS_LOOP_SECONDS" in listing
    assert admin_client.get(f"/admin/django_celery_beat/periodictask/{row.pk}/delete/").status_code == 403
