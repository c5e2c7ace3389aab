"""The agent's healthcheck web server: GET /health is 200 while polls succeed, else 503."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def start_health_server(host, port, verdict):
    """Serve `verdict()` -> (healthy, details) on http://host:port/health in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the name http.server expects
            if self.path.rstrip("/") != "/health":
                self.send_error(404)
                return
            healthy, details = verdict()
            body = json.dumps({"healthy": healthy, **details}).encode()
            self.send_response(200 if healthy else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # probes every few seconds would flood the agent's output
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health-server", daemon=True).start()
    return server
