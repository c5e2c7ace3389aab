"""`python -m bench [name ...]`: run the benchmarks and print one table.

Runs against the configured database (DATABASE_URL, else SQLite) in a throw-away test database
created and destroyed by Django's test machinery, so real data is never touched.
"""

import argparse
import importlib
import os
import pkgutil
import sys
import time
from datetime import date

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def available_benchmarks():
    """The benchmark modules: every module of the package but the table and this entry point."""
    import bench

    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name != "table" and not m.name.startswith("_"))


def main():
    import django

    django.setup()
    from django.test.utils import get_runner, setup_test_environment, teardown_test_environment
    from django.conf import settings

    from bench.table import Table

    available = available_benchmarks()
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help=f"which benchmarks (default all): {', '.join(available)}")
    args = parser.parse_args()
    chosen = args.names or available
    unknown = set(chosen) - set(available)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(available)}")

    setup_test_environment()
    runner = get_runner(settings)(verbosity=0, interactive=False)
    old_config = runner.setup_databases()
    from orchestrator.heap import freeze_startup_heap

    freeze_startup_heap()  # as the web processes do (orchestrator/wsgi.py, asgi.py)
    table = Table()
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    try:
        for name in chosen:
            print(f"bench {name} …", flush=True)
            started = time.perf_counter()
            importlib.import_module(f"bench.{name}").run(table)
            print(f"bench {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        runner.teardown_databases(old_config)
        teardown_test_environment()
    print(f"\nOrchestrator benchmarks, {date.today().isoformat()}, database {engine}, {os.cpu_count()} cores\n")
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
