"""``make bench``: what running a builder command costs the farm beyond the command itself.

Every step's command (dpkg-buildpackage, sbuild, buildah) runs through
:func:`buildfarm.runners.process.run_streaming`: under the guard (a second interpreter that
kills the command with its worker), in its own process group, its output streamed line by line.
Measured here side by side with ``subprocess.run`` of the same trivial command, so the number is
the farm's overhead per command.  Before the watcher was woken at the command's exit it polled
every 0.5 s, and each step held its node up to 0.5 s longer than its command ran (issue 16).
Prints; asserts nothing about speed.
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from pathlib import Path

from buildfarm.runners.process import run_streaming

RUNS = 20
COMMAND = ["sh", "-c", "echo one line"]


def _median_ms(run: object) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        run()  # type: ignore[operator]
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> int:
    cwd = Path("/tmp")

    def plain() -> None:
        subprocess.run(COMMAND, cwd=cwd, check=True, capture_output=True)

    def farm() -> None:
        run_streaming(COMMAND, cwd=cwd, log=lambda line: None, cancel=threading.Event(), timeout_seconds=60)

    plain_ms, farm_ms = _median_ms(plain), _median_ms(farm)
    print(f"builder command, median of {RUNS} ({' '.join(COMMAND)!r}):")
    print(f"  {'subprocess.run':28} {plain_ms:7.1f} ms")
    print(f"  {'run_streaming (guard, group)':28} {farm_ms:7.1f} ms")
    print(f"  overhead per command          {farm_ms - plain_ms:7.1f} ms   (ratio {farm_ms / plain_ms:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
