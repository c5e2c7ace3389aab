"""A Lua script for Redis, kept by the process and bound to no client: each call names its client.

redis-py's Script, made on first use (redis-py is imported only where Redis is used). Its digest is
sent (EVALSHA), its text only when the server does not have it yet (after a restart).
"""


class RedisScript:
    def __init__(self, text):
        self.text, self._script = text, None

    def __call__(self, *, keys, args, client):
        if self._script is None:
            from redis.commands.core import Script

            self._script = Script(None, self.text.encode())  # bytes: no client needed for its digest
        return self._script(keys=keys, args=args, client=client)
