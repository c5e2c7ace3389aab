import os

from django.core.asgi import get_asgi_application

from orchestrator.heap import freeze_startup_heap

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
django_application = get_asgi_application()

from orchestrator.bodies import BoundedBodies  # noqa: E402 - after the settings are configured

# Bodies bounded before Django's handler reads them (it reads a whole body before any middleware).
application = BoundedBodies(django_application)
freeze_startup_heap()
