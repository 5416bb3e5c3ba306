"""PHI redaction of log text, as defence in depth, in time linear in a bounded input.

The rule is that code never logs PHI (log pseudonyms and counts, not names); this catches slips
such as a DICOM person name (``DOE^JOHN``), ``PatientID=...``, a pydicom dump of group 0010 or
a study UID that a library puts in an exception message.

Cost is part of the contract: log lines are written while peers wait, so a hostile peer must
not be able to buy seconds of CPU with one long value (a 64 KB BodyPartExamined, a 60 KB
abstract syntax). So:

* input is cut to :data:`MAX_CHARS` before anything else (the cut is marked);
* every pattern has bounded repetition and starts only at token boundaries, so each position is
  tried a bounded number of times; quoted strings are paired by one left-to-right scan;
* :class:`RedactingFilter` does it in a handler *filter*, which runs before the handler takes its
  lock: one thread's long line never holds up another thread's logging.

Libraries quote peer bytes in their messages (pydicom: ``Unknown encoding '…'``): in
pydicom's character-set warnings only the standard's defined terms survive, and control
characters are escaped everywhere (``\\n``, ``\\x1b``…): a newline in a peer's value cannot
forge a log line and an escape sequence cannot act on the terminal that reads the log. A traceback keeps its
line breaks; everything else in it is escaped too.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

MAX_CHARS = 8192  # per message; a traceback gets 4x
_DELIMS = r"\s'\"=:,;()\[\]{}<>"

# DICOM UIDs: five or more numeric components, at the start of a digit run (so a UID glued to
# other text, e.g. after an escaped NUL "\X00", is still found). The standard's own UIDs
# (1.2.840.10008.*: SOP classes, transfer syntaxes) identify nobody and stay readable.
_UID = re.compile(r"(?<![0-9.])(?:[0-9]{1,64}\.){4,64}[0-9]{1,64}(?![0-9])|(?<![0-9.])2\.25\.[0-9]{6,64}")
# A person name: a token with a caret (FAMILY^GIVEN...). "~" stays out so Python 3.11+ traceback
# markers (~~~~^^^^) stay readable.
_PN = re.compile(rf"(?<![^{_DELIMS}^~])[^{_DELIMS}^~]{{1,64}}(?:\^[^{_DELIMS}^~]{{0,64}}){{1,8}}")
# pydicom element reprs in group 0010 (patient module): the rest of the line goes.
_GROUP_0010 = re.compile(r"\(0010,\s{0,3}[0-9A-Fa-f]{4}\)[^\n]{0,4096}")
# keyword=value / keyword: value for identifying attributes (quoted or bare value).
_KEYWORD = re.compile(
    r"\b(Patient(?:Name|ID|BirthDate|BirthTime|Address|TelephoneNumbers|MotherBirthName)"
    r"|OtherPatient(?:IDs|Names)|AccessionNumber|ReferringPhysicianName"
    r"|PerformingPhysicianName|InstitutionName|InstitutionAddress)"
    r"(\s{0,3}[=:]\s{0,3})(?:'[^'\n]{0,256}'|\"[^\"\n]{0,256}\"|[^\s,;)]{1,256})")
_QUOTE_OR_NL = re.compile(r"['\"\n]")
# Credentials inside a URL (rtsp://user:password@host): the config refuses them, but a camera or a
# library may still echo such a URL in an error message.
_URL_CREDENTIALS = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]{0,15}://)[^\s/@:]{0,128}:[^\s/@]{0,128}@")


# pydicom's character-set warnings quote a dataset's Specific Character Set values ("Unknown
# encoding 'X'", "Incorrect value for Specific Character Set 'X' - assuming 'Y'", "Value 'X'
# cannot be used as code extension", "..., ignoring: X, Y"). A garbled or hostile value can be
# anything, an accession number included (make fuzz, seed 19): in such a message a quoted or
# listed value stays only if it is a defined term of the standard or the Python codec pydicom
# maps one to.
_CHARSET_WARNING = re.compile(r"Unknown encoding|Specific Character Set|code extension|with encodings?[: ]")
_QUOTED_VALUE = re.compile(r"'([^'\n]{0,256})'")
_LISTED_VALUES = re.compile(r"((?:encodings|ignoring): )([^\n]{0,1024}?)(?= - |\n|$)")


@lru_cache(maxsize=1)
def _charset_terms() -> frozenset[str]:
    try:
        from pydicom.charset import python_encoding
    except Exception:  # no pydicom: nothing is known, every value goes
        return frozenset()
    return frozenset(python_encoding) | frozenset(python_encoding.values())


def _charset_values(text: str) -> str:
    if not _CHARSET_WARNING.search(text):
        return text
    known = _charset_terms()
    text = _QUOTED_VALUE.sub(lambda m: m.group(0) if m.group(1) in known else "'[redacted]'", text)
    return _LISTED_VALUES.sub(
        lambda m: m.group(1) + ", ".join(v if v in known else "[redacted]" for v in m.group(2).split(", ")), text)


# C0 controls and DEL as visible escapes; "keep" is what a traceback may contain as is
_ESCAPE = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
_ESCAPE.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})
_ESCAPE_KEEP_LINES = {c: e for c, e in _ESCAPE.items() if c not in (0x0A, 0x09)}


def escape_controls(text: str, keep_lines: bool = False) -> str:
    """Control characters as visible escapes (newlines and tabs kept when ``keep_lines``)."""
    return text.translate(_ESCAPE_KEEP_LINES if keep_lines else _ESCAPE)


def _uid(match: re.Match[str]) -> str:
    return match.group(0) if match.group(0).startswith("1.2.840.10008.") else "[redacted-UID]"


def _quoted_names(text: str) -> str:
    """Replace whole quoted strings that contain a caret ('VAN DER BERG^ANNA'), one scan."""
    if "^" not in text:
        return text
    out, last, open_at, quote = [], 0, -1, ""
    for m in _QUOTE_OR_NL.finditer(text):
        ch, at = m.group(0), m.start()
        if ch == "\n":
            open_at = -1
        elif open_at < 0:
            open_at, quote = at, ch
        elif ch == quote:
            if "^" in text[open_at:at]:
                out.append(text[last:open_at])
                out.append("'[redacted-PN]'")
                last = at + 1
            open_at = -1
    out.append(text[last:])
    return "".join(out)


def redact_phi(text: str, limit: int = MAX_CHARS) -> str:
    """Bounded, linear-time replacement of obvious PHI shapes; a safety net, not a de-identification."""
    if len(text) > limit:
        text = f"{text[:limit]} …[{len(text) - limit} more characters cut]"
    text = _URL_CREDENTIALS.sub(r"\1[redacted]@", text)
    text = _UID.sub(_uid, text)
    text = _GROUP_0010.sub("(0010,xxxx) [redacted]", text)
    text = _KEYWORD.sub(r"\1\2[redacted]", text)
    text = _charset_values(text)
    text = _quoted_names(text)
    return _PN.sub("[redacted-PN]", text)


class RedactingFilter(logging.Filter):
    """Format, cut and redact a record's message and traceback before any handler lock is taken;
    formatters then only add a prefix."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_edged_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = f"{record.msg!r} (unformattable arguments)"
        record.msg, record.args = escape_controls(redact_phi(message)), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = escape_controls(redact_phi(record.exc_text, 4 * MAX_CHARS), keep_lines=True)
        if record.stack_info:
            record.stack_info = escape_controls(redact_phi(record.stack_info, 4 * MAX_CHARS), keep_lines=True)
        record._edged_redacted = True  # type: ignore[attr-defined]
        return True
