"""The embedded broker (REDIS_URL unset): kombu's filesystem transport, with messages that appear whole.

kombu writes a message file in place (create, lock, write) while its reader takes no lock: it lists
the folder, moves the file away and reads it. A reader that comes between the create and the write
reads an empty file, and the worker stops on the JSONDecodeError ("Unrecoverable error"). Seen under
`make run` with beat as a thread of the worker (--beat-thread), where the writer and the reader
share one process; separate processes have the same window. Here a message is written under a name
no queue matches and renamed into place: a rename within one folder is atomic, so a reader sees the
whole file or none.
"""

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        # kombu's name (its time prefix orders the queue), written first as ".<uuid>.partial".
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{uuid.uuid4()}.partial")
        try:
            with open(partial, "wb", buffering=0) as file:
                file.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
