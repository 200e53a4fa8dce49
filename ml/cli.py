"""``python -m ml.cli ssl|throughput``, as docs/results.md names it: the benchmarks now live in
``bench`` (``python -m bench.cli``); this entry point only forwards to them."""

from __future__ import annotations


def main() -> None:
    from bench.cli import main as bench_main

    bench_main()


if __name__ == "__main__":
    main()
