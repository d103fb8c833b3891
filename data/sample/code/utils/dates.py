"""Small date helpers that the standard library leaves to you.

Everything here works on :class:`datetime.date`; no time zones are involved.
"""

from __future__ import annotations

import calendar
from datetime import date, timedelta
from typing import Iterable, Iterator, Optional, Set

WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def is_leap_year(year: int) -> bool:
    """Gregorian rule: every 4th year, except centuries not divisible by 400.

    >>> [is_leap_year(y) for y in (1900, 2000, 2023, 2024)]
    [False, True, False, True]
    """
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def add_months(d: date, months: int) -> date:
    """Add calendar months, clamping the day to the end of the target month.

    >>> add_months(date(2024, 1, 31), 1)
    datetime.date(2024, 2, 29)
    >>> add_months(date(2023, 3, 15), -14)
    datetime.date(2022, 1, 15)
    """
    index = d.year * 12 + (d.month - 1) + months
    year, month0 = divmod(index, 12)
    month = month0 + 1
    return date(year, month, min(d.day, days_in_month(year, month)))


def age_on(birthday: date, on: date) -> int:
    """Whole years between ``birthday`` and ``on``.

    People born on 29 February have their birthday on 1 March in common
    years, which is what most legal systems assume.
    """
    years = on.year - birthday.year
    try:
        this_year = birthday.replace(year=on.year)
    except ValueError:  # 29 Feb in a common year
        this_year = date(on.year, 3, 1)
    if on < this_year:
        years -= 1
    return years


def iso_week_label(d: date) -> str:
    """'2024-W01' style label; note the ISO year can differ from d.year.

    >>> iso_week_label(date(2024, 12, 30))
    '2025-W01'
    """
    year, week, _ = d.isocalendar()
    return f"{year}-W{week:02d}"


def daterange(start: date, end: date, step: int = 1) -> Iterator[date]:
    """Dates from ``start`` up to but not including ``end``."""
    if step == 0:
        raise ValueError("step must not be zero")
    current = start
    delta = timedelta(days=step)
    while (current < end) if step > 0 else (current > end):
        yield current
        current += delta


def business_days_between(start: date, end: date, holidays: Iterable[date] = ()) -> int:
    """Count Monday-Friday days in [start, end) that are not holidays.

    Uses whole weeks arithmetic first, so long ranges are cheap.
    """
    if end <= start:
        return 0
    hol: Set[date] = {h for h in holidays if start <= h < end and h.weekday() < 5}
    total_days = (end - start).days
    full_weeks, remainder = divmod(total_days, 7)
    count = full_weeks * 5
    for offset in range(remainder):
        if (start + timedelta(days=full_weeks * 7 + offset)).weekday() < 5:
            count += 1
    return count - len(hol)


def next_weekday(d: date, weekday: int, include_today: bool = False) -> date:
    """Next date falling on ``weekday`` (0=Monday ... 6=Sunday)."""
    ahead = (weekday - d.weekday()) % 7
    if ahead == 0 and not include_today:
        ahead = 7
    return d + timedelta(days=ahead)


def nth_weekday_of_month(year: int, month: int, weekday: int, n: int) -> Optional[date]:
    """E.g. the 4th Thursday of November; n=-1 means the last one.

    >>> nth_weekday_of_month(2023, 11, 3, 4)
    datetime.date(2023, 11, 23)
    """
    if n > 0:
        first = next_weekday(date(year, month, 1), weekday, include_today=True)
        result = first + timedelta(weeks=n - 1)
        return result if result.month == month else None
    last = date(year, month, days_in_month(year, month))
    back = (last.weekday() - weekday) % 7
    return last - timedelta(days=back) - timedelta(weeks=-n - 1)


def easter(year: int) -> date:
    """Western (Gregorian) Easter Sunday, by the anonymous Gregorian algorithm.

    >>> easter(2024)
    datetime.date(2024, 3, 31)
    """
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    l = (32 + 2 * e + 2 * i - h - k) % 7  # noqa: E741 (name from the original)
    m = (a + 11 * h + 22 * l) // 451
    month, day = divmod(h + l - 7 * m + 114, 31)
    return date(year, month, day + 1)


def humanize_delta(days: int) -> str:
    """'today', 'yesterday', 'in 3 days', '2 weeks ago' ..."""
    if days == 0:
        return "today"
    if days == 1:
        return "tomorrow"
    if days == -1:
        return "yesterday"
    n = abs(days)
    if n < 14:
        unit, amount = "day", n
    elif n < 60:
        unit, amount = "week", n // 7
    elif n < 730:
        unit, amount = "month", n // 30
    else:
        unit, amount = "year", n // 365
    label = f"{amount} {unit}{'s' if amount != 1 else ''}"
    return f"in {label}" if days > 0 else f"{label} ago"


if __name__ == "__main__":
    import doctest

    failures, tests = doctest.testmod()
    print(f"{tests} doctests, {failures} failures")
    today = date(2024, 5, 17)
    print(WEEKDAY_NAMES[today.weekday()], iso_week_label(today))
    print("business days in May 2024:",
          business_days_between(date(2024, 5, 1), date(2024, 6, 1), [date(2024, 5, 27)]))
