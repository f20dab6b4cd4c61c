"""`make bench`, second part: the full-length fault scenarios (tests/faults/scenarios.py) against real replicas
behind real nginx on loopback, tabulated into bench/results/faults.md and the README's "Running in containers".

    python -m bench.faults            # all five, full length (about five minutes)
    python -m bench.faults --short    # the lengths `make test` uses
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.faults import scenarios
from tests.faults.scenarios import FULL, SHORT, Result

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- fault-table:begin -->", "<!-- fault-table:end -->"


def table(results: Sequence[Result]) -> str:
    lines = [
        "| scenario | phase | sent | answered | failed | retried by nginx | p50 ms | p99 ms | statuses |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for index, phase in enumerate(result.phases):
            statuses = ", ".join(f"{status}: {count:,}" for status, count in phase.statuses.items())
            lines.append(
                f"| {result.name if index == 0 else ''} | {phase.phase} | {phase.sent:,} | {phase.answered:,} | "
                f"{phase.failed:,} | {phase.retried:,} | {phase.p50_ms:.1f} | {phase.p99_ms:.1f} | {statuses} |"
            )
    return "\n".join(lines)


def findings(results: Sequence[Result]) -> str:
    lines = []
    for result in results:
        held = scenarios.promises(result)
        verdict = ", ".join(f"{name} {'✓' if ok else '✗ NOT HELD'}" for name, ok in held.items())
        notes = result.notes
        extra = ""
        if result.name.startswith("(a)"):
            extra = (
                f"; killed at {notes['kill']:.1f} s, restarted at {notes['restart']:.1f} s, ready at "
                f"{notes['ready']:.1f} s, nginx sending to it again at {notes['rejoined']:.1f} s"
            )
        elif result.name.startswith("(b)"):
            extra = (
                f"; exit statuses {notes['exit_codes']}, nginx back on each restarted replica after "
                f"{', '.join(f'{s:.1f}' for s in notes['rejoined_after_s'])} s"
            )
        elif result.name.startswith("(c)"):
            extra = (
                f"; replica RSS {notes['rss_before'] / 2**20:.0f} MiB before, {notes['rss_peak'] / 2**20:.0f} MiB "
                f"at peak, {notes['rss_after'] / 2**20:.0f} MiB after; normal answers "
                f"{notes['normal_after_s']:.2f} s after the burst"
            )
        elif result.name.startswith("(e)"):
            steps = ", ".join(
                f"{step['name']} " + ("never" if step["truth_after_s"] is None else f"{step['truth_after_s']:.1f} s")
                for step in notes["steps"]
            )
            versions = "; ".join(
                f"{phase}: " + ", ".join(f"v{version} {count:,}" for version, count in counts.items())
                for phase, counts in notes["versions"].items()
            )
            extra = f"; every replica's status true after: {steps}; answers by version: {versions}"
        else:
            loris = notes["loris"]
            extra = f"; slow clients {loris['sent']} sent, {loris['answered']} answered, {loris['correct']} correct 200"
        lines.append(f"* {result.name}: {verdict}{extra}.")
    return "\n".join(lines)


def write_readme(report: str) -> None:
    text = README.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {BEGIN} … {END} section to write the table into")
    README.write_text(pattern.sub(lambda _: f"{BEGIN}\n{report}\n{END}", text))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults")
    parser.add_argument("--short", action="store_true", help="the short lengths of `make test`")
    parser.add_argument("--no-readme", action="store_true", help="write bench/results/faults.md only")
    args = parser.parse_args(argv)
    lengths = SHORT if args.short else FULL
    logs = Path(tempfile.mkdtemp(prefix="tapeserve-faults-"))
    started = time.monotonic()
    cluster = scenarios.start_cluster(logs, short=args.short)
    results: list[Result] = []
    try:
        for name, scenario in scenarios.SCENARIOS.items():
            print(f"scenario {name} …", file=sys.stderr, flush=True)
            results.append(scenarios.run(scenario(cluster, lengths)))
    finally:
        scenarios.stop_cluster(cluster)
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {'short' if args.short else 'full'} lengths, "
        f"{time.monotonic() - started:.0f} s in all; replica logs in a temporary directory."
    )
    report = f"{header}\n\n{table(results)}\n\n{findings(results)}"
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.md").write_text(report + "\n")
    if not args.no_readme:
        write_readme(report)
    held = all(all(scenarios.promises(result).values()) for result in results)
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
