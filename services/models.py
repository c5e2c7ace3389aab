"""Towel's records: the ledger of every service pass, and the leases that keep passes from overlapping."""

from django.db import models
from django.utils import timezone


class ServicePass(models.Model):
    """One pass of one background service: when, how long, what it touched, how it ended."""

    service = models.CharField(max_length=64)
    started = models.DateTimeField(default=timezone.now)
    duration_ms = models.PositiveIntegerField(default=0)
    items = models.PositiveIntegerField(default=0, help_text="Rows the pass changed, summed over its summary.")
    summary = models.JSONField(default=dict, blank=True, help_text="What run_once returned.")
    ok = models.BooleanField(default=True)
    error = models.TextField(blank=True, help_text="The traceback when the pass failed.")

    class Meta:
        indexes = [models.Index(fields=["service", "ok", "started"], name="servicepass_service_ok_started")]
        ordering = ["-started", "-id"]
        verbose_name_plural = "service passes"

    def __str__(self):
        return f"{self.service} at {self.started:%Y-%m-%d %H:%M:%S} ({'ok' if self.ok else 'failed'})"


class ServiceLease(models.Model):
    """Who runs a service right now, until when. Used where PostgreSQL advisory locks are not available.

    A holder that dies leaves a lease that simply expires, so a crash never blocks a service for good.
    """

    service = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=64, blank=True)
    expires = models.DateTimeField()

    def __str__(self):
        return f"{self.service} held by {self.holder or 'nobody'} until {self.expires:%H:%M:%S}"


class ServiceSchedule(models.Model):
    """Since when beat is expected to run a service: recorded the first time a beat start or a
    `migrate` applied its interval, and never moved, so that Towel counts a service that never
    succeeded as overdue from there (a fresh install is not unhealthy before its first pass, and
    a beat that restarts in a loop cannot keep a service looking new)."""

    service = models.CharField(max_length=64, primary_key=True)
    expected_since = models.DateTimeField()

    def __str__(self):
        return f"{self.service} expected since {self.expected_since:%Y-%m-%d %H:%M:%S}"
