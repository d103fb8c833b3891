"""Personal data in text: e-mail addresses, phone numbers and IP addresses, found or masked.

One plain core shared by the corpus filter (``filters.pii``) and the instruction curation
selector (``knowlm_ray.curate``). Masking replaces each match by a placeholder that names its
kind (``<EMAIL>``, ``<PHONE>``, ``<IP>``), so a model trained on the text learns the shape of the
sentence without the value.

What counts (regular expressions, chosen to miss rather than to mangle ordinary numbers):

* e-mail: ``local@domain.tld`` (RFC 5322's usual dot-atom subset; the TLD has 2+ letters).
* phone: a mainland-China mobile number (11 digits, ``1[3-9]``, optionally ``+86`` / ``86``), a
  number written with a leading ``+`` and a country code (7-15 digits in groups), or a North
  American number in its written forms (``(555) 123-4567``, ``555-123-4567``, ``555.123.4567``).
  Bare runs of digits (years, prices, ids) are not phone numbers.
* IP: IPv4 dotted quads whose parts are 0-255 (checked with ``ipaddress``; a version string such
  as ``1.2.3`` has three parts and does not match), and IPv6 addresses that ``ipaddress`` parses.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

KINDS = ("email", "phone", "ip")
PLACEHOLDER = {"email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP>"}

_EMAIL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}"
_PHONE = (
    r"(?:\+?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}"  # China mobile: 138 0013 8000
    r"|\+\d{1,3}(?:[- .]?\(?\d{1,4}\)?){2,5}"  # +44 20 7946 0958, +1 (555) 123-4567
    r"|\(\d{3}\)\s?\d{3}[-.]\d{4}"  # (555) 123-4567
    r"|\d{3}[-.]\d{3}[-.]\d{4}"  # 555-123-4567
)
_IPV4 = r"\d{1,3}(?:\.\d{1,3}){3}"
_AN = "A-Za-z0-9_"  # ASCII only: Chinese text puts digits right after characters (电话13800138000)
_IPV6 = r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"
# Alternatives in this order: an e-mail's domain may look like anything else; an IPv4 address is
# tried before a phone number (10.0.0.1234 is neither). Digits / letters must not continue a
# match on either side, so a number inside a longer number is left alone.
_PII = re.compile(
    rf"(?P<email>{_EMAIL})"
    rf"|(?<![{_AN}.])(?P<ip>{_IPV4})(?![{_AN}.]*\d)"
    rf"|(?<![{_AN}:])(?P<ip6>{_IPV6})(?![{_AN}:])"
    rf"|(?<![{_AN}+])(?P<phone>{_PHONE})(?![{_AN}])"
)
_MIN_PHONE_DIGITS = 7


def _kind(m: re.Match) -> str | None:
    """The kind of a match, or None when it only looks like one (an IPv4 part > 255, a ':' run
    that is not an IPv6 address, a '+' number with too few digits)."""
    if m.group("email"):
        return "email"
    if (ip := m.group("ip") or m.group("ip6")) is not None:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return None
        return "ip"
    digits = sum(c.isdigit() for c in m.group("phone"))
    return "phone" if _MIN_PHONE_DIGITS <= digits <= 15 else None


def find_pii(text: str) -> list[tuple[str, int, int]]:
    """``(kind, start, end)`` of every piece of personal data in ``text``, in order."""
    out = []
    for m in _PII.finditer(text):
        kind = _kind(m)
        if kind is not None:
            out.append((kind, m.start(), m.end()))
    return out


def count_pii(text: str) -> Counter:
    return Counter(kind for kind, _, _ in find_pii(text))


def mask_pii(text: str) -> tuple[str, Counter]:
    """``text`` with each match replaced by its placeholder, and the counts per kind."""
    found = find_pii(text)
    if not found:
        return text, Counter()
    parts, pos = [], 0
    for kind, start, end in found:
        parts += [text[pos:start], PLACEHOLDER[kind]]
        pos = end
    parts.append(text[pos:])
    return "".join(parts), Counter(kind for kind, _, _ in found)


def describe(counts: Counter) -> str:
    """``"email 1, phone 2"``: the kinds found, in KINDS order."""
    return ", ".join(f"{k} {counts[k]}" for k in KINDS if counts.get(k))
