from django.contrib.auth import views as auth_views
from django.urls import path

from automations import dashboard as automations
from automations import delivery_views

from . import events, flows, login, logs, queues, run_actions, runs_list, schedule_forms, schedules, task_runs, usage, views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("login/", login.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="dashboard:login"), name="logout"),
    path("timeline/", views.timeline, name="timeline"),
    path("runs/", runs_list.run_list, name="runs"),
    path("runs/act/", run_actions.act, name="runs-act"),
    path("runs/<uuid:pk>/", views.run_detail, name="run"),
    path("runs/<uuid:pk>/logs/", logs.run_logs, name="run-logs"),
    path("runs/<uuid:pk>/logs/download", logs.download, name="run-logs-download"),
    path("task-runs/<uuid:pk>/", task_runs.task_run_detail, name="task-run"),
    path("flows/", flows.flow_list, name="flows"),
    path("flows/<int:pk>/", flows.flow_detail, name="flow"),
    path("flows/<int:pk>/compare/", flows.compare, name="flow-compare"),
    path("schedules/", schedules.schedule_list, name="schedules"),
    path("schedules/new/", schedule_forms.schedule_new, name="schedule-new"),
    path("schedules/preview/", schedule_forms.schedule_preview, name="schedule-preview"),
    path("schedules/<int:pk>/edit/", schedule_forms.schedule_edit, name="schedule-edit"),
    path("schedules/<int:pk>/version/", flows.pin, name="schedule-version"),
    path("schedules/<int:pk>/pause/", schedules.pause, name="schedule-pause"),
    path("schedules/<int:pk>/keep/", schedules.cancel_pause, name="schedule-keep"),
    path("schedules/<int:pk>/resume/", schedules.resume, name="schedule-resume"),
    path("schedules/<int:pk>/run/", schedules.run_now, name="schedule-run"),
    path("agents/", views.agents, name="agents"),
    path("agents/<int:pk>/", queues.agent_detail, name="agent"),
    path("queues/<int:pk>/pause/", queues.pause, name="queue-pause"),
    path("queues/<int:pk>/resume/", queues.resume, name="queue-resume"),
    path("queues/<int:pk>/limit/", queues.limit, name="queue-limit"),
    path("recovery/", views.recovery, name="recovery"),
    path("audit/", views.audit_trail, name="audit"),
    path("usage/", usage.usage, name="usage"),
    path("usage/<int:pk>/quota/", usage.change_quota, name="usage-quota"),
    path("automations/", automations.automation_list, name="automations"),
    path("automations/<int:pk>/", automations.automation_detail, name="automation"),
    path("automations/<int:pk>/toggle/", automations.toggle, name="automation-toggle"),
    path("deliveries/", delivery_views.delivery_log, name="deliveries"),
    path("deliveries/<int:pk>/retry/", delivery_views.retry, name="delivery-retry"),
    path("events/", events.feed, name="events"),
    path("events/stream", events.events_stream, name="events-stream"),
]
