"""``python -m tools.fuzz`` (``make fuzz``): ≥ 10,000 seeded cases against the daemon; a summary
table printed and written as JSON and Markdown; exit 1 when a check fails."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import checks
from .suite import Session, schedule


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__)
    p.add_argument("--cases", type=int, default=10_000, help="number of cases (default 10000)")
    p.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    p.add_argument("--fast", action="store_true", help="transport families in their small, fast form")
    p.add_argument("--no-transport", action="store_true", help="leave the transport families out")
    p.add_argument("--rss-cap-mb", type=int, default=1024, help="kill and fail above this RSS (default 1024)")
    p.add_argument("--as-cap-mb", type=int, default=6144, help="the daemon's RLIMIT_AS (default 6144)")
    p.add_argument("--out", type=Path, default=Path("fuzz-out"), help="where the summary goes (default fuzz-out/)")
    p.add_argument("--replay", type=lambda v: [int(x) for x in v.split(",")], default=None, metavar="N[,N…]",
                   help="run only these cases (the 'case' of cases.jsonl) of the plan --cases/--seed make")
    p.add_argument("--workdir", type=Path, default=None, help="daemon state, broker, log (default: a temp dir)")
    args = p.parse_args(argv)

    # SIGTERM (and SIGINT, even where a background shell ignores it) end the run through the
    # finally below, which stops the daemon and its broker
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edged-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    plan = schedule(args.cases, args.seed, args.fast, include_transport=not args.no_transport)
    print(f"edged fuzz: {len(args.replay) if args.replay else len(plan)} cases, seed {args.seed}, workdir {workdir}",
          flush=True)
    session = Session.open(workdir, args.seed, args.rss_cap_mb, args.as_cap_mb,
                           progress=lambda line: print(line, flush=True))
    start = time.monotonic()
    try:
        only = [n - 1 for n in args.replay] if args.replay else None
        for _ in session.run(plan, only):
            pass
        print("waiting for every acknowledged instance's outcome ...", flush=True)
        session.settle()
        summary = session.finish(time.monotonic() - start,
                                 {"cases": args.cases, "seed": args.seed, "fast": args.fast,
                                  "command": "make fuzz " + " ".join(sys.argv[1:])})
    finally:
        session.close()
    checks.write(summary, args.out)
    print(checks.markdown(summary))
    print(f"summary: {args.out / 'fuzz-summary.md'} and {args.out / 'fuzz-summary.json'}; daemon log {workdir / 'daemon.log'}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
