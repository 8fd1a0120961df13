"""Is a run whose meta.json says ``running`` still alive?

``mixbench run`` records its process id and host name in meta.json (``pid``, ``host``) when it
starts. A run killed hard (SIGKILL, out of memory, a lost node) never gets to write its final
status, so its meta.json says ``running`` for ever; ``is_stale`` tells such a run apart from
one that is really still training, where that can be known: only on the host that ran it. A run
on another host, or one whose meta.json holds no pid, is never called stale. A pid reused by an
unrelated process after the run died reads as alive (the run then shows as running, not stale).
No torch import here: ``compare`` uses it.
"""

from __future__ import annotations

import os
import socket
from typing import Any


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    except OSError:  # cannot tell: assume alive rather than call a live run dead
        return True
    return True


def is_stale(meta: dict[str, Any]) -> bool:
    """True when meta says ``running``, names this host and a pid, and no process has that pid."""
    if not isinstance(meta, dict) or meta.get("status") != "running":
        return False
    pid, host = meta.get("pid"), meta.get("host")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:  # 0 / negative would signal a group
        return False
    if not isinstance(host, str) or host != socket.gethostname():
        return False
    return not pid_alive(pid)
