"""Realistic PHI for fuzzed datasets, and the scanner that looks for it where it must never be.

Every generated patient gets a distinctive name, ID, birth date, accession number, admission
ID, referring physician and UIDs; each identifying *token* (an alphanumeric run of at least 5
characters that no log line or payload says for another reason, or a UID component of at least
9 random digits) is registered. :class:`PhiScanner` then looks at everything published on
MQTT and everything logged, tokenised into alphanumeric runs after removing escapes (so a
32-hex pseudonym that happens to contain a birth date's digits is not a hit, and ``\x1bDOE``
is), case-insensitively (a leak may be upper-cased); a run that is not a token itself is
searched inside (a value glued to a length byte, say), pseudonyms excepted. Also any UID-shaped string outside
the standard's own 1.2.840.10008 root.
"""

from __future__ import annotations

import random
import re
import threading
from dataclasses import dataclass

SURNAMES = (
    "OKONKWO", "FITZGERALD", "MUELLER", "KOWALCZYK", "HALVORSEN", "BJOERKLUND", "DELACROIX", "VASQUEZ",
    "NAKAMURA", "ABERNATHY", "KARLSSON", "OYELARAN", "PETROVSKA", "MACALLISTER", "WIERZBICKI", "ZIMMERMANN",
    "GALLAGHER", "HOFSTETTER", "LINDQVIST", "MORGENSTERN", "QUIGLEY", "RASMUSSEN", "SCHOENBERG", "TREMBLAY",
    "VANDERMEER", "WOJCIECHOWSKI", "YAMAGUCHI", "ACHTERBERG", "BALASUBRAMANIAN", "CHRISTODOULOU",
    "DRUMMOND", "ESPOSITO", "FARQUHARSON", "GRUENWALD", "HARGREAVES", "IVANOVA", "JANKOWSKI", "KRISTIANSEN",
)
GIVEN = (
    "MARGARETE", "JOHANNES", "CHIAMAKA", "SIOBHAN", "TORBJOERN", "ISABELLA", "KENJIRO", "ALEKSANDRA",
    "FREDERIKE", "BARTHOLOMEW", "GWENDOLYN", "MAXIMILIAN", "ROSALIND", "WILHELMINA", "OSVALDO", "PRIYANKA",
)
STREETS = ("LINDENSTRASSE", "MAGNOLIAWEG", "BIRCHWOOD", "KASTANIENALLEE", "HAWTHORNE", "ROSENGARTEN")
UID_ROOT = "1.2.826.0.1.3680043.9.7433"  # constant components are not planted tokens
TOKEN_MIN = 5
UID_COMPONENT_MIN = 9

_TOKEN = re.compile(r"[A-Za-z0-9]+")
# escapes that glue letters to a token: the log's \x1b / \n, JSON's \u0000 / \"
_ESCAPES = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[nrtbf\"\\/])")
_PSEUDONYM = re.compile(r"[0-9a-f]{32}")  # pseudonyms and message ids: never searched inside
# five or more numeric components; the standard's own (SOP classes, transfer syntaxes) identify nobody
_UID_SHAPED = re.compile(r"(?<![0-9.])[0-9]{1,64}(?:\.[0-9]{1,64}){4,}")


@dataclass
class Identity:
    """One patient's identifying values, as a modality would put them in a dataset."""

    name: str
    patient_id: str
    birth_date: str
    accession: str
    admission: str
    referring: str
    address: str
    study_uid: str
    series_uid: str
    instance_uid: str
    frame_uid: str


class PhiRegistry:
    """Creates identities from a seeded generator and remembers every planted token and UID."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.tokens: set[str] = set()
        self.uids: set[str] = set()
        self._lengths: set[int] = set()

    def lengths(self) -> list[int]:
        """The distinct lengths of the planted tokens."""
        return sorted(self._lengths)

    def _add(self, tokens: list[str]) -> None:
        self.tokens.update(tokens)
        self._lengths.update(len(t) for t in tokens)

    def uid(self) -> str:
        """A UID under the fuzzer's root with two random components of 9-16 digits (planted)."""
        a, b = (str(self.rng.randrange(10 ** 8, 10 ** 16)) for _ in range(2))
        uid = f"{UID_ROOT}.{a}.{b}"
        self.uids.add(uid)
        self._add([c for c in (a, b) if len(c) >= UID_COMPONENT_MIN])
        return uid

    def plant(self, *values: str) -> None:
        for v in values:
            self._add([t.upper() for t in _TOKEN.findall(v) if len(t) >= TOKEN_MIN])

    def identity(self) -> Identity:
        r = self.rng
        name = f"{r.choice(SURNAMES)}^{r.choice(GIVEN)}"
        ident = Identity(
            name=name,
            patient_id=f"{r.choice(('MRN', 'KH', 'PAT'))}{r.randrange(10 ** 6, 10 ** 8)}",
            birth_date=f"{r.randrange(1930, 2012)}{r.randrange(1, 13):02d}{r.randrange(1, 29):02d}",
            accession=f"ACC{r.randrange(10 ** 7, 10 ** 9)}",
            admission=f"ADM{r.randrange(10 ** 6, 10 ** 8)}",
            referring=f"{r.choice(SURNAMES)}^{r.choice(GIVEN)}^^DR",
            address=f"{r.choice(STREETS)} {r.randrange(1, 200)}^^BERGEN",
            study_uid=self.uid(), series_uid=self.uid(), instance_uid=self.uid(), frame_uid=self.uid(),
        )
        self.plant(ident.name, ident.patient_id, ident.birth_date, ident.accession, ident.admission,
                   ident.referring, ident.address)
        return ident


@dataclass
class Hit:
    where: str  # "mqtt <topic>" or "log"
    what: str  # "token" or "uid"
    value: str


class PhiScanner:
    """Scans text for planted tokens and UID-shaped strings; keeps the first hits as evidence."""

    def __init__(self, registry: PhiRegistry, keep: int = 50):
        self.registry, self.keep = registry, keep
        self.hits: list[Hit] = []
        self.count = 0
        self.scanned_bytes = 0
        self._lock = threading.Lock()  # the MQTT thread and the log tail both scan

    def scan(self, where: str, text: str) -> int:
        with self._lock:
            return self._scan(where, text)

    def _scan(self, where: str, text: str) -> int:
        self.scanned_bytes += len(text)
        found = 0
        tokens = self.registry.tokens
        lengths = self.registry.lengths()
        for t in _TOKEN.findall(_ESCAPES.sub(" ", text)):
            if len(t) < TOKEN_MIN:
                continue
            u = t.upper()
            if u in tokens:
                found += self._hit(where, "token", t)
            elif len(t) > TOKEN_MIN and not _PSEUDONYM.fullmatch(t):
                inside = next((u[i:i + n] for n in lengths for i in range(len(u) - n + 1) if u[i:i + n] in tokens), None)
                if inside is not None:
                    found += self._hit(where, "token", f"{inside} in {t[:60]}")
        for m in _UID_SHAPED.finditer(text):
            if not m.group(0).startswith("1.2.840.10008."):
                found += self._hit(where, "uid", m.group(0))
        return found

    def _hit(self, where: str, what: str, value: str) -> int:
        self.count += 1
        if len(self.hits) < self.keep:
            self.hits.append(Hit(where, what, value[:80]))
        return 1
