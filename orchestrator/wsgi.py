import os

from django.core.wsgi import get_wsgi_application

from orchestrator.heap import freeze_startup_heap

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
django_application = get_wsgi_application()

from runs.api.hot_lane import HotLaneApplication  # noqa: E402 - after the settings are configured

# A flow run's heartbeat that is in order is answered before Django's handler (runs/api/hot_lane.py).
application = HotLaneApplication(django_application)
freeze_startup_heap()
