"""Turning local wall-clock fire times into UTC instants under a schedule's DST policy."""

from datetime import timedelta, timezone as dt_timezone

from runs.models import AmbiguousTimePolicy, NonexistentTimePolicy

from .bounds import check

UTC = dt_timezone.utc


def _round_trips(naive, zone, fold):
    aware = naive.replace(tzinfo=zone, fold=fold)
    return aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive


def _gap_end(naive, zone):
    """The first valid instant after the spring-forward gap that swallows `naive` (binary search, 1 s)."""
    before = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)  # read with the offset after the change
    after = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)  # read with the offset before the change
    lo, hi = min(before, after), max(before, after)
    lo_offset = lo.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == lo_offset:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


def localize(naive, zone, nonexistent, ambiguous):
    """The UTC instants at which local wall time `naive` happens in `zone`, per the policies.

    A time in a spring-forward gap gives no instant (skip) or the end of the gap (shift); a time
    that happens twice when clocks fall back gives the first instant (once) or both (twice).
    """
    first = naive.replace(tzinfo=zone, fold=0)
    second = naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return [first.astimezone(UTC)]
    if _round_trips(naive, zone, 0) and _round_trips(naive, zone, 1):  # happens twice
        instants = [first.astimezone(UTC), second.astimezone(UTC)]
        instants.sort()
        return instants if ambiguous == AmbiguousTimePolicy.TWICE else instants[:1]
    # Never happens: inside the spring-forward gap.
    if nonexistent == NonexistentTimePolicy.SKIP:
        return []
    return [_gap_end(naive, zone)]


def collect(naive_times, zone, after, count, nonexistent, ambiguous, max_steps=100_000):
    """The first `count` instants strictly after `after` from increasing local wall times.

    Wall times map to instants almost in order; a fall-back overlap can swap neighbours, so a
    few hours' more wall time is read past the count-th instant before sorting, when a change of
    offset lies in those hours. Wall times that datetime cannot hold as an instant (near years 1
    and 9999) end the schedule there. At most `max_steps` wall times are read.
    """
    found = set()
    reached_at = None
    # Without DST (UTC, Etc/*) wall times are instants in order: stop at the count-th.
    margin = timedelta(0) if is_fixed(zone) else timedelta(hours=3)
    naive_times = iter(naive_times)
    for _ in range(max_steps):
        check()  # our own loop's share of the time budget, if one is running
        try:
            naive = next(naive_times)
            if reached_at is not None and naive > reached_at + margin:
                break
            instants = localize(naive, zone, nonexistent, ambiguous)
        except StopIteration:
            break
        except OverflowError:
            break  # past what datetime holds: the schedule has no more times
        found.update(instant for instant in instants if instant > after)
        if reached_at is None and len(found) >= count:
            reached_at = naive
            if margin and _same_offset_for(zone, naive, margin):
                break  # no change of offset ahead: later wall times are later instants
    return sorted(found)[:count]


def _same_offset_for(zone, naive, span):
    """True when `zone` keeps one UTC offset from wall time `naive` through `span` after it."""
    try:
        ends = (naive, naive + span)
        return len({end.replace(tzinfo=zone, fold=fold).utcoffset() for end in ends for fold in (0, 1)}) == 1
    except OverflowError:
        return False


def local_naive(instant, zone):
    """`instant` as a naive wall-clock time in `zone`."""
    return instant.astimezone(zone).replace(tzinfo=None)


def is_fixed(zone):
    """True for zones whose offset never changes (UTC and the Etc/ zones): no gaps, no folds."""
    key = getattr(zone, "key", str(zone))
    return key == "UTC" or key.startswith("Etc/")


def start_of_search(after, zone):
    """Where to start reading wall times so that a fold's second instant is not missed."""
    if is_fixed(zone):
        return local_naive(after, zone)
    return local_naive(after, zone) - timedelta(hours=3)

