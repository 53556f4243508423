"""Run ``smartcar-etl`` and write its peak RSS (VmHWM, in kB) to the file named by $ETL_BENCH_PEAK at exit.

``wait4``'s ``ru_maxrss`` cannot be used: Linux starts a child's figure at its
parent's size when it forks, so a large benchmark process would show in it.
VmHWM belongs to the address space that ``exec`` gave the child.
"""

import atexit
import os
import re
from pathlib import Path


def _write_peak() -> None:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    Path(os.environ["ETL_BENCH_PEAK"]).write_text(match.group(1) if match else "0")


atexit.register(_write_peak)

if __name__ == "__main__":
    from etl.cli import main

    main()
