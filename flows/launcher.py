"""`python -m flows.launcher PARENT_PID COMMAND...`: run COMMAND so that it dies with PARENT_PID.

On Linux the kernel kills COMMAND when its parent dies, however the parent dies (`SIGKILL`
included), through `PR_SET_PDEATHSIG`, which this launcher sets on itself and which survives the
exec into COMMAND. The request follows the parent *thread* that started the child: start the child
from a thread that lives as long as the process (the main thread). Elsewhere COMMAND just runs.
Kept free of heavy imports: it runs before every child it starts.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def launcher_command(command: list[str]) -> list[str]:
    """`command`, run through this launcher so that it dies with the calling process."""
    return [sys.executable, "-m", __name__, str(os.getpid()), *command]


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the request was in place
        os._exit(1)


def main(arguments: list[str]) -> None:
    """`PARENT_PID COMMAND...`: become COMMAND, killed by the kernel when PARENT_PID dies."""
    die_with_parent(int(arguments[0]))
    os.execv(arguments[1], arguments[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
