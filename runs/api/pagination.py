from rest_framework.pagination import CursorPagination, PageNumberPagination


class PagePagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


class RunCursorPagination(CursorPagination):
    """Stable under inserts: a new run never shifts the pages a client is reading."""

    ordering = ("-created", "-id")
    page_size_query_param = "page_size"
    max_page_size = 500
