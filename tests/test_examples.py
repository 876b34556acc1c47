"""The README's program and every example script, run as a user would run them.

The README's "Using it" block is extracted from README.md and executed verbatim, so the page
cannot drift from the library. Each script in ``examples/`` runs here or in
``test_example_peers.py`` (the multi-process peer examples); a new one must be added to
:data:`RUN_ELSEWHERE` or get a test, which :func:`test_every_example_is_run` checks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
#: Bound on one example's run, in seconds: a hang guard.
TIMEOUT = 120
#: Examples run by another test file, and by which.
RUN_ELSEWHERE = {
    "tcp-peers": "tests/test_example_peers.py",
    "nats-peers": "tests/test_example_peers.py",
}
#: Examples run here.
RUN_HERE = {"three_writers.py", "dashboard_screenshot.py"}


def readme_program() -> str:
    """The first ``python`` block of the README's "Using it" section."""
    text = (ROOT / "README.md").read_text("utf-8")
    section = text.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```python\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert match is not None, "no python block in the README's Using it section"
    return match.group(1)


def run_python(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_the_readme_program_runs_as_written(tmp_path: Path) -> None:
    program = tmp_path / "using_it.py"
    program.write_text(readme_program(), "utf-8")
    result = run_python(program, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "sat 02:00"
    # The conflict names both writers by plane, next to their chain ids.
    assert re.fullmatch(
        r"global/region-a/edge-a1 policies\.maintenance-window: region-a \([0-9a-f]+~[0-9a-f]+\) "
        r".* won over edge-a1 \([0-9a-f]+~[0-9a-f]+\) .*; authority-precedence, authority-rank",
        lines[1],
    ), lines[1]
    assert "'plane': 'edge-a1'" in lines[-1]
    # It cleaned up after itself: nothing was written where it ran.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["using_it.py"]


def test_the_readme_program_uses_what_it_explains() -> None:
    program = readme_program()
    for name in (
        "bootstrap_keys",
        "keys.identity(",
        "keys.anchors",
        "SqliteStore.open",
        "session.receive(frame)",
        ".data_to_send()",
        "await network.pump()",
        "run_session(",
        'tcp.TcpServer.start("127.0.0.1", 0',
        ".conflicts()",
        ".status()",
    ):
        assert name in program, name


def test_three_writers_converge_with_the_same_conflicts(tmp_path: Path) -> None:
    result = run_python(EXAMPLES / "three_writers.py", "--seed", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "converged: True" in result.stdout
    conflicts = [line for line in result.stdout.splitlines() if line.startswith("conflict: ")]
    assert len(conflicts) == 3
    assert all("authority-rank" in line for line in conflicts)
    assert '"maintenance-window": "global says sun 02:00"' in result.stdout
    # Deterministic: the same seed prints the same thing.
    again = run_python(EXAMPLES / "three_writers.py", "--seed", "3", cwd=tmp_path)
    assert again.stdout == result.stdout


@pytest.mark.browser
def test_the_dashboard_screenshot_is_taken(tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        reason = "chromium is not installed"
        if os.environ.get("SOUVERIX_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and SOUVERIX_REQUIRE_BROWSER=1 requires the browser tests")
        pytest.skip(reason)
    target = tmp_path / "dashboard.png"
    result = run_python(EXAMPLES / "dashboard_screenshot.py", target, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes().startswith(b"\x89PNG")


def test_every_example_is_run() -> None:
    shipped = {p.name for p in EXAMPLES.iterdir() if not p.name.startswith((".", "__"))}
    assert shipped == RUN_HERE | set(RUN_ELSEWHERE)
    peers = (ROOT / "tests" / "test_example_peers.py").read_text("utf-8")
    for folder in RUN_ELSEWHERE:
        assert f'"{folder}"' in peers, folder
