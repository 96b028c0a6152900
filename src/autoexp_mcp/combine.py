"""Combine lanes: do their best changes compose?

From the lanes' common base, each lane's best (its net change of the target against the
base) is added greedily, largest own gain first: merged 3-way into the combination so far,
measured with the eval (the policy's repeats) and kept only if it beats the best so far by the
policy's rule. A conflict, or a change that no longer improves once combined, is recorded with
the reason and left out. The combination is a normal lane (`autoexp/<into>`) with its own
ledger, so status, report and verify work on it; `combine.json` in its `.autoexp/` lists what
happened to each lane's change.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import GuardError
from .lane import lane_path, lane_state, main_root, open_lane, read_info
from .loop import Experiment
from .state import STATE_DIR

SUMMARY_FILE = "combine.json"
RUN_WAIT_S = 600.0  # one run_eval wait; the loop waits again until the run ends


@dataclass
class Step:
    tag: str
    commit: str | None  # the lane's best commit
    gain: float | None  # its own gain over its baseline, in the objective's better direction
    status: str  # kept | discarded | conflict | skipped | crash
    reason: str
    experiment: int | None = None  # the combination's ledger row that measured it


@dataclass
class Combination:
    into: str
    base: str
    path: Path
    steps: list[Step] = field(default_factory=list)
    best: dict[str, float] | None = None
    best_commit: str | None = None


def _candidates(root: Path, tags: Sequence[str]) -> tuple[str, list[Step]]:
    """The common base, and each lane's best with its own gain (skipped ones with why)."""
    bases, steps = set(), []
    for tag in tags:
        info = read_info(root, tag)
        st = lane_state(info) if info.path.is_dir() else None
        if st is None:
            raise GuardError(f"no lane {tag} in {root} (lanes: `autoexp-mcp status --all`)")
        bases.add(info.base or st.start_commit)
        if st.best is None or st.baseline is None or st.best.commit == st.baseline.commit:
            steps.append(Step(tag, None, None, "skipped", "the lane kept no improvement over its baseline"))
            continue
        steps.append(Step(tag, st.best.commit, None, "pending", ""))
    if len(bases) != 1:
        raise GuardError(
            f"lanes {', '.join(tags)} started from different commits ({', '.join(b[:12] for b in sorted(bases))}); "
            "combine merges changes against one common base: give lanes started from the same commit."
        )
    return bases.pop(), steps


def _gain(exp: Experiment, tag: str, root: Path) -> float:
    st = lane_state(read_info(root, tag))
    assert st is not None and st.best is not None and st.baseline is not None
    obj = exp.cfg.objective
    diff = st.best.metrics[obj.name] - st.baseline.metrics[obj.name]
    return diff if obj.direction == "max" else -diff


def _run_to_end(exp: Experiment) -> str:
    view = exp.run_eval(RUN_WAIT_S)
    while view.status == "running":
        view = exp.run_eval(RUN_WAIT_S)
    return view.status


def _merge(exp: Experiment, base: str, theirs: str) -> str | None:
    """The target with lane commit `theirs`'s change merged 3-way into the current one; None on a conflict."""
    target = exp.cfg.experiment.target
    assert exp.state.incumbent is not None
    with tempfile.TemporaryDirectory(prefix="autoexp-combine-") as tmp:
        files = {}
        for name, commit in (("ours", exp.state.incumbent.commit), ("base", base), ("theirs", theirs)):
            files[name] = Path(tmp) / name
            files[name].write_bytes(exp.git.show_file(commit, target))
        if not exp.git.merge_file(files["ours"], files["base"], files["theirs"]):
            return None
        return files["ours"].read_bytes().decode("utf-8")


def combine(repo: Path, tags: Sequence[str], into: str = "combined") -> Combination:
    """Combine the lanes `tags` of the repository at `repo` into the new lane `into`."""
    root = main_root(Path(repo))
    if not tags:
        raise GuardError("give the lanes to combine: --tags a,b,c")
    if (lane_path(root, into) / ".git").exists():
        raise GuardError(f"lane {into} already exists; give another name with --into")
    base, steps = _candidates(root, tags)
    exp = open_lane(root, into, from_commit=base)
    result = Combination(into, base, exp.root)
    try:
        if _run_to_end(exp) != "done":
            exp.decide()
            exp.log_result(notes="combine: the common base")
            raise GuardError(f"the common base {base[:12]} could not be measured; see {exp.root}/results.tsv")
        exp.decide()
        exp.log_result(notes="combine: the common base")
        for s in steps:
            if s.commit is not None:
                s.gain = _gain(exp, s.tag, root)
        order = sorted((s for s in steps if s.commit is not None), key=lambda s: -(s.gain or 0.0))
        for s in order:
            _add(exp, base, s)
        result.steps = [*order, *(s for s in steps if s.commit is None)]
        best = exp.state.best or exp.state.incumbent
        if best is not None:
            result.best, result.best_commit = best.metrics, best.commit
        summary = {**asdict(result), "path": str(result.path)}
        (exp.root / STATE_DIR / SUMMARY_FILE).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    finally:
        exp.close()
    return result


def _add(exp: Experiment, base: str, s: Step) -> None:
    assert s.commit is not None
    if s.gain is not None and s.gain <= 0:
        s.status, s.reason = "skipped", "its best does not beat its own baseline"
        return
    merged = _merge(exp, base, s.commit)
    if merged is None:
        s.status = "conflict"
        s.reason = f"its change of {exp.cfg.experiment.target} conflicts with the changes kept before it"
        return
    inc = exp.state.incumbent
    assert inc is not None
    if merged == exp.git.show_file(inc.commit, exp.cfg.experiment.target).decode("utf-8"):
        s.status, s.reason = "skipped", "its change is already in the combination"
        return
    exp.write_target(content=merged)
    exp.commit(f"combine: add lane {s.tag}'s best ({s.commit[:12]}, its gain {s.gain:.6g})")
    status = _run_to_end(exp)
    d = exp.decide()
    s.experiment = d.experiment
    exp.log_result(notes=f"combine: lane {s.tag}")
    if d.status == "keep":
        s.status, s.reason = "kept", d.reason
    elif status != "done":
        s.status, s.reason = "crash", f"the combination with it does not run: {d.reason}"
    else:
        s.status, s.reason = "discarded", f"improves alone but not combined with the changes kept before it: {d.reason}"
