"""Longest xdist group first: the order in which `--dist loadgroup` hands groups to the workers.

xdist hands out groups by test count (most tests first), which says little about time here: the
full-size group (~70 tests, ~9 min) and test_index_ray (7 tests, ~3.5 min) start wherever their
count puts them, and a long group handed out last runs alone while the other worker idles.
Handing out the group with the most recorded seconds first (longest processing time first) ends
the two workers together, to within the shortest groups. The seconds come from the previous full
run's JUnit report, which .ci/test writes into the cache; without one (a first run) xdist's own
order stands. Only the controller reads it, so every worker still collects the same tests.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from fashion_rag.files import MAX_TABLE_BYTES, read_regular

UNKNOWN_TEST_SECONDS = 1.0  # a test the last report lacks (new, renamed): counted, not ignored


def report_path() -> Path:
    """Where .ci/test leaves the JUnit report of its last full run."""
    cache = os.environ.get("FASHION_RAG_CACHE") or Path.home() / ".cache" / "fashion-rag"
    return Path(cache) / "test-run.xml"


def strip_group(name: str) -> str:
    """A test name or id without xdist's "@group" suffix (the report writes a parametrized one as
    `test[param]@group]`), so that a test keeps its seconds when it changes group. An "@" inside
    the parameters is no suffix: `test[a@b]` stays whole."""
    head, at, group = name.rpartition("@")
    if not at or "::" in group or "]" in group.removesuffix("]"):
        return name
    if group.endswith("]") and not head.endswith("]"):
        return name
    return head


def recorded_seconds(report: Path) -> dict[tuple[str, str], float]:
    """(classname, test name) -> seconds (setup + call + teardown) from a JUnit report; empty
    when there is none or it cannot be read (the order then stays xdist's)."""
    try:
        root = ET.fromstring(read_regular(report, MAX_TABLE_BYTES, "test report"))
        return {(case.get("classname", ""), strip_group(case.get("name", ""))): float(case.get("time") or 0)
                for case in root.iter("testcase")}
    except (ValueError, OSError, ET.ParseError):
        return {}


def nodeid_key(nodeid: str) -> tuple[str, str]:
    """The JUnit (classname, name) of a test id such as `tests/test_pose.py::TestB::test_c[x]@group`."""
    parts = strip_group(nodeid).split("::")
    classname = ".".join([parts[0].removesuffix(".py").replace("/", "."), *parts[1:-1]])
    return classname, parts[-1]


def group_seconds(nodeids: Iterable[str], seconds: dict[tuple[str, str], float]) -> float:
    return sum(seconds.get(nodeid_key(n), UNKNOWN_TEST_SECONDS) for n in nodeids)


def longest_first(groups: dict[str, Iterable[str]], seconds: dict[tuple[str, str], float]) -> str | None:
    """The group to hand out next: the most recorded seconds; None without a report."""
    if not seconds or not groups:
        return None
    return max(groups, key=lambda g: group_seconds(groups[g], seconds))


def make_scheduler(config, log):
    """xdist's loadgroup scheduler, handing out the longest remaining group first."""
    from xdist.scheduler import LoadGroupScheduling

    seconds = recorded_seconds(report_path())

    class LongestGroupFirst(LoadGroupScheduling):
        def _assign_work_unit(self, node) -> None:
            group = longest_first(self.workqueue, seconds)
            if group is not None:
                self.workqueue.move_to_end(group, last=False)  # the base class pops the first
            super()._assign_work_unit(node)

    return LongestGroupFirst(config, log)
