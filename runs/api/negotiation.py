"""DRF's content negotiation, reading the request's Accept header without building `request.headers`.

DRF reads `request.headers.get("accept")`; Django builds that mapping from every header of the request
the first time it is asked for, ~10 µs on an API request where nothing else asks for it (issue 16:
the ping, a state change, an agent's poll). The negotiation itself stays DRF's.
"""

from rest_framework.negotiation import DefaultContentNegotiation


class _AcceptOnly:
    """What DRF's get_accept_list reads of a request: its headers, of which only Accept."""

    __slots__ = ("headers",)

    def __init__(self, meta):
        self.headers = {"accept": meta["HTTP_ACCEPT"]} if "HTTP_ACCEPT" in meta else {}


class ContentNegotiation(DefaultContentNegotiation):
    def get_accept_list(self, request):
        return super().get_accept_list(_AcceptOnly(request.META))
