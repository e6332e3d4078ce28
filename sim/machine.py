"""What this machine has, for the checks that refuse a size it cannot hold (sim's array sizes here, each
validate command's whole run in validate/): the one place that asks the operating system."""
from __future__ import annotations

import os


def physical_memory() -> int | None:
    """Physical memory of this machine in bytes (None where the system does not say: no check is made)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
