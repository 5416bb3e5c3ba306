"""``edged export-results`` and ``edged pseudonym``: the two halves of a validation study.

A double-blind validation compares edged's scores with radiologists' reads of the same studies.
The site exports the archive (pseudonyms and scores, :mod:`edged.outbox.archive`); whoever
holds the PACS computes, on the device, the pseudonym of each Study Instance UID in the
validation set (``edged pseudonym --study UID`` or ``--from FILE``) and joins the two on it.
The pseudonym is the daemon's own keyed HMAC of the UID under the site key, so only the
device (or someone with its key) can make the join; no UID ever leaves it with a result.
``pseudonym`` only reads the site key: it never creates one (a new key would make pseudonyms
that match nothing).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from edged.config.hints import did_you_mean
from edged.config.loader import ConfigError, load_config
from edged.outbox.archive import ArchiveMissing, archived_models, read_results, write_csv, write_jsonl


def moment(text: str) -> datetime:
    """``2025-01-31``, ``2025-01-31T14:00``, ``…Z`` or ``…+01:00``; without an offset: UTC."""
    raw = text.strip()
    try:
        value = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a date or date-time like 2025-01-31 or "
                                         "2025-01-31T14:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def add_parsers(sub: argparse._SubParsersAction, config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("export-results", help="export the on-device results archive (pseudonymized)",
                       description="Export archived results (pseudonyms, scores, model, backend, precision, "
                                   "timings) for a validation study. Times are UTC unless an offset is given.")
    config_args(p)
    p.add_argument("--model", help="only this model")
    p.add_argument("--since", type=moment, metavar="WHEN", help="results at or after this date/time")
    p.add_argument("--until", type=moment, metavar="WHEN", help="results before this date/time")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    p.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("pseudonym", help="the pseudonym of a Study/SOP Instance UID on this device (site key)",
                       description="Print the pseudonym edged publishes for a UID, computed with this device's "
                                   "site key: the way to join exported results back to PACS for validation. "
                                   "Needs read access to state_dir/site.key (sudo -u edged).")
    config_args(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--study", metavar="UID", help="a Study Instance UID")
    what.add_argument("--instance", metavar="UID", help="a SOP Instance UID")
    what.add_argument("--from", dest="from_file", type=Path, metavar="FILE",
                      help="Study Instance UIDs, one per line ('-': stdin); prints UID<TAB>pseudonym per line")
    p.set_defaults(func=cmd_pseudonym)


def cmd_export(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.sets)
    try:
        records = read_results(cfg.db_path, args.model, args.since, args.until)
        known = archived_models(cfg.db_path) if args.model else []
    except ArchiveMissing as exc:
        raise ConfigError([str(exc)]) from None
    if args.model and args.model not in known:
        print(f"warning: no results of model {args.model} in the archive{did_you_mean(args.model, known)}; "
              f"it has: {', '.join(known) or 'no results'}", file=sys.stderr)
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        (write_jsonl if args.format == "jsonl" else write_csv)(records, out)
    finally:
        if args.output:
            out.close()
    print(f"exported {len(records)} result(s)", file=sys.stderr)
    return 0


def cmd_pseudonym(args: argparse.Namespace) -> int:
    from edged.privacy import Pseudonymizer, read_site_key

    cfg = load_config(args.config, args.sets)
    try:
        pseudo = Pseudonymizer(read_site_key(cfg.site_key_path))
    except FileNotFoundError:
        raise ConfigError([f"{cfg.site_key_path}: no site key: the daemon creates it at its first start "
                           "(-c names the daemon's config file; its state_dir holds the key)"]) from None
    except PermissionError:
        raise ConfigError([f"{cfg.site_key_path}: not readable by this user: run as the daemon's user "
                           f"(sudo -u edged edged pseudonym …)"]) from None
    if args.study or args.instance:
        # exactly as the daemon derives them (sources/dicom: study UIDs are read up to 64 characters)
        print(pseudo.pseudonym("study", args.study[:64]) if args.study else pseudo.pseudonym("instance", args.instance))
        return 0
    lines = sys.stdin if str(args.from_file) == "-" else open(args.from_file, encoding="utf-8")
    try:
        for line in lines:
            uid = line.strip()
            if uid:
                print(f"{uid}\t{pseudo.pseudonym('study', uid[:64])}")
    finally:
        if lines is not sys.stdin:
            lines.close()
    return 0
