"""``python -m benchmarks.latency``."""

from benchmarks.latency.cli import main

main()
