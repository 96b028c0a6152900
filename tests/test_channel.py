"""The metric channel against a target that reaches for it: the harness pattern of the README
(the channel popped from the environment, not inherited, the harness not dumpable) leaves the
target's processes no way to write to it, even one that waits for the harness to finish and
reopens its descriptor through /proc."""

from __future__ import annotations

import json
import textwrap

import pytest

from autoexp_mcp import sandbox
from autoexp_mcp.loop import Experiment
from conftest import MakeRepo, baseline, harness_config

BWRAP = sandbox.available()

HARNESS = textwrap.dedent(
    """\
    import ctypes, os, subprocess, sys
    fd = int(os.environ.pop("AUTOEXP_METRIC_FD"))
    os.set_inheritable(fd, False)
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0, as the README shows
    subprocess.run([sys.executable, "-c", open("value.txt").read()], check=True)  # the target, in a child
    with os.fdopen(fd, "w") as channel:
        channel.write("score: 1\\n")
    """
)

# The target: a detached helper that opens every descriptor of the harness it can, waits for
# the harness to close them, then writes its own figure into whatever it holds.
FORGER = textwrap.dedent(
    """\
    import os, time
    harness = os.getppid()
    if os.fork() == 0:
        os.setsid()
        held = []
        for n in os.listdir(f"/proc/{harness}/fd") if os.access(f"/proc/{harness}/fd", os.R_OK) else []:
            try:
                held.append((n, os.open(f"/proc/{harness}/fd/{n}", os.O_WRONLY | os.O_APPEND)))
            except OSError:
                pass
        print("forger holds", len(held), flush=True)
        t = time.time()
        while time.time() - t < 10 and os.path.exists(f"/proc/{harness}"):
            time.sleep(0.001)
        for _, w in held:
            try:
                os.write(w, b"score: 99\\n")
            except OSError:
                pass
        os._exit(0)
    print("the target trained, honestly", flush=True)
    """
)


@pytest.mark.skipif(not BWRAP.ok, reason=f"no sandbox here: {BWRAP.detail}")
def test_a_target_cannot_reopen_the_harness_channel_through_proc(make_repo: MakeRepo) -> None:
    config = harness_config().replace('direction = "max"', 'direction = "max"\nchannel = "fd"', 1)
    repo = make_repo(value="print('baseline')", config=config, files={"evaluate.py": HARNESS})
    exp = Experiment(repo)
    try:
        baseline(exp)
        exp.write_target(content=FORGER)
        exp.commit("reach for the channel")
        view = exp.run_eval(30)
        assert view.metrics == {"score": 1.0}, view
        assert exp.decide().status == "discard"
        exp.log_result()
    finally:
        exp.close()
    rows = [json.loads(x) for x in (repo / "experiments.jsonl").read_text().splitlines()]
    assert [r["metrics"]["score"] for r in rows] == [1.0, 1.0]
