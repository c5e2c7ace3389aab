"""`python -m supervise [-f Procfile]`: what `make run` uses instead of `honcho start`.

Like honcho, it starts every line of the Procfile and prefixes each output line with the time and
the process name. Unlike honcho, one process that dies does not stop the others: it is restarted
after a wait that doubles while it keeps dying. Ctrl-C or SIGTERM stops them all (see README).
"""

import argparse
import sys

from honcho.environ import parse_procfile

from .supervisor import Supervisor


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m supervise", description=__doc__.split("\n\n")[0])
    parser.add_argument("-f", "--procfile", default="Procfile", help="the processes to run (default: Procfile)")
    parser.add_argument("--stop-timeout", type=float, default=40.0,
                        help="on Ctrl-C/SIGTERM, seconds before SIGKILL (default 40: the agent's 30 s grace "
                             "for its runs and 5 s to end them)")
    parser.add_argument("--backoff-initial", type=float, default=1.0, help="first wait before a restart (s)")
    parser.add_argument("--backoff-max", type=float, default=30.0, help="longest wait before a restart (s)")
    parser.add_argument("--backoff-reset", type=float, default=60.0,
                        help="a process up this long counts as healthy again: the next wait is the first (s)")
    parser.add_argument("--ready-url", help="once this URL answers 2xx, print the --ready-message lines and the "
                                              "--ready-file's lines (make run: where the dashboard is, the login)")
    parser.add_argument("--ready-message", action="append", default=[], help="a line to print when ready (repeatable)")
    parser.add_argument("--ready-file", help="a file whose lines are printed when ready, if it exists then")
    parser.add_argument("--no-colour", action="store_true", help="never colour the prefixes (default: on a TTY)")
    return parser


def file_lines(path):
    """A callable giving the file's text when called (None when there is no file, or no path)."""
    def read():
        if not path:
            return None
        try:
            with open(path) as text:
                return text.read().strip() or None
        except OSError:
            return None
    return read


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        with open(args.procfile) as procfile:
            commands = parse_procfile(procfile.read()).processes
    except (OSError, AssertionError) as exc:  # honcho asserts that names are unique
        print(f"supervise: cannot read {args.procfile}: {exc}", file=sys.stderr)
        return 2
    if not commands:
        print(f"supervise: {args.procfile} has no process lines (`name: command`)", file=sys.stderr)
        return 2
    supervisor = Supervisor(commands, colour=not args.no_colour, stop_timeout=args.stop_timeout,
                            backoff_initial=args.backoff_initial, backoff_max=args.backoff_max,
                            backoff_reset=args.backoff_reset, ready_url=args.ready_url,
                            ready_lines=[*args.ready_message, file_lines(args.ready_file)])
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
