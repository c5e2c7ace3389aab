"""Demo flows that `make run` schedules (see runs/management/commands/seed_demo.py)."""
