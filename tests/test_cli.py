"""The installed `autoexp-mcp` command, run as a user runs it: a subprocess with its own temp
HOME, its output and exit code checked."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import textwrap
import tomllib
from pathlib import Path

import pytest

from autoexp_mcp.loop import Experiment
from conftest import EXE, GIT_ENV, HARNESS, MakeRepo, baseline, git, harness_config, init_repo, installed_command, play

CLI_TIMEOUT_S = 60.0
DEMO_TIMEOUT_S = 120.0
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

# A harness that prints value.txt verbatim, so each test says exactly what the eval prints.
# "exit N" on the first line makes it exit with code N after printing.
ECHO_HARNESS = textwrap.dedent(
    """\
    import sys
    text = open("value.txt").read()
    print(text, end="")
    first = text.split()
    sys.exit(int(first[1]) if first[:1] == ["exit"] else 0)
    """
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def cli(*args: str, home: Path, cwd: Path | None = None, timeout: float = CLI_TIMEOUT_S, **env: str):
    exe = installed_command()
    full_env = {
        **os.environ,
        "HOME": str(home),
        "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
        # Eval commands say `python`: that must be this interpreter.
        "PATH": os.pathsep.join([str(EXE.parent), os.environ.get("PATH", "")]),
        **env,
    }
    return subprocess.run(
        [exe, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def echo_repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "echo", {"value.txt": "score: 0.5\n", "evaluate.py": ECHO_HARNESS})


def init_echo(repo: Path, home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    base = ["init", "--repo", str(repo), "--target", "value.txt", "--eval", "python evaluate.py"]
    return cli(*base, *extra, home=home)


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repo whose loop ran: baseline 1, then keep 3, discard 2, crash, keep 5. Shared by the
    tests that only read it; copy it (`played_copy`) to change it."""
    home = tmp_path_factory.mktemp("played-home")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**GIT_ENV, "HOME": str(home), "GIT_CONFIG_GLOBAL": str(home / ".gitconfig")}.items():
            mp.setenv(k, v)
        files = {"value.txt": "1\n", "evaluate.py": HARNESS, "autoexp.toml": harness_config()}
        repo = init_repo(tmp_path_factory.mktemp("played") / "repo", files)
        exp = Experiment(repo)
        try:
            baseline(exp)
            for value, expected in [("3", "keep"), ("2", "discard"), ("crash", "crash"), ("5", "keep")]:
                assert play(exp, value)[1] == expected
        finally:
            exp.close()
    return repo


@pytest.fixture
def played_copy(played: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(played, tmp_path / "played", symlinks=True))


# --- init and check ------------------------------------------------------------------------


def test_init_writes_a_config_that_check_accepts(echo_repo: Path, home: Path) -> None:
    res = init_echo(echo_repo, home, "--metric", "score:max")
    assert res.returncode == 0, res.stderr
    assert f"wrote {echo_repo / 'autoexp.toml'}" in res.stdout and "autoexp-mcp check" in res.stdout
    cfg = tomllib.loads((echo_repo / "autoexp.toml").read_text())
    assert cfg["experiment"]["target"] == "value.txt" and cfg["metric"] == [{"name": "score", "direction": "max"}]

    git(echo_repo, "add", "autoexp.toml")
    git(echo_repo, "commit", "-q", "-m", "autoexp config")
    res = cli("check", "--repo", str(echo_repo), home=home)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "metric:  score = 0.5  (max;" in res.stdout
    assert "ok: the server can measure this experiment." in res.stdout


def test_init_refuses_to_overwrite_without_force(echo_repo: Path, home: Path) -> None:
    assert init_echo(echo_repo, home, "--metric", "score").returncode == 0
    res = init_echo(echo_repo, home, "--metric", "loss:min")
    assert res.returncode == 2
    assert "already exists; pass --force to overwrite it" in res.stderr
    assert 'name = "score"' in (echo_repo / "autoexp.toml").read_text()
    res = init_echo(echo_repo, home, "--metric", "loss:min", "--force")
    assert res.returncode == 0, res.stderr
    assert 'name = "loss"' in (echo_repo / "autoexp.toml").read_text()


def test_init_rejects_a_bad_metric_direction_with_exit_code_2(echo_repo: Path, home: Path) -> None:
    res = init_echo(echo_repo, home, "--metric", "score:up")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "autoexp-mcp: error: --metric score:up: the direction after ':' must be max or min; "
        "write it as NAME:max|min, e.g. --metric score:max"
    )
    assert not (echo_repo / "autoexp.toml").exists()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        *[
            (n, "min")
            for n in (
                "val_loss",
                "loss",
                "latency_ms",
                "error_rate",
                "exec_time_ms",
                "decode_time_ms",
                "val_bpb",
                "wer",
                "mse",
                "rmse",
                "mae",
                "perplexity",
                "memory_mb",
                "model_mb",
                "size_bytes",
                "cost_usd",
                "p99LatencyMs",
                "runtime_seconds",
                "errors_per_hour",
                "miss_rate",
                "nll",
            )
        ],
        *[
            (n, "max")
            for n in (
                "accuracy",
                "val_accuracy",
                "top1_acc",
                "f1",
                "f1_score",
                "auc",
                "roc_auc",
                "precision",
                "recall",
                "throughput",
                "qps",
                "reward",
                "bleu",
                "hit_rate",
                "win_rate",
                "score",
                "data_quality",
                "rows_per_sec",
                "tokens_per_second",
                "speedup",
                "pass_rate",
            )
        ],
        *[(n, None) for n in ("compression_ratio", "speed", "x", "loss_reduction", "rows_per_batch", "value")],
    ],
)
def test_direction_is_inferred_only_from_usual_metric_names(name: str, expected: str | None) -> None:
    from autoexp_mcp.metricnames import infer_direction

    found = infer_direction(name)
    assert (found[0] if found else None) == expected, found


@pytest.mark.parametrize(
    ("metric", "direction", "word"),
    [
        ("val_loss", "min", "loss"),
        ("latency_ms", "min", "latency"),
        ("error_rate", "min", "error"),
        ("f1", "max", "f1"),
    ],
)
def test_init_infers_the_direction_from_the_name_and_says_so(
    echo_repo: Path, home: Path, metric: str, direction: str, word: str
) -> None:
    res = init_echo(echo_repo, home, "--metric", metric)
    assert res.returncode == 0, res.stderr
    cfg = tomllib.loads((echo_repo / "autoexp.toml").read_text())
    assert cfg["metric"] == [{"name": metric, "direction": direction}]
    other = "max" if direction == "min" else "min"
    better = "lower" if direction == "min" else "higher"
    assert res.stderr == (
        f'autoexp-mcp: --metric {metric}: direction = "{direction}" ({better} is better), inferred from '
        f"'{word}' in the name; write --metric {metric}:{other} if that is wrong\n"
    )


def test_init_refuses_a_name_it_cannot_read_a_direction_from(echo_repo: Path, home: Path) -> None:
    res = init_echo(echo_repo, home, "--metric", "speed")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "autoexp-mcp: error: --metric speed: cannot tell from the name whether higher or lower is better; "
        "write it as NAME:max|min, e.g. --metric speed:max or --metric speed:min"
    )
    assert not (echo_repo / "autoexp.toml").exists()


def test_init_direction_flag_applies_to_metrics_without_one(echo_repo: Path, home: Path) -> None:
    res = init_echo(echo_repo, home, "--metric", "speed", "--metric", "acc:max", "--direction", "min")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    cfg = tomllib.loads((echo_repo / "autoexp.toml").read_text())
    assert [(m["name"], m["direction"]) for m in cfg["metric"]] == [("speed", "min"), ("acc", "max")]


def test_readme_and_errors_write_the_metric_as_name_max_or_min() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert "--metric NAME:max\\|min" in readme and "--metric val_loss:min" in readme
    assert "NAME[:max" not in readme and "--direction max|min" not in readme


@pytest.mark.parametrize(
    ("output", "eval_cmd", "extra_config", "why"),
    [
        (
            "score: 0.5\n",
            "no-such-command-zz evaluate.py",
            "",
            "FAIL: cannot start the eval command 'no-such-command-zz': command not found.",
        ),
        ("exit 3\nTraceback: boom\n", None, "", "FAIL: the eval exited with code 3 (non-zero counts as a crash)."),
        ("all done, no figures\n", None, "", "FAIL:    score: no line 'score: <number>' in the output"),
        ("score: nan\n", None, "", "FAIL:    score: value is 'nan', not a finite number"),
        ("score: abc\n", None, "", "FAIL:    score: matched 'abc', which is not a number"),
        (
            "score: abc\n",
            None,
            "pattern = '^score:\\s*(\\S+)'\n",
            "FAIL:    score: matched 'abc', which is not a number",
        ),
    ],
    ids=["command-not-found", "non-zero-exit", "no-line-matched", "not-finite", "not-a-number", "pattern-not-a-number"],
)
def test_check_says_exactly_why_the_metric_cannot_be_read(
    echo_repo: Path, home: Path, output: str, eval_cmd: str | None, extra_config: str, why: str
) -> None:
    assert init_echo(echo_repo, home, "--metric", "score").returncode == 0
    config = (echo_repo / "autoexp.toml").read_text()
    if eval_cmd:
        config = config.replace('eval = "python evaluate.py"', f'eval = "{eval_cmd}"')
    config = config.replace('direction = "max"\n', f'direction = "max"\n{extra_config}')
    (echo_repo / "autoexp.toml").write_text(config)
    (echo_repo / "value.txt").write_text(output)
    res = cli("check", "--repo", str(echo_repo), home=home)
    assert res.returncode == 1
    assert why in res.stdout, res.stdout
    assert "ok:" not in res.stdout
    if eval_cmd is None:
        assert f"--- output tail ---\n{output}" in res.stdout


# --- status, report, prompt ------------------------------------------------------------------


def test_status_prints_the_phase_and_the_best_against_the_baseline(played: Path, home: Path) -> None:
    repo = played
    res = cli("status", "--repo", str(repo), home=home)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["phase", "idle"]
    best = next(line for line in lines if line.startswith("best"))
    assert "score 5 at #5" in best and "baseline 1" in best, best
    assert any(line.startswith("runs") and "5" in line for line in lines)
    assert "5 experiments of 50" in res.stdout
    for status in ("keep", "discard", "crash"):
        assert status in res.stdout


def test_status_json_gives_scripts_the_phase_the_best_and_whether_to_stop(played: Path, home: Path) -> None:
    res = cli("status", "--repo", str(played), "--json", "--last", "2", home=home)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["started"], out["tag"], out["phase"]) == (True, "t", "idle")
    assert out["baseline"]["metrics"] == {"score": 1.0} and out["best"]["metrics"] == {"score": 5.0}
    assert out["best"]["experiment"] == 5 and "values" not in out["best"]
    budget = out["budget"]
    assert (budget["experiments_used"], budget["experiments_left"], budget["stop"]) == (5, 45, False)
    assert [row["status"] for row in out["last"]] == ["crash", "keep"]
    assert [row["experiment"] for row in out["last"]] == [4, 5]


def test_status_json_before_any_experiment(make_repo: MakeRepo, home: Path) -> None:
    repo = make_repo()
    res = cli("status", "--repo", str(repo), "--json", home=home)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"started": False, "repo": str(repo)}


def test_status_before_any_experiment_says_how_to_start(make_repo: MakeRepo, home: Path) -> None:
    repo = make_repo()
    res = cli("status", "--repo", str(repo), home=home)
    assert res.returncode == 0
    assert "no experiment has started" in res.stdout and "autoexp-mcp serve" in res.stdout


def test_report_writes_markdown_and_a_progress_chart(played: Path, home: Path) -> None:
    repo = played
    res = cli("report", "--repo", str(repo), home=home)
    assert res.returncode == 0, res.stderr
    out = repo / ".autoexp" / "report"
    md = (out / "report.md").read_text()
    assert f"wrote {out / 'report.md'}" in res.stdout
    assert "**score** (higher is better): 1 → **5**" in md and "Baseline: experiment 1; best: experiment 5" in md
    chart = out / "progress.png"
    if HAS_MATPLOTLIB:
        assert f"wrote {chart}" in res.stdout
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
    else:
        assert not chart.exists() and "matplotlib" in res.stdout


def test_prompt_prints_the_rendered_instructions_for_a_domain(played: Path, home: Path) -> None:
    repo = played
    res = cli("prompt", "--repo", str(repo), "--domain", "sql", home=home)
    assert res.returncode == 0, res.stderr
    assert "${" not in res.stdout
    assert "value.txt" in res.stdout and "autoexp/t" in res.stdout and "score" in res.stdout
    assert "Typical agent moves" in res.stdout
    assert "Best kept" in res.stdout and "#4 crash" in res.stdout
    res = cli("prompt", "--repo", str(repo), "--domain", "no_such_domain", home=home)
    assert res.returncode == 2 and "no prompt template for domain 'no_such_domain'" in res.stderr


# --- install ---------------------------------------------------------------------------------


def test_install_codex_prints_a_toml_snippet_with_absolute_paths(make_repo: MakeRepo, home: Path) -> None:
    repo = make_repo()
    res = cli("install", "--client", "codex", "--repo", str(repo), home=home, cwd=home)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"# codex: {home / '.codex' / 'config.toml'}"
    toml_text = "\n".join(line for line in lines[1:] if not line.startswith("#"))
    entry = tomllib.loads(toml_text)["mcp_servers"]["autoexp"]
    assert entry["command"] == str(EXE) and Path(entry["command"]).is_absolute()
    assert entry["args"] == ["serve", "--repo", str(repo.resolve())]
    assert str(EXE.parent) in entry["env"]["PATH"].split(os.pathsep)
    assert not (home / ".codex" / "config.toml").exists(), "without --write nothing is written"


def test_install_vscode_write_merges_into_the_workspace_mcp_json(make_repo: MakeRepo, home: Path) -> None:
    repo = make_repo()
    existing = {"servers": {"other": {"type": "stdio", "command": "other-server", "args": []}}}
    (repo / ".vscode").mkdir()
    (repo / ".vscode" / "mcp.json").write_text(json.dumps(existing))
    res = cli("install", "--client", "vscode", "--repo", str(repo), "--write", home=home, cwd=home)
    assert res.returncode == 0, res.stderr
    assert f"merged into {repo / '.vscode' / 'mcp.json'}" in res.stdout
    servers = json.loads((repo / ".vscode" / "mcp.json").read_text())["servers"]
    assert servers["other"] == existing["servers"]["other"]
    assert servers["autoexp"]["type"] == "stdio"
    assert servers["autoexp"]["command"] == str(EXE)
    assert servers["autoexp"]["args"] == ["serve", "--repo", str(repo.resolve())]
    assert not list(home.iterdir()), "the workspace config is the repo's, nothing goes to HOME"


# --- demo --------------------------------------------------------------------------------------


def test_demo_runs_the_regex_example_and_says_where_the_results_are(home: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    res = cli("demo", "--experiments", "4", home=home, timeout=DEMO_TIMEOUT_S, TMPDIR=str(tmp))
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line for line in res.stdout.splitlines() if line.lstrip().startswith("#")]
    assert [r.split()[0] for r in rows] == ["#1", "#2", "#3", "#4", "#5"]
    assert [r.split()[2] for r in rows] == ["keep", "keep", "keep", "discard", "keep"]
    tsv_line = next(line for line in res.stdout.splitlines() if line.startswith("results.tsv:"))
    tsv = Path(tsv_line.split(":", 1)[1].strip())
    assert tsv.parent.parent == tmp, "the demo repository is a fresh temp dir"
    assert len(tsv.read_text().splitlines()) == 6
    assert git(tsv.parent, "branch", "--show-current") == "autoexp/regex-f1"


# --- serve ---------------------------------------------------------------------------------------


def test_serve_refuses_a_dirty_tree_and_lists_the_files(make_repo: MakeRepo, home: Path) -> None:
    repo = make_repo(files={"data.csv": "a,b\n"})
    (repo / "evaluate.py").write_text((repo / "evaluate.py").read_text() + "# tweak\n")
    (repo / "data.csv").write_text("a,b\n1,2\n")
    res = cli("serve", "--repo", str(repo), home=home)
    assert res.returncode != 0
    assert "uncommitted changes to tracked files: data.csv, evaluate.py" in res.stderr
    assert res.stdout == "", "stdout belongs to the protocol"
    assert git(repo, "branch", "--show-current") == "main"


def test_serve_from_a_shell_on_a_dirty_tree_says_why_once_in_shell_words(make_repo: MakeRepo, home: Path) -> None:
    repo = make_repo()
    (repo / "evaluate.py").write_text((repo / "evaluate.py").read_text() + "# tweak\n")
    res = cli("serve", "--repo", str(repo), home=home)
    assert res.returncode == 1
    assert res.stderr.count("uncommitted changes to tracked files: evaluate.py") == 1, res.stderr
    assert "Commit or stash them first" in res.stderr and "Then start `autoexp-mcp serve` again." in res.stderr
    assert "tool call" not in res.stderr, res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_serve_with_a_repo_that_is_no_directory_says_so_once(tmp_path: Path, home: Path, kind: str) -> None:
    repo = tmp_path / "nope"
    if kind == "file":
        repo.write_text("")
    res = cli("serve", "--repo", str(repo), home=home)
    assert res.returncode == 1
    what = "no such directory" if kind == "missing" else "not a directory"
    assert res.stderr.count(f"--repo {repo}: {what}") == 1, res.stderr
    assert "not inside a git repository" not in res.stderr


def _new_tag_from_best(repo: Path, home: Path) -> tuple[Path, str]:
    """After tag t reached a kept best, name a new tag on main and serve it from that best."""
    best = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    (repo / "autoexp.toml").write_text((repo / "autoexp.toml").read_text().replace('tag = "t"', 'tag = "next"'))
    git(repo, "commit", "-qam", "a new tag")
    res = cli("serve", "--repo", str(repo), "--from", best, home=home)
    assert res.returncode == 0, res.stderr
    return repo, best


def test_serve_from_a_previous_best_starts_the_new_tag_there(played_copy: Path, home: Path) -> None:
    repo, best = _new_tag_from_best(played_copy, home)
    assert git(repo, "branch", "--show-current") == "autoexp/next"
    assert (repo / "value.txt").read_text() == "5\n"
    assert git(repo, "merge-base", "--is-ancestor", best, "HEAD") == ""
    assert (repo / ".autoexp" / "archive" / "t" / "results.tsv").is_file()
    assert not (repo / "results.tsv").exists()


def test_serve_from_a_previous_best_resumes_the_new_tag_after_a_restart(played_copy: Path, home: Path) -> None:
    repo, _ = _new_tag_from_best(played_copy, home)
    res = cli("serve", "--repo", str(repo), home=home)
    assert res.returncode == 0, res.stderr
    assert git(repo, "branch", "--show-current") == "autoexp/next"
    assert 'tag = "next"' in (repo / "autoexp.toml").read_text()


def test_serve_from_refuses_a_tag_that_already_ran(played_copy: Path, home: Path) -> None:
    repo = played_copy
    head = git(repo, "rev-parse", "HEAD")
    first = git(repo, "rev-list", "--max-parents=0", "HEAD")
    res = cli("serve", "--repo", str(repo), "--from", first, home=home)
    assert res.returncode != 0 and "--from only applies to a new tag" in res.stderr
    assert git(repo, "rev-parse", "HEAD") == head


def test_status_into_a_closed_pipe_prints_no_traceback(played: Path, home: Path) -> None:
    env = {**os.environ, "HOME": str(home), "PATH": os.pathsep.join([str(EXE.parent), os.environ.get("PATH", "")])}
    proc = subprocess.Popen(
        [str(EXE), "status", "--repo", str(played)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the first write, as `| head` is after its lines
    _, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    assert "Traceback" not in err, err


def test_install_offers_exactly_the_clients_it_can_write() -> None:
    """The parser spells the list out (importing clients would slow `serve`'s start): keep them equal."""
    import argparse

    from autoexp_mcp.cli import build_parser
    from autoexp_mcp.clients import CLIENTS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    client = next(a for a in sub.choices["install"]._actions if a.dest == "client")
    assert tuple(client.choices or ()) == CLIENTS
