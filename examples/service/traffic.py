"""Send some traffic to the example service: ``python traffic.py [requests]``."""

from __future__ import annotations

import random
import sys
import urllib.request

BASE = "http://127.0.0.1:8000/documents"


def main(n: int) -> None:
    routes = [("GET", ""), ("PUT", ""), ("POST", "/share")]
    for _ in range(n):
        method, suffix = random.choice(routes)
        user = f"user-{random.randrange(200)}"
        request = urllib.request.Request(
            f"{BASE}/{random.randrange(50)}{suffix}", method=method, headers={"X-User-Id": user}
        )
        urllib.request.urlopen(request).read()
    print(f"sent {n} requests")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
