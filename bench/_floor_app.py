"""The least a WSGI application can do (read the body, answer `{}` as JSON): what bench/http.py
measures gunicorn's own CPU per request with, beside the API's requests."""


def application(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]
