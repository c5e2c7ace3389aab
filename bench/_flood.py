"""The log bench's other processes (bench/logs.py starts them; not a benchmark of its own).

`python -m bench._flood writers URL RATE BATCH TOKEN...`: one thread per report token, posting
BATCH-line log batches to URL (an agent's `/agent/logs`) paced to RATE lines/s in all, until its
standard input closes. As agents are, it is a process apart from whatever measures the server.
Each accepted batch is printed as `accepted <CLOCK_MONOTONIC> <lines>`, a refused one as
`failed <status> <text>`.

`python -m bench._flood persister`: the log persister's passes, once a second, as the Celery worker
runs them (services/log_persister.py), on the database and stream the environment names, until its
standard input closes; each pass printed as `stored <CLOCK_MONOTONIC> <lines> <CPU seconds>`.
"""

import sys
import threading
import time


def writers(url, rate, batch, tokens):
    import requests

    stop, lock = threading.Event(), threading.Lock()
    every = batch * len(tokens) / rate  # seconds between one writer's batches

    def say(text):
        with lock:
            print(text, flush=True)

    def writer(n, token):
        session = requests.Session()
        headers = {"Authorization": f"Bearer {token}"}
        run_id = token_runs[n]
        next_at = time.monotonic() + n * every / len(tokens)
        i = 0
        while not stop.is_set():
            pause = next_at - time.monotonic()
            if pause > 0 and stop.wait(pause):
                break
            next_at += every
            lines = [{"flow_run_id": run_id, "level": 20,
                      "message": f"writer {n} batch {i} line {j}: processed 1,000 rows of partition {j % 64}"}
                     for j in range(batch)]
            answer = session.post(url, json={"logs": lines}, headers=headers)
            if answer.status_code == 201:
                say(f"accepted {time.monotonic():.6f} {batch}")
            else:
                say(f"failed {answer.status_code} {answer.text[:200]!r}")
            i += 1

    token_runs = [pair.split("=", 1)[0] for pair in tokens]
    threads = [threading.Thread(target=writer, args=(n, pair.split("=", 1)[1])) for n, pair in enumerate(tokens)]
    for thread in threads:
        thread.start()
    sys.stdin.read()  # until the bench closes our standard input
    stop.set()
    for thread in threads:
        thread.join()


def persister():
    import django

    django.setup()
    from django.db import connections

    from services import log_persister

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while True:
        began, cpu = time.monotonic(), time.process_time()
        stored = log_persister.run_once()["stored"]
        print(f"stored {time.monotonic():.6f} {stored} {time.process_time() - cpu:.6f}", flush=True)
        if stop.is_set():
            if stored == 0:
                break
            continue  # drain what is left before going
        stop.wait(max(0.0, 1.0 - (time.monotonic() - began)))
    connections.close_all()


if __name__ == "__main__":
    if sys.argv[1] == "writers":
        writers(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])
    else:
        persister()
