"""The steps of the killed-worker test, each run as its own process against the test's database:
`seed N` (two flows; the first with N finished runs, each with a task run, history and logs),
`request` (delete the first flow, as the API does: the job goes to the broker after the commit),
`resume SECONDS` (the deletion-jobs service, its clock SECONDS ahead, tasks run inline), `counts`."""

import json
import os
import sys
from datetime import timedelta

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
django.setup()

from django.utils import timezone  # noqa: E402

from runs import actions  # noqa: E402
from runs.audit import Who  # noqa: E402
from runs.models import Account, DeletionJob, Flow, FlowRun, Log, StateChange, TaskRun, Workspace  # noqa: E402


def seed(count):
    from tests.lifecycle.conftest import finished_runs

    account = Account.objects.create(name="Crash", slug="crash")
    ws = Workspace.objects.create(account=account, name="Crash", slug="crash")
    doomed = Flow.objects.create(workspace=ws, name="doomed")
    kept = Flow.objects.create(workspace=ws, name="kept")
    ended = timezone.now() - timedelta(days=1)
    for start in range(0, count, 1000):
        finished_runs(doomed, min(1000, count - start), ended=ended, tasks=1, logs=2)
    finished_runs(kept, 50, ended=ended, tasks=1, logs=2)
    print(json.dumps({"doomed": doomed.pk, "kept": kept.pk}))


def request():
    job = actions.delete_flow(Flow.objects.get(name="doomed"), who=Who.command("deletion_scenario"))
    print(json.dumps({"job": str(job.pk)}))


def resume(seconds):
    from services import deletion_jobs

    print(json.dumps(deletion_jobs.run_once(timezone.now() + timedelta(seconds=seconds))))


def counts():
    def of(flow_name):
        runs = FlowRun.objects.filter(flow__name=flow_name)
        return {"runs": runs.count(), "task_runs": TaskRun.objects.filter(flow_run__in=runs).count(),
                "history": StateChange.objects.filter(flow_run__in=runs).count(),
                "logs": Log.objects.filter(flow_run__in=runs).count(),
                "flow": Flow.all_objects.filter(name=flow_name).count()}

    job = DeletionJob.objects.first()
    print(json.dumps({"doomed": of("doomed"), "kept": of("kept"), "all_runs": FlowRun.objects.count(),
                      "job": job and {"state": job.state, "runs_deleted": job.runs_deleted,
                                      "rows_deleted": job.rows_deleted, "attempts": job.attempts}}))


if __name__ == "__main__":
    step, *args = sys.argv[1:]
    {"seed": lambda: seed(int(args[0])), "request": request, "resume": lambda: resume(int(args[0])),
     "counts": counts}[step]()
