"""Date formats for English pages (the admin's lists and detail pages): times to the second, in
the one unambiguous order. Django's own English formats show "Dec. 7, 2026, 1:05 a.m.", which
hides the seconds an operator compares with a log line."""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
