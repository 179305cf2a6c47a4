"""PII redaction in the BigCode style: emails, public IP addresses and secrets are replaced by
placeholders (`<EMAIL>`, `<IP_ADDRESS>`, `<KEY>`, `<PASSWORD>`), and every replacement is counted.

Private, loopback, link-local and documentation addresses are left alone (they identify no one
and are common in code), and so are strings that only look like addresses (version numbers with
more than four parts, C++ scopes like `a::b`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Annotated

from dscoder.config import NON_NEGATIVE


@dataclass(frozen=True)
class PIIConfig:
    """PII redaction settings."""

    enabled: bool = True
    """Redact emails, public IP addresses and secrets."""
    min_secret_entropy: Annotated[float, NON_NEGATIVE] = 3.0
    """Least Shannon entropy (bits per character) for a quoted value assigned to a
    key/secret/token/password name to count as a secret (it must also mix letters and digits
    and be 16+ characters, 8+ for passwords)."""


EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:.])")
# Well-known credential formats, each with a literal every match contains (a cheap pre-check).
KEY_PATTERNS = [
    (
        "PRIVATE KEY-----",
        re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----.*?-----END (?:[A-Z]+ )?PRIVATE KEY-----", re.S),
    ),
    ("AKIA", re.compile(r"\bAKIA[0-9A-Z]{16}\b")),  # AWS access key id
    ("ASIA", re.compile(r"\bASIA[0-9A-Z]{16}\b")),
    ("gh", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),  # GitHub token
    ("github_pat_", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{40,}\b")),
    ("xox", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b")),  # Slack
    ("AIza", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),  # Google API key
    ("k_live_", re.compile(r"\b[sr]k_live_[0-9A-Za-z]{20,}\b")),  # Stripe
    ("sk-", re.compile(r"\bsk-[A-Za-z0-9_-]{32,}\b")),  # OpenAI-style
]
# Names that say a value is a secret (searched in lower case); the assignment after the name is
# checked separately.
SECRET_NAME = re.compile(r"api[_-]?key|secret|token|passw(?:or)?d|pwd|access[_-]?key")
# Cheap scans that tell whether the slower exact patterns can match at all. Each starts with a
# literal character, so the regex engine jumps from one occurrence of it to the next.
KEY_HINT = re.compile(r"-----BEGIN|AKIA|ASIA|gh[pousr]_|github_pat_|xox[abprs]-|AIza|k_live_|sk-")
EMAIL_HINT = re.compile(r"@[A-Za-z0-9-]+\.")  # after a letter or digit
IPV4_HINT = re.compile(r"\.\d{1,3}\.\d{1,3}\.\d")
IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:")
SECRET_HINTS = ("key", "secret", "token", "passw", "pwd")  # one of them is in every SECRET_NAME
_ALPHANUMERIC = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_LOCAL_PART = _ALPHANUMERIC | frozenset("._%+-")  # what EMAIL allows before the "@"
_DOMAIN = re.compile(r"[A-Za-z0-9.-]*")  # and after it
ASSIGNMENT = re.compile(r"""["']?\s*[:=]{1,2}\s*(["'])([^"'\s]{8,})\1""")
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]*")


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


def _public_ip(candidate: str) -> bool:
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    if address.version == 6 and sum(1 for part in candidate.split(":") if part) < 3:
        return False  # "a::b", "std::" and other scope-like strings
    return address.is_global


def redact(text: str, cfg: PIIConfig, counts: Counter) -> str:
    """`text` with PII replaced by placeholders; `counts[kind]` grows by each replacement."""
    if not cfg.enabled:
        return text

    def replace_key(match: re.Match) -> str:
        counts["key"] += 1
        return "<KEY>"

    if KEY_HINT.search(text):
        for literal, pattern in KEY_PATTERNS:
            if literal in text:
                text = pattern.sub(replace_key, text)
    text = _redact_assigned(text, cfg, counts)

    if "@" in text and any(m.start() and text[m.start() - 1] in _ALPHANUMERIC for m in EMAIL_HINT.finditer(text)):
        text = _redact_emails(text, counts)

    def replace_ip(match: re.Match) -> str:
        before = match.string[max(0, match.start() - 20) : match.start()].lower()
        if not _public_ip(match.group(0)) or "version" in before or before.endswith("v"):
            return match.group(0)
        counts["ip_address"] += 1
        return "<IP_ADDRESS>"

    if IPV4_HINT.search(text):
        text = IPV4.sub(replace_ip, text)
    if IPV6_HINT.search(text):
        text = IPV6.sub(replace_ip, text)
    return text


def _redact_emails(text: str, counts: Counter) -> str:
    """`EMAIL.sub` with the placeholder, looking only around each "@": a match holds one "@",
    preceded by local-part characters and followed by domain characters, so the pattern is tried
    on those runs instead of at every position of the text."""
    pieces, last, at = [], 0, text.find("@")
    while at >= 0:
        start = at
        while start > last and text[start - 1] in _LOCAL_PART:
            start -= 1
        end = _DOMAIN.match(text, at + 1).end()
        match = EMAIL.search(text, start, end + 1)  # + 1: the character after the domain is looked at
        if match:
            counts["email"] += 1
            pieces += [text[last : match.start()], "<EMAIL>"]
            last = match.end()
        at = text.find("@", max(at + 1, last))
    return "".join(pieces) + text[last:] if pieces else text


def _redact_assigned(text: str, cfg: PIIConfig, counts: Counter) -> str:
    """Replace the quoted value assigned to a secret-sounding name (`api_key = "..."`)."""
    lower = text.lower()
    if len(lower) != len(text):  # a few non-ASCII letters change length when lowered
        lower = "".join(c.lower() if c.isascii() else c for c in text)
    if not any(hint in lower for hint in SECRET_HINTS):
        return text
    pieces, last, pos = [], 0, 0
    for hit in SECRET_NAME.finditer(lower):
        if hit.start() < pos:
            continue
        name_end = _IDENTIFIER.match(text, hit.end()).end()
        assigned = ASSIGNMENT.match(text, name_end)
        pos = name_end
        if assigned is None:
            continue
        value = assigned.group(2)
        kind = "password" if re.search(r"passw|pwd", hit.group(0), re.I) else "key"
        looks_secret = (
            len(value) >= (8 if kind == "password" else 16)
            and re.search(r"\d", value)
            and re.search(r"[A-Za-z]", value)
            and entropy(value) >= cfg.min_secret_entropy
        )
        if not looks_secret or value.startswith("<"):
            continue
        counts[kind] += 1
        pieces += [text[last : assigned.start(2)], "<PASSWORD>" if kind == "password" else "<KEY>"]
        last = pos = assigned.end(2)
    return "".join(pieces) + text[last:] if pieces else text
