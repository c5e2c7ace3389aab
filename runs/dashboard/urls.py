from django.contrib.auth import views as auth_views
from django.urls import path

from automations import dashboard as automations
from automations import delivery_views

from . import events, login, logs, schedules, views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("login/", login.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="dashboard:login"), name="logout"),
    path("timeline/", views.timeline, name="timeline"),
    path("runs/<uuid:pk>/", views.run_detail, name="run"),
    path("runs/<uuid:pk>/logs/", logs.run_logs, name="run-logs"),
    path("runs/<uuid:pk>/logs/download", logs.download, name="run-logs-download"),
    path("schedules/", schedules.schedule_list, name="schedules"),
    path("schedules/<int:pk>/pause/", schedules.pause, name="schedule-pause"),
    path("schedules/<int:pk>/keep/", schedules.cancel_pause, name="schedule-keep"),
    path("schedules/<int:pk>/resume/", schedules.resume, name="schedule-resume"),
    path("schedules/<int:pk>/run/", schedules.run_now, name="schedule-run"),
    path("agents/", views.agents, name="agents"),
    path("recovery/", views.recovery, name="recovery"),
    path("audit/", views.audit_trail, name="audit"),
    path("automations/", automations.automation_list, name="automations"),
    path("automations/<int:pk>/", automations.automation_detail, name="automation"),
    path("automations/<int:pk>/toggle/", automations.toggle, name="automation-toggle"),
    path("deliveries/", delivery_views.delivery_log, name="deliveries"),
    path("deliveries/<int:pk>/retry/", delivery_views.retry, name="delivery-retry"),
    path("events/", events.feed, name="events"),
    path("events/stream", events.events_stream, name="events-stream"),
]
