"""Where the test suite's time goes: per-module time, the slowest tests, the processes it starts.

    python benchmarks/test_suite.py [--junit FILE] [-- PYTEST ARGS...]
    python benchmarks/test_suite.py --ci          # `bash .ci/test` itself, as the README times it
    python benchmarks/test_suite.py --groups [--junit FILE]   # two-worker estimate, today's groups

Runs `python -m pytest` (with the given arguments, e.g. `tests/test_index_ray.py --durations=0`,
or `-n 2 --dist loadgroup`) and, while it runs, samples the load average and every process it
starts (ComfyUI servers: `main.py`; Ray workers; Chromium), then prints one table: per test
module, the summed test time (setup + call + teardown, from pytest's JUnit XML), its tests and
the load average while it ran; then the 15 slowest tests, the process counts, and the CPU seconds
each kind of process used (read from /proc every half second: a process's last half second is
missed; --processes FILE writes every process seen, as JSON). With --junit
FILE and no pytest run it only reads an existing report (no process counts then); --ci runs
`bash .ci/test` (setup, lint, 2 workers) and reads the report it leaves in the cache.

The machine is shared: the load average column says how much else was running.

--groups collects the tests (no run) to read their xdist groups as tests/conftest.py sets them
now, sums each group's seconds from a report (default: the last `bash .ci/test` run's, in the
cache), and estimates what each of the two workers would run, the group with the most seconds
handed out first (tests/group_schedule.py): the critical path after a regrouping, before a run.
A test the report lacks counts 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# process kind -> does this argv (a list) belong to it
KINDS = {
    "ComfyUI server": lambda argv: len(argv) > 1 and argv[1].endswith("main.py"),
    "Ray worker": lambda argv: any(a.endswith("default_worker.py") for a in argv),
    "Chromium (browser process)": lambda argv: argv[0].endswith("chromium") and not any(
        a.startswith("--type=") for a in argv),
    # execnet's popen gateway: `python -u -c "import sys;exec(eval(sys.stdin.readline()))"`
    "pytest-xdist worker": lambda argv: argv[1:3] == ["-u", "-c"] and "stdin.readline" in " ".join(argv[3:4]),
}


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds the process has used (not its children's)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14-15)


def _kind(argv: list[str]) -> str:
    """The process kind of KINDS, or "other: <program> <script>" (what the rest of the CPU ran)."""
    for kind, belongs in KINDS.items():
        if argv and belongs(argv):
            return kind
    if argv and argv[0].endswith("chromium"):
        return "Chromium (its other processes)"
    words = [Path(a).name[:30] for a in argv[:3] if a and not a.startswith("-")]
    return "other: " + " ".join(words[:2])


class Watcher(threading.Thread):
    """Samples the load average and the descendants of `root` twice a second."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.stop = root, threading.Event()
        self.procs: dict[int, list[str]] = {}  # pid -> argv
        self.load: list[tuple[float, float]] = []  # (time, 1-minute load average)
        self.rss: dict[int, int] = {}  # pid -> largest resident set seen (bytes), own processes
        # pid -> CPU seconds (user + system) at its last sample: a process's last half second and
        # one living under half a second are missed, so the sums are slightly low
        self.cpu: dict[int, float] = {}
        # largest sum of the tree's resident sets at one sample: what the run holds at once
        # (a module's child processes included), the figure that decides its xdist group
        self.peak_total = 0

    def _descends(self, pid: int) -> bool:
        for _ in range(16):
            pid = _ppid(pid) or 0
            if pid <= 1:
                return False
            if pid == self.root:
                return True
        return False

    def run(self) -> None:
        while not self.stop.is_set():
            with open("/proc/loadavg") as f:
                self.load.append((time.time(), float(f.read().split()[0])))
            total = 0
            for pid in [self.root, *self.procs]:
                try:
                    with open(f"/proc/{pid}/statm") as f:
                        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                except (OSError, ValueError, IndexError):
                    continue
                total += rss
                self.cpu[pid] = _cpu_seconds(pid) or self.cpu.get(pid, 0.0)
                if pid != self.root:
                    self.rss[pid] = max(self.rss.get(pid, 0), rss)
            self.peak_total = max(self.peak_total, total)
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) not in self.procs and self._descends(int(entry)):
                    try:
                        cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
                    except OSError:
                        continue
                    self.procs[int(entry)] = cmd
            self.stop.wait(0.5)

    def load_between(self, start: float, end: float) -> float | None:
        values = [v for t, v in self.load if start <= t <= end + 1]
        return sum(values) / len(values) if values else None


def read_junit(path: Path) -> list[tuple[str, str, float, float]]:
    """(module, test, seconds, finish time or 0) per test case."""
    cases = []
    for case in ET.parse(path).iter("testcase"):
        parts = case.get("classname", "").split(".")  # e.g. tests.test_batch, or test_batch.TestX
        module = next((p for p in parts if p.startswith("test_")), parts[0] or "?")
        cases.append((module, case.get("name", "?"), float(case.get("time", 0)), 0.0))
    return cases


def group_estimate(junit: Path, workers: int = 2) -> None:
    """Per-group seconds under today's groups, and each worker's share, longest group first."""
    import pytest

    sys.path[:0] = [str(REPO / "tests"), str(REPO)]
    from group_schedule import group_seconds, recorded_seconds

    groups: dict[str, list[str]] = defaultdict(list)

    class Groups:
        def pytest_collection_finish(self, session) -> None:
            for item in session.items:
                mark = item.get_closest_marker("xdist_group")
                groups[mark.args[0] if mark else "(none)"].append(item.nodeid)

    code = pytest.main(["tests", "--collect-only", "-q", "-p", "no:xdist"], plugins=[Groups()])
    if code != 0:
        raise SystemExit(f"collecting the tests failed (exit {code})")
    seconds = recorded_seconds(junit)
    if not seconds:
        raise SystemExit(f"no test times in {junit}: run `bash .ci/test` once, or pass --junit FILE")
    sums = {g: group_seconds(ids, seconds) for g, ids in groups.items()}
    load = [0.0] * workers
    for g in sorted(sums, key=lambda g: -sums[g]):  # as xdist hands them out (group_schedule.py)
        load[load.index(min(load))] += sums[g]
    print("\n| group | tests | seconds |\n|---|---|---|")
    for g in sorted(sums, key=lambda g: -sums[g]):
        print(f"| {g} | {len(groups[g])} | {sums[g]:.1f} |")
    print(f"| **all** | {sum(map(len, groups.values()))} | {sum(sums.values()):.1f} |")
    print(f"\nper worker, longest group first: {', '.join(f'{s:.0f} s' for s in load)} "
          f"(times from {junit})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--junit", type=Path, help="read this JUnit XML (no pytest run) or write it here")
    p.add_argument("--ci", action="store_true", help="run `bash .ci/test` (report: the cache's test-run.xml)")
    p.add_argument("--groups", action="store_true",
                   help="no run: per-group seconds of a report under today's xdist groups, per worker")
    p.add_argument("--processes", type=Path,
                   help="write every process seen (argv, CPU seconds, largest RSS) as JSON")
    p.add_argument("pytest_args", nargs="*", help="after --: pytest's arguments (default: tests)")
    args = p.parse_args()
    if args.groups:
        cache = Path(os.environ.get("FASHION_RAG_CACHE") or Path.home() / ".cache" / "fashion-rag")
        group_estimate(args.junit or cache / "test-run.xml")
        return 0
    watcher = None
    wall = None
    proc = None
    if args.junit and args.junit.is_file() and not args.pytest_args and not args.ci:
        junit = args.junit
    else:
        if args.ci:
            cache = Path(os.environ.get("FASHION_RAG_CACHE") or Path.home() / ".cache" / "fashion-rag")
            junit = cache / "test-run.xml"
            cmd = ["bash", str(REPO / ".ci" / "test")]
        else:
            junit = args.junit or Path(tempfile.mkdtemp(prefix="fr-suite-")) / "junit.xml"
            cmd = [sys.executable, "-m", "pytest", *(args.pytest_args or ["tests"]), f"--junitxml={junit}",
                   "-q"]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO)
        watcher = Watcher(proc.pid)
        watcher.procs[proc.pid] = cmd  # (its CPU is counted too)
        watcher.start()
        proc.wait()
        wall = time.monotonic() - start
        watcher.stop.set()
        watcher.join()
    cases = read_junit(junit)
    by_module: dict[str, list[float]] = defaultdict(list)
    for module, _, seconds, _ in cases:
        by_module[module].append(seconds)
    total = sum(s for _, _, s, _ in cases)
    print("| module | tests | seconds | share |\n|---|---|---|---|")
    for module, times in sorted(by_module.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {module} | {len(times)} | {sum(times):.1f} | {100 * sum(times) / max(total, 1e-9):.0f} % |")
    print(f"| **all** | {len(cases)} | {total:.1f} | |")
    print("\nslowest tests (setup + call + teardown):")
    for module, name, seconds, _ in sorted(cases, key=lambda c: -c[2])[:15]:
        print(f"  {seconds:7.1f} s  {module}::{name}")
    if watcher is not None:
        load = watcher.load_between(0, time.time())
        print(f"\nwall time {wall:.0f} s; mean 1-minute load average {load:.1f} "
              f"(max {max(v for _, v in watcher.load):.1f}) on {os.cpu_count()} CPUs")
        print(f"  peak resident memory of the process tree at once: {watcher.peak_total / 2**30:.1f} GiB")
        big = sorted(watcher.rss.items(), key=lambda kv: -kv[1])[:4]
        print("  largest resident sets: " + ", ".join(
            f"{rss / 2**30:.1f} GiB ({' '.join(watcher.procs[pid][:3])[-60:]})" for pid, rss in big))
        for kind, belongs in KINDS.items():
            n = sum(bool(argv) and belongs(argv) for argv in watcher.procs.values())
            print(f"  processes started: {kind}: {n}")
        cpu: dict[str, list[float]] = defaultdict(list)
        for pid, seconds in watcher.cpu.items():
            cpu[_kind(watcher.procs.get(pid, []))].append(seconds)
        print("\n| process kind | processes | CPU seconds (sampled) |\n|---|---|---|")
        for kind, times in sorted(cpu.items(), key=lambda kv: -sum(kv[1]))[:14]:
            print(f"| {kind} | {len(times)} | {sum(times):.0f} |")
        print(f"| **all** | {len(watcher.cpu)} | {sum(watcher.cpu.values()):.0f} |")
        if args.processes:
            seen = [{"pid": pid, "argv": argv, "kind": _kind(argv),
                     "cpu_s": round(watcher.cpu.get(pid, 0), 1),
                     "rss_gib": round(watcher.rss.get(pid, 0) / 2**30, 2)}
                    for pid, argv in watcher.procs.items()]
            args.processes.write_text(json.dumps(sorted(seen, key=lambda r: -r["cpu_s"]), indent=1))
    return 0 if proc is None else proc.returncode  # a failed run fails this command too


if __name__ == "__main__":
    sys.exit(main())
