"""Stand-ins for the processes of a Procfile, for tests/platform/test_supervisor.py.

python procfile_standin.py MODE [NAME|CODE]:
  serve NAME    prints "NAME ready PID" (and a line on stderr), then waits; SIGTERM ends it
  polite NAME   the same, but on SIGTERM prints "NAME got SIGTERM" and exits 0 (SIGINT too, by name)
  exit CODE     prints the time and exits with CODE at once, like a process whose port is taken
  stubborn      ignores SIGTERM and starts a grandchild in its process group that ignores it too
  spawner NAME  starts a "runner" leading its own session, as the agent does for each flow run
  http PORT     after a second, answers 200 to any GET on 127.0.0.1:PORT (a web process with /healthz)
"""

import os
import signal
import subprocess
import sys
import time

SLEEP_FOREVER = [sys.executable, "-c", "import time; time.sleep(600)"]


def ready(name):
    print(f"{name} ready {os.getpid()}", flush=True)
    print(f"{name} says hello on stderr", file=sys.stderr, flush=True)


def main(mode, arg=None):
    if mode == "serve":
        ready(arg)
    elif mode == "polite":
        def leave(signum, _frame):
            print(f"{arg} got {signal.Signals(signum).name}", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, leave)
        signal.signal(signal.SIGINT, leave)
        ready(arg)
    elif mode == "exit":
        # Its own clock (CLOCK_MONOTONIC is system-wide): tests measure the waits between starts.
        print(f"cannot start: address already in use (t={time.monotonic():.4f})", flush=True)
        sys.exit(int(arg))
    elif mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild through exec
        grandchild = subprocess.Popen(SLEEP_FOREVER)
        ready("stubborn")
        print(f"grandchild {grandchild.pid}", flush=True)
    elif mode == "http":
        from http.server import BaseHTTPRequestHandler, HTTPServer

        class Healthy(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                print(f"http got {self.path}", flush=True)

        time.sleep(1)  # the banner must wait for the port, not print at once
        server = HTTPServer(("127.0.0.1", int(arg)), Healthy)
        ready("http")
        server.serve_forever()
    elif mode == "spawner":
        runner = subprocess.Popen(SLEEP_FOREVER, start_new_session=True)
        ready(arg)
        print(f"runner {runner.pid}", flush=True)
    while True:
        time.sleep(600)


if __name__ == "__main__":
    main(*sys.argv[1:])
