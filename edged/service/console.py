"""How ``edged`` and ``edgectl`` end when the terminal goes away: an exit status, never a traceback.

``edgectl status | head -3`` closes the pipe while the command still writes (BrokenPipeError,
also raised once more when the interpreter flushes stdout at exit); Ctrl-C raises
KeyboardInterrupt wherever the command happens to be. Both are the user's choice, not a bug,
so :func:`guarded` turns them into the statuses a shell would show for the signals: 141
(SIGPIPE) and 130 (SIGINT).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

EXIT_PIPE, EXIT_INTERRUPTED = 141, 130


def guarded(main: Callable[[], int]) -> int:
    try:
        return main()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Point stdout at /dev/null: the interpreter's final flush must not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
