"""Peak memory of the running process, as the manifests and benchmarks report it."""

from __future__ import annotations

import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far, in bytes (0 where the platform has none).

    On Linux this is VmHWM, the high-water mark of the process's own memory. getrusage's
    ru_maxrss is not used there: a process started by fork and exec inherits its parent's.
    """
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # in kB
    except OSError:
        pass  # no /proc: not Linux
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere
