"""A collector in its own process, for the crash tests: ``run_collector.py CONFIG.json CLOCK``.

The clock is the number in the file CLOCK (the test moves it); once the collector is
running, the file CONFIG.json.ready is created.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import telemagg as tm


def main() -> None:
    config_path, clock_path = Path(sys.argv[1]), Path(sys.argv[2])
    collector = tm.Collector(
        json.loads(config_path.read_text()), clock=lambda: float(clock_path.read_text())
    )

    def announce() -> None:
        while not collector.health.ready:
            time.sleep(0.01)
        Path(f"{config_path}.ready").touch()

    threading.Thread(target=announce, daemon=True).start()
    collector.run()


if __name__ == "__main__":
    main()
