"""Django's message middleware, with the storage made when a request first uses it.

Django's MessageMiddleware builds the messages' storage (a cookie and a session store behind a
fallback) for every request, ~8 µs. Only the dashboard and the admin add or show messages; the
API, the agents' reports and the health checks never do, and they are nearly every request
(issue 16). Here the storage is a lazy object: built by the first `messages.add_message`,
`get_messages` or template that shows them, and a request that never touched it stores nothing,
as Django's would not (an unused, unchanged storage writes no cookie and no session key).
"""

from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.messages.storage import default_storage
from django.utils.functional import SimpleLazyObject, empty


class LazyMessageMiddleware(MessageMiddleware):
    def process_request(self, request):
        request._messages = SimpleLazyObject(lambda: default_storage(request))

    def process_response(self, request, response):
        messages = getattr(request, "_messages", None)
        if isinstance(messages, SimpleLazyObject) and messages._wrapped is empty:
            return response  # never used
        return super().process_response(request, response)
