"""The embedded broker (orchestrator/broker.py): a reader never gets a half-written message.

kombu's filesystem transport creates the message file, then writes it; its reader takes no lock, so
one that lists the folder in between reads an empty file and the worker stops on the JSONDecodeError
(kombu issue 1551). Seen under `make run` once beat ran as a thread of the worker. (A test that showed
kombu's own transport losing the race was dropped: a race it loses only sometimes is no test.)
"""

import os
import threading
from queue import Empty

from kombu import Connection

from orchestrator import broker


def channel(transport, folder):
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    connection = Connection("filesystem://", transport=transport, transport_options=options)
    return connection, connection.default_channel


def hammer(transport, folder, messages=3000):
    """A writer thread puts `messages` messages while this thread takes them: what the reader got,
    and the first error it met."""
    connection, writer = channel(transport, folder)
    _, reader = channel(transport, folder)
    done = threading.Event()

    def write():
        try:
            for n in range(messages):
                writer._put("q", {"n": n, "body": "x" * 2000})
        finally:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    got, error = [], None
    try:
        while not (done.is_set() and len(got) == messages):
            try:
                got.append(reader._get("q")["n"])
            except Empty:
                continue
            except Exception as exc:  # what the worker would die of
                error = exc
                break
    finally:
        thread.join()
        connection.release()
    return got, error


def test_a_reader_racing_the_writer_gets_every_message_whole(tmp_path):
    got, error = hammer(broker.Transport, tmp_path)
    assert error is None
    assert sorted(got) == list(range(3000))
    assert os.listdir(tmp_path) == []  # no partial file left behind


def test_the_embedded_settings_use_it():
    from django.conf import settings

    from orchestrator.celery import app

    with app.connection_for_write() as connection:
        if settings.REDIS_URL:  # Redis is the broker: ours is not in the way
            assert getattr(settings, "CELERY_BROKER_TRANSPORT", None) is None
            assert connection.transport.driver_type == "redis"
        else:
            assert isinstance(connection.transport, broker.Transport)
