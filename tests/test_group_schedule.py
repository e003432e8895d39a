"""The order .ci/test's two workers take the xdist groups in (tests/group_schedule.py): the group
with the most seconds in the last run's JUnit report first, whatever its test count; and the
order conftest.py gives tests that share one run through ComfyUI's output cache."""

from __future__ import annotations

import subprocess
import sys

from group_schedule import group_seconds, longest_first, nodeid_key, recorded_seconds, strip_group

from tools.harness import REPO

# As pytest --junitxml writes it under xdist's loadgroup (a parametrized name gets a "]" appended).
REPORT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.test_pose" name="test_one@test_pose" time="1.5" />
<testcase classname="tests.test_pose" name="test_two[x]@test_pose]" time="2.25" />
<testcase classname="tests.test_pose" name="test_two[a@b]@test_pose]" time="0.5" />
<testcase classname="tests.test_batch.TestSlow" name="test_slow@full-size-models" time="300" />
<testcase classname="tests.test_batch" name="test_plain" time="7" />
</testsuite></testsuites>"""


def test_report_seconds_are_keyed_by_test_not_group(tmp_path):
    report = tmp_path / "test-run.xml"
    report.write_text(REPORT)
    assert recorded_seconds(report) == {
        ("tests.test_pose", "test_one"): 1.5, ("tests.test_pose", "test_two[x]"): 2.25,
        ("tests.test_pose", "test_two[a@b]"): 0.5, ("tests.test_batch.TestSlow", "test_slow"): 300.0,
        ("tests.test_batch", "test_plain"): 7.0}
    assert recorded_seconds(tmp_path / "none.xml") == {}  # no report yet: xdist's own order
    report.write_text("<testsuites><testcase")  # cut short (a run killed while writing it)
    assert recorded_seconds(report) == {}


def test_test_ids_map_to_report_names():
    assert nodeid_key("tests/test_batch.py::TestSlow::test_slow@full-size-models") == (
        "tests.test_batch.TestSlow", "test_slow")
    assert nodeid_key("tests/test_pose.py::test_two[x]@elsewhere") == ("tests.test_pose", "test_two[x]")
    assert nodeid_key("tests/test_pose.py::test_two[a@b]") == ("tests.test_pose", "test_two[a@b]")
    assert strip_group("test_two[a@b]@g") == "test_two[a@b]" and strip_group("test_one") == "test_one"


def test_the_longest_group_goes_first_not_the_one_with_most_tests(tmp_path):
    report = tmp_path / "test-run.xml"
    report.write_text(REPORT)
    seconds = recorded_seconds(report)
    groups = {
        "test_pose": [f"tests/test_pose.py::test_{i}@test_pose" for i in ("one", "two[x]", "two[a@b]")],
        "full-size-models": ["tests/test_batch.py::TestSlow::test_slow@full-size-models"],
        "test_batch": ["tests/test_batch.py::test_plain@test_batch"],
    }
    assert group_seconds(groups["test_pose"], seconds) == 4.25
    assert longest_first(groups, seconds) == "full-size-models"
    del groups["full-size-models"]
    assert longest_first(groups, seconds) == "test_batch"  # 7 s in one test beats 4.25 s in three
    # A test the report lacks counts 1 s: eight new ones outweigh 7 s.
    groups["new"] = [f"tests/test_mask.py::test_{i}@new" for i in range(8)]
    assert group_seconds(groups["new"], seconds) == 8.0 and longest_first(groups, seconds) == "new"
    assert longest_first(groups, {}) is None  # no report: the base scheduler's order


def test_the_demo_command_runs_right_after_the_browser_run():
    """conftest.py moves the demo command's test right after the browser test, whatever order the
    files come in: both send the example with caption retrieval to the shared server, and ComfyUI
    serves the second from its output cache only while it is the next prompt. Likewise in-process,
    the best-of-N run right after the outfit run (their shared Garment Inversion)."""
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/test_example_workflow.py", "tests/test_browser.py", "tests/test_best_of_n.py",
         "tests/test_candidates.py", "tests/test_outfit.py"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    assert collected.returncode == 0 and ids, collected.stdout[-3000:] + collected.stderr[-3000:]
    at = ids.index("tests/test_browser.py::test_example_workflow_in_the_browser")
    assert ids[at + 1] == "tests/test_example_workflow.py::test_demo_command_runs_the_example", ids
    assert ids[0].startswith("tests/test_example_workflow.py::")  # the rest keeps its order
    at = ids.index("tests/test_outfit.py::test_second_pass_keeps_the_first_outside_its_mask")
    assert ids[at + 1] == "tests/test_best_of_n.py::test_the_best_scored_sample_is_saved", ids
    assert ids.index("tests/test_best_of_n.py::test_template_shape") < ids.index(
        "tests/test_candidates.py::test_template_shape")  # the module's other tests stay where they were
