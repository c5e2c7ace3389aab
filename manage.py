#!/usr/bin/env python
"""Django's command-line utility for Orchestrator."""

import os
import sys

# Commands that only read the models and write files in the source tree: a developer's, never a
# server's, so they run with the development defaults (a generated SECRET_KEY) when DEBUG is unset.
DEVELOPMENT_COMMANDS = {"makemigrations", "squashmigrations"}

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    if len(sys.argv) > 1 and sys.argv[1] in DEVELOPMENT_COMMANDS:
        os.environ.setdefault("DEBUG", "true")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
