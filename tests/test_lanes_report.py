"""lanes.md and lanes.png: every lane's best so far on one chart, the combination marked.

The lanes are real: worktrees made by lane.py, experiments run through Experiment with the
eval, the combination made by combine.py.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoexp_mcp import cli, lane
from autoexp_mcp.combine import combine
from autoexp_mcp.config import load_config
from autoexp_mcp.report import CHART_DPI
from autoexp_mcp.report.lanes import LANES_MD, LANES_PNG, build_lanes_figure, load_lanes, write_lanes_report
from conftest import GIT_ENV, HARNESS, baseline, harness_config, init_repo
from test_report import _NO_MATPLOTLIB, SUBPROCESS_TIMEOUT_S, _extent, _overlap, _png_size, _renderer, _texts

# value.txt holds "key number" lines, kept apart by "-" lines so that each lane's key merges
# cleanly; the score is their sum.
KEYED_HARNESS = """\
v = {}
for line in open("value.txt"):
    k, x = line.split()
    v[k] = float(x)
print(f"score: {sum(x for k, x in v.items() if k != '-')}")
"""
KEYS = "abcd"
BASE = "".join(f"{k} 0\n- 0\n" for k in KEYS)
# Each lane's tries for its key, one experiment each (kept only when better than its best so far).
TRIES = {"a": [1.0, 0.5, 2.0], "b": [0.5, 1.5], "c": [3.0, 2.0, 2.5, 3.5], "d": [-1.0, 0.25]}


def run_lane(repo: Path, tag: str, focus: str) -> None:
    exp = lane.open_lane(repo, tag, focus=focus)
    try:
        baseline(exp)
        for x in TRIES[tag]:
            exp.write_target(content=BASE.replace(f"{tag} 0", f"{tag} {x}"))
            exp.commit(f"{tag} = {x}")
            assert exp.run_eval(30).status == "done"
            exp.decide()
            exp.log_result()
    finally:
        exp.close()


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Path]]:
    """Two repositories: lanes a, b and their combination; lanes a-d and theirs."""
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("home")
        for k, v in GIT_ENV.items():
            mp.setenv(k, v)
        mp.setenv("HOME", str(home))
        mp.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
        out = {}
        for n in (2, 4):
            files = {"value.txt": BASE, "evaluate.py": KEYED_HARNESS, "autoexp.toml": harness_config(sandbox="none")}
            repo = init_repo(tmp_path_factory.mktemp(f"lanes{n}") / "repo", files)
            tags = list(KEYS[:n])
            for tag in tags:
                run_lane(repo, tag, focus=f"tune key {tag} only")
            combine(repo, tags, into="all")
            out[n] = repo
        yield out


def _figure(repo: Path) -> Any:
    cfg = load_config(repo)
    runs = load_lanes(repo, cfg.objective)
    fig = build_lanes_figure(runs, cfg.objective, "lanes")
    fig.savefig(io.BytesIO(), format="png", dpi=CHART_DPI)  # as write_lanes_report does
    return fig


def _lines(fig: Any) -> dict[str, Any]:
    """The best-so-far lines by their lane's tag."""
    (ax,) = (ax for ax in fig.axes if ax.get_label() == "lanes")
    return {line.get_label().split(":")[0].removesuffix(" (combined)"): line for line in ax.get_lines()
            if line.get_gid() in ("lane", "combined")}  # fmt: skip


@pytest.mark.parametrize("n", [2, 4])
def test_the_chart_has_one_line_per_lane_and_marks_the_combination(repos: dict[int, Path], n: int) -> None:
    pytest.importorskip("matplotlib")
    lines = _lines(_figure(repos[n]))
    assert sorted(lines) == sorted([*KEYS[:n], "all"])
    assert [t for t, line in lines.items() if line.get_gid() == "combined"] == ["all"]
    combined = lines["all"]
    others = [line for t, line in lines.items() if t != "all"]
    assert combined.get_linestyle() == "--" and all(line.get_linestyle() == "-" for line in others)
    assert all(combined.get_linewidth() > line.get_linewidth() for line in others)
    colors = [line.get_color() for line in lines.values()]
    assert len(set(colors)) == len(colors), "every lane has a colour of its own"


@pytest.mark.parametrize("n", [2, 4])
def test_each_line_is_its_lanes_running_best_and_ends_at_its_best(repos: dict[int, Path], n: int) -> None:
    pytest.importorskip("matplotlib")
    lines = _lines(_figure(repos[n]))
    for tag in KEYS[:n]:
        steps = [0.0]
        for x in TRIES[tag]:
            steps.append(max(steps[-1], x))
        xs, ys = (list(map(float, v)) for v in lines[tag].get_data())
        assert (xs, ys) == ([float(i) for i in range(1, len(steps) + 1)], steps)
        state = lane.lane_state(lane.read_info(repos[n], tag))
        assert state is not None and state.best is not None and ys[-1] == state.best.metrics["score"]
    # The combination: the base (0), then every lane's best added (each one improves).
    assert float(lines["all"].get_data()[1][-1]) == sum(max(TRIES[t]) for t in KEYS[:n])


@pytest.mark.parametrize("n", [2, 4])
def test_no_text_of_the_lanes_chart_overlaps_another_or_leaves_the_figure(repos: dict[int, Path], n: int) -> None:
    pytest.importorskip("matplotlib")
    fig = _figure(repos[n])
    renderer = _renderer(fig)
    boxes = [(t.get_text(), _extent(t, renderer)) for t in _texts(fig) + list(fig.legends[0].get_texts())]
    assert len(boxes) > n + 2
    for text, (x0, y0, x1, y1) in boxes:
        assert x0 >= -0.5 and y0 >= -0.5 and x1 <= fig.bbox.x1 + 0.5 and y1 <= fig.bbox.y1 + 0.5, text
    clashes = [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1 :] if _overlap(ba, bb)]
    assert clashes == []
    (ax,) = fig.axes
    legend = fig.legends[0].get_window_extent(renderer)
    assert legend.y1 <= ax.get_window_extent(renderer).y0, "the legend sits under the plot"


def test_lanes_md_has_a_row_per_lane_and_what_the_combination_did(repos: dict[int, Path], tmp_path: Path) -> None:
    repo = repos[4]
    out = write_lanes_report(repo, load_config(repo), tmp_path)
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in out.table.splitlines()
            if r.startswith("| ") and r.count("|") == 7}  # fmt: skip
    assert rows["c"] == ["tune key c only", "5", "0", "3.5", "+3.5"]
    assert rows["d"] == ["tune key d only", "3", "0", "0.25", "+0.25"]
    assert rows["all"][0] == "**combination of c, a, b, d**" and rows["all"][3:] == ["7.25", "+7.25"]
    steps = [r.split("|")[1:3] for r in out.table.split("Combination **all**")[1].splitlines() if r.startswith("| ")]
    assert [(t.strip(), s.strip()) for t, s in steps[1:]] == [(t, "kept") for t in "cabd"]
    assert out.markdown == tmp_path / LANES_MD and f"![lanes]({LANES_PNG})" in out.markdown.read_text()
    if out.chart is not None:
        assert out.chart == tmp_path / LANES_PNG and _png_size(out.chart)[0] > 1000


def test_report_in_the_main_checkout_writes_the_lanes_report_too(repos: dict[int, Path], capsys: Any) -> None:
    repo = repos[2]
    assert cli.main(["report", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {repo / '.autoexp/report/lanes.md'}" in out and "| all |" in out
    # From a lane's worktree, --lanes reports every lane of the repository (into the main checkout).
    (repo / ".autoexp/report/lanes.md").unlink()
    assert cli.main(["report", "--lanes", "--repo", str(repo / ".autoexp/lanes/a")]) == 0
    assert (repo / ".autoexp/report/lanes.md").is_file()
    # A lane's plain report is its own only.
    assert cli.main(["report", "--repo", str(repo / ".autoexp/lanes/a"), "--out", str(repo / "a-report")]) == 0
    assert sorted(p.name for p in (repo / "a-report").iterdir()) == ["progress.png", "report.md"]


def test_report_lanes_without_lanes_says_how_to_start_one(tmp_path: Path, capsys: Any) -> None:
    files = {"value.txt": "1\n", "evaluate.py": HARNESS, "autoexp.toml": harness_config(sandbox="none")}
    repo = init_repo(tmp_path / "repo", files)
    assert cli.main(["report", "--lanes", "--repo", str(repo)]) != 0
    assert "serve --tag NAME" in capsys.readouterr().err


def test_without_matplotlib_lanes_md_is_written_with_the_install_hint(repos: dict[int, Path], tmp_path: Path) -> None:
    script = _NO_MATPLOTLIB.split("from autoexp_mcp import report")[0] + (
        "from autoexp_mcp.cli import main\n"
        "sys.exit(main(['report', '--lanes', '--repo', sys.argv[1], '--out', sys.argv[2]]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(repos[2]), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / LANES_MD).read_text()
    assert "*No chart: matplotlib is not installed" in md and "pip install 'autoexp-mcp[chart]'" in md
    assert "| all |" in md and not (tmp_path / LANES_PNG).exists()
