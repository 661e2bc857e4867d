"""Small file and process helpers shared by the search, the CLI and the caches."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

__all__ = ["atomic_write_json", "pid_alive"]


def atomic_write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON to a temporary file next to ``path`` (named by host and pid, so concurrent writers
    never share one), fsync it, then rename it over ``path``: readers see the old file or the new one, never a part."""
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
        state = stat.rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no procfs (macOS) or an unexpected format: kill(0) said it exists
        return True
    return state not in ("Z", "X")
