"""Keep the garbage collector's full passes off the startup heap of a server process.

After startup a web process holds ~120,000 long-lived objects (Django, DRF, the models, the
views). CPython's full collection walks all of them every few hundred requests: 70-80 ms here,
which was the whole p99 of the run list (bench/api.py). Freezing them after startup (CPython's
gc.freeze, meant for exactly this) leaves the collector only what requests create.
"""

import gc


def freeze_startup_heap():
    """Import what a request needs, collect the startup garbage, and freeze what is left."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # imports the URL conf and with it every view module
    gc.collect()
    gc.freeze()
