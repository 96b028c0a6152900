"""Command line: serve, init, check, status, report, prompt, verify, install, demo.

stdout belongs to the MCP protocol under `serve`; everything else may print freely.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import AutoexpError, ConfigError, GitError
from .metricnames import infer_direction

if TYPE_CHECKING:
    from .server import Opener

log = logging.getLogger("autoexp_mcp")


def _repo_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", type=Path, default=None, help="the git repository (default: current directory)")


def _repo(args: argparse.Namespace) -> Path:
    return (args.repo or Path.cwd()).resolve()


# --- serve -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    if args.http is None and (args.token_file or args.no_token or args.allow_host or args.allow_origin):
        raise ConfigError("--token-file, --no-token, --allow-host and --allow-origin go with --http [HOST:]PORT")
    import anyio

    from .server import Opener, build_server
    from .stdio import serve_stdio

    repo, from_commit, accept_git_config = _repo(args), args.from_commit, args.accept_git_config
    tag, focus = args.tag, args.focus
    if focus is not None and tag is None:
        raise ConfigError("--focus goes with --tag NAME: it is the focus line of that lane's prompt")
    from .runner import make_undumpable

    make_undumpable()  # an eval of the same user cannot read our environment or memory
    from .gitops import drop_inherited_git_vars

    drop_inherited_git_vars()  # GIT_DIR, GIT_INDEX_FILE …: not ours to follow, and each costs an `env` per git call

    def open_experiment():  # in a worker thread, while the client's handshake is answered
        from .loop import Experiment

        if not repo.is_dir():
            what = "not a directory" if repo.exists() else "no such directory"
            raise GitError(f"--repo {repo}: {what}; give the path of the repository to experiment on")
        if tag is not None:
            from .lane import open_lane

            exp = open_lane(repo, tag, from_commit=from_commit, focus=focus, accept_git_config=accept_git_config)
        else:
            exp = Experiment(repo, from_commit=from_commit, accept_git_config=accept_git_config)
        log.info("autoexp-mcp %s serving %s on branch %s", __version__, exp.root, exp.cfg.experiment.branch)
        if exp.iso.active:
            log.info("evals run %s", exp.iso.note)
        else:
            log.warning("WARNING: evals run with %s. `autoexp-mcp check` says how to get a sandbox.", exp.iso.note)
        return exp

    opener = Opener(open_experiment)
    if args.http is not None:
        return _serve_http(args, opener)

    def on_term(signum: int, _frame: object) -> None:
        # Kill the eval's process group before going: the default handler would skip cleanup.
        opener.close()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    said = _OpenFailures()
    log.addFilter(said)
    try:
        anyio.run(serve_stdio, build_server(opener, coordinator=args.coordinator))
    finally:
        opener.close()
        log.removeFilter(said)
    if opener.experiment is None and opener.error is not None:  # never opened: say why, exit non-zero
        text = _for_shell(opener.error)
        if text not in said.texts:
            print(f"autoexp-mcp: error: {text}", file=sys.stderr)
        return opener.error.exit_code
    return 0


def _serve_http(args: argparse.Namespace, opener: Opener) -> int:
    """serve --http: open the repository, then serve it over Streamable HTTP until a stop signal."""
    from . import httpauth, httpserve
    from .server import build_server

    host, port = httpserve.parse_bind(args.http)
    if args.no_token and args.token_file:
        raise ConfigError("--no-token and --token-file contradict each other; give one of them")
    httpauth.check_bind(host, None if args.no_token else "")
    token = None if args.no_token else httpauth.load_token(_repo(args), args.token_file, os.environ)
    access = httpauth.Access.build(
        bind_host=host,
        token=token.value if token else None,
        allow_hosts=args.allow_host or (),
        allow_origins=args.allow_origin or (),
    )
    said = _OpenFailures()
    log.addFilter(said)
    try:
        try:
            exp = opener.get()  # before listening: a repository that cannot be opened is an error at start
        except AutoexpError as e:
            text = _for_shell(e)
            if text not in said.texts:
                print(f"autoexp-mcp: error: {text}", file=sys.stderr)
            return e.exit_code
        sock = httpserve.bind_socket(host, port)
        httpserve.serve_http(
            build_server(opener, coordinator=args.coordinator),
            root=exp.root,
            sock=sock,
            bind_host=host,
            access=access,
            token_source=token.source if token else "none",
            on_stop=opener.close,
        )
    finally:
        opener.close()
        log.removeFilter(said)
    return 0


def _for_shell(e: AutoexpError) -> str:
    """An open failure for whoever reads serve's stderr (a person at a shell, or a client's log):
    without the advice meant for the agent, which retries with its next tool call."""
    text = re.sub(r"\s*\([^()]*next tool call[^()]*\)", "", str(e))
    return text if text == str(e) else f"{text} Then start `autoexp-mcp serve` again."


class _OpenFailures(logging.Filter):
    """Rewrites the server's "cannot open the experiment" log lines with `_for_shell` and keeps
    their texts, so that serve's exit does not print the same reason a second time."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], AutoexpError):
            text = _for_shell(args[0])
            record.args = (text,)
            self.texts.add(text)
        return True


# --- init --------------------------------------------------------------------------------


def _metric_spec(spec: str, default_direction: str | None) -> tuple[str, str]:
    name, colon, direction = spec.partition(":")
    fix = f"write it as NAME:max|min, e.g. --metric {name}:max"
    if colon and direction not in ("max", "min"):
        raise ConfigError(f"--metric {spec}: the direction after ':' must be max or min; {fix}")
    if direction or default_direction:
        return name, direction or str(default_direction)
    inferred = infer_direction(name)
    if inferred is None:
        raise ConfigError(
            f"--metric {spec}: cannot tell from the name whether higher or lower is better; "
            f"{fix} or --metric {name}:min"
        )
    direction, word = inferred
    better, other = ("lower", "max") if direction == "min" else ("higher", "min")
    print(
        f'autoexp-mcp: --metric {name}: direction = "{direction}" ({better} is better), inferred from '
        f"'{word}' in the name; write --metric {name}:{other} if that is wrong",
        file=sys.stderr,
    )
    return name, direction


def cmd_init(args: argparse.Namespace) -> int:
    from .config import CONFIG_FILE, starter_config

    repo = _repo(args)
    path = repo / CONFIG_FILE
    if path.exists() and not args.force:
        raise ConfigError(f"{path} already exists; pass --force to overwrite it.")
    metrics = [_metric_spec(m, args.direction) for m in (args.metric or [])]
    if not metrics:
        raise ConfigError("give at least one --metric NAME:max|min (max: higher is better).")
    tag = args.tag or f"{Path(args.target).stem}-{metrics[0][0]}".replace(" ", "-")
    text = starter_config(
        tag=tag,
        target=args.target,
        eval_cmd=args.eval,
        metrics=metrics,  # type: ignore[arg-type]
        timeout=args.timeout,
        max_experiments=args.max_experiments,
        max_hours=args.max_hours,
        max_cost_usd=args.max_cost,
        domain=args.domain,
    )
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    print("next: `autoexp-mcp check` runs the eval once and shows the metrics it reads.")
    return 0


# --- check -------------------------------------------------------------------------------


def _tracked_files(repo: Path) -> list[str]:
    from .errors import GitError
    from .gitops import Git

    try:
        return Git(repo).tracked_files()
    except GitError:
        return []


def _head_or(repo: Path, default: str) -> str:
    from .errors import GitError
    from .gitops import Git

    try:
        return Git(repo).head()
    except GitError:
        return default


def cmd_check(args: argparse.Namespace) -> int:
    from . import executors, guard, runs
    from .config import CONFIG_FILE, load_config
    from .errors import AutoexpError
    from .metrics import describe

    repo = _repo(args)
    cfg = load_config(repo).for_stage(0)
    exp = cfg.experiment
    executor = executors.make(cfg.executor)
    guard.resolve_target(repo, exp.target)
    print(f"config:  {repo / CONFIG_FILE} (tag {exp.tag}, target {exp.target})")
    print(f"eval:    {exp.eval}   (timeout {exp.timeout:g}s, cwd {repo})")
    try:
        iso = runs.isolation(cfg.sandbox)
    except AutoexpError as e:
        print(f"FAIL:    sandbox: {e}")
        return 1
    if iso.active:
        print(f"sandbox: {iso.note}")
    else:
        print(f"sandbox: WARNING: {iso.note}.")
        print(f"         {SANDBOX_HOWTO}")
    from .preflight import problems as preflight_problems

    problems = preflight_problems(repo)
    for problem in problems:
        print(f"FAIL:    {_for_shell(problem)}")
    print(f"runs on: {executor.describe()}")
    try:
        executor.ready()
    except AutoexpError as e:
        print(f"FAIL:    {e}")
        return 1
    # A job on another node writes its log on the shared file system: under .autoexp/, not /tmp.
    logs_in = None if executor.name == "local" else repo / ".autoexp"
    if logs_in is not None:
        logs_in.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="autoexp-check-", dir=logs_in) as tmp:
        plan = runs.RunPlan(
            root=repo,
            cfg=cfg,
            iso=iso,
            argv=exp.argv,
            log_rel="check.log",
            log_root=Path(tmp),
            env=runs.eval_env(cfg, run=0, repeat=0, experiment=0, commit=_head_or(repo, "")),
            timeout=exp.timeout,
            run_id=f"check-{uuid.uuid4().hex[:8]}",
            metric_cfgs=cfg.metric,
            git_dirs=[repo / ".git"],
            python_dirs=runs.python_dirs(_tracked_files(repo)),
        )
        try:
            proc = executor.start(plan, executors.job_name(plan.run_id, "check"), _head_or(repo, "HEAD"))
            proc.wait()
            out = proc.outcome
            assert out is not None
            ex = plan.extract(out)
        except AutoexpError as e:
            print(f"FAIL: {e}")
            return 1
        finally:
            plan.close()
        tail = proc.tail(1200)
    job = executors.facts(proc)
    if job is not None:
        print(f"job:     {job.executor} job {job.job_id} on {job.node or '?'}, {job.queue_wait_s:.2f}s in the queue")
    print(f"ran:     {out.elapsed_s:.2f}s, exit code {out.returncode}, {out.output_bytes} bytes of output")
    if out.status == "timeout":
        print(f"FAIL: the eval ran past the timeout of {exp.timeout:g}s and was killed.\n--- output tail ---\n{tail}")
        return 1
    if out.status == "crash":
        print(f"FAIL: {out.error or f'the eval exited with code {out.returncode}'} (non-zero counts as a crash).")
        print(f"--- output tail ---\n{tail}")
        return 1
    for m in cfg.metric:
        if m.name in ex.values:
            print(f"metric:  {m.name} = {ex.values[m.name]:.6g}  ({m.direction}; {describe(m)})")
        else:
            print(f"FAIL:    {m.name}: {ex.errors[m.name]}  (expected {describe(m)})")
    if not ex.ok:
        print(f"--- output tail ---\n{tail}")
        return 1
    if problems:
        print("The eval works, but `serve` will refuse to start until the problems above are fixed.")
        return 1
    print("ok: the server can measure this experiment.")
    return 0


SANDBOX_HOWTO = (
    "To sandbox evals, install bubblewrap (Debian/Ubuntu: apt install bubblewrap; Fedora: dnf install "
    "bubblewrap). In a container without user namespaces, run the server outside it or give the container "
    'user namespaces. To run without one knowingly, set [sandbox] mode = "none".'
)


# --- status, report, prompt, verify ---------------------------------------------------------


def _records(repo: Path):
    from .config import load_config
    from .ledger import Ledger

    cfg = load_config(repo)
    return cfg, list(Ledger(repo, cfg.ledger_metric_names).records())


def cmd_status_all(repo: Path) -> int:
    """One line per lane (and the checkout's own experiment): best, experiments, state."""
    from .lane import LaneInfo, lane_state, list_lanes, main_root
    from .preflight import lock_holder
    from .state import load_state

    root = main_root(repo)
    rows: list[tuple[str, Path]] = [("(checkout)", root)] if load_state(root) is not None else []
    lanes: list[LaneInfo] = list_lanes(root)
    rows += [(info.tag, info.path) for info in lanes]
    if not rows:
        print(f"no experiment or lane in {root} yet (start one: autoexp-mcp serve --tag NAME).")
        return 0
    print(f"{'lane':<24} {'best':<28} {'exps':>5}  state")
    for tag, path in rows:
        st = lane_state(next(i for i in lanes if i.tag == tag)) if tag != "(checkout)" else load_state(path)
        if st is None:
            print(f"{tag:<24} {'-':<28} {0:>5}  not started")
            continue
        best = st.best or st.baseline
        shown = " ".join(f"{k}={v:.6g}" for k, v in best.metrics.items()) + f" @{best.commit[:7]}" if best else "-"
        running = "server running" if lock_holder(path) is not None else "no server"
        print(f"{tag:<24} {shown:<28} {st.experiments:>5}  {st.phase}, {running}")
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    from .combine import combine

    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    result = combine(_repo(args), tags, into=args.into)
    for s in result.steps:
        gain = f"gain {s.gain:+.6g}" if s.gain is not None else "no gain"
        print(f"{s.tag:<24} {s.status:<10} {gain:<16} {s.reason}")
    best = " ".join(f"{k}={v:.6g}" for k, v in (result.best or {}).items())
    print(f"combination: lane {result.into} at {result.path} (branch autoexp/{result.into}); best {best}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from . import budget, report
    from .state import load_state

    repo = _repo(args)
    if args.all:
        return cmd_status_all(repo)
    cfg, records = _records(repo)
    st = load_state(repo)
    if st is None:
        if args.json:
            print(json.dumps({"started": False, "repo": str(repo)}))
        else:
            print(f"no experiment has started in {repo} yet (start the server: autoexp-mcp serve).")
        return 0
    import time

    from .httpserve import describe_server, server_status

    stage_cfg = cfg.for_stage(st.stage)
    view = budget.view_of(st, stage_cfg.budget, time.time())
    server = server_status(repo)  # which server holds the repository, and for HTTP where
    if args.json:  # for scripts: e.g. a headless loop that relaunches the agent until stop is true
        points = {name: getattr(st, name) for name in ("baseline", "best", "incumbent")}
        out = {
            "started": True,
            "repo": str(repo),
            "tag": st.tag,
            "branch": st.branch,
            "phase": str(st.phase),
            "stage": st.stage,
            **{name: p.model_dump(mode="json", exclude={"values"}) if p else None for name, p in points.items()},
            "budget": dataclasses.asdict(view),
            "last": [r.model_dump(mode="json") for r in records[-args.last :]] if args.last > 0 else [],
            "server": server,
        }
        print(json.dumps(out, indent=1))
        return 0
    line = (
        f"{view.experiments_used} experiments"
        + (f" of {stage_cfg.budget.max_experiments}" if stage_cfg.budget.max_experiments else "")
        + f", ${view.cost_usd:.2f}, {view.hours_used:.2f} h"
        + (f" — STOP: {view.reason}" if view.stop else "")
    )
    print(report.status_table(records, stage_cfg, phase=str(st.phase), budget_line=line, last=args.last))
    print(describe_server(server))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from . import report
    from .config import load_config

    repo = _repo(args)
    cfg = load_config(repo)
    if args.against and args.lanes:
        raise ConfigError("give --against TAG or --lanes, not both: one compares two runs, the other every lane")
    if args.against:
        from .report.compare import write_comparison

        comparison = write_comparison(repo, cfg, args.against, args.out)
        print(comparison.table)
        for p in (comparison.markdown, comparison.chart):
            if p is not None:
                print(f"wrote {p}")
        if comparison.note:
            print(comparison.note)
        return 0
    if args.lanes:
        return _report_lanes(repo, args.out)
    paths = report.write_report(repo, cfg, args.out)
    for p in (paths.markdown, paths.chart):
        if p is not None:
            print(f"wrote {p}")
    if paths.chart is None and paths.note:
        print(paths.note)
    from .lane import list_lanes

    if list_lanes(repo):  # the main checkout (a lane's worktree has no lanes under it): its lanes too
        try:
            return _report_lanes(repo, args.out)
        except ConfigError as e:  # no lane has logged yet: the checkout's own report stands
            print(f"no lanes report: {e}")
    return 0


def _report_lanes(repo: Path, out: Path | None) -> int:
    """lanes.md and lanes.png for every lane of the repository (from any of its checkouts)."""
    from .config import load_config
    from .lane import main_root
    from .report.lanes import write_lanes_report

    root = main_root(repo)
    lanes = write_lanes_report(root, load_config(root), out)
    print(lanes.table)
    for p in (lanes.markdown, lanes.chart):
        if p is not None:
            print(f"wrote {p}")
    if lanes.note:
        print(lanes.note)
    return 0


def cmd_prompt(args: argparse.Namespace) -> int:
    from . import prompting
    from .state import load_state

    repo = _repo(args)
    cfg, records = _records(repo)
    st = load_state(repo)
    stage = st.stage if st is not None else 0
    print(prompting.render_current(cfg, stage, records[-200:], root=repo, domain=args.domain), end="")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .lane import list_lanes
    from .verify import verify

    repo = _repo(args)
    lanes = list_lanes(repo)
    top = (repo / "experiments.jsonl").exists() or not lanes
    checks: list[tuple[str, Path, str | None]] = [("", repo, None)] if top else []
    checks += [(f"lane {info.tag}: ", info.path, info.tag) for info in lanes]
    failed = False
    for label, path, tag in checks:
        problems = verify(path, tag=tag)
        failed = failed or bool(problems)
        for p in problems:
            print(f"FAIL: {label}{p}")
        if not problems and label:
            print(f"ok: {label}the ledger chain, results.tsv and every kept commit check out.")
    if failed:
        return 1
    print("ok: the ledger chain, results.tsv and every kept commit check out.")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    import shutil

    from . import clients

    repo = _repo(args)
    exe_found = shutil.which("autoexp-mcp")
    exe = Path(exe_found) if exe_found else Path(sys.argv[0]).absolute()
    snip = clients.snippet(args.client, repo=repo, exe=exe, home=Path.home(), name=args.name, url=args.http)
    print(f"# {args.client}: {snip.config_path}")
    print(snip.text)
    if snip.command_line:
        print(f"# or run:\n{snip.command_line}")
    if snip.notes:
        print(f"# {snip.notes}")
    if args.write:
        backup = clients.write_config(snip, name=args.name)
        print(f"merged into {snip.config_path}" + (f" (backup: {backup})" if backup else ""))
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    import anyio

    from .agent import drive, load_strategy, serve_params

    repo = _repo(args)
    strategy = load_strategy(args.strategy, seed=args.seed)
    print(f"agent: {strategy.search} search, seed {strategy.seed}, on {repo}")
    report = anyio.run(lambda: drive(serve_params(repo, args.from_commit), strategy, max_experiments=args.experiments))
    counts = ", ".join(f"{n} {k}" for k, n in report.counts.items())
    best = " ".join(f"{k}={v:.6g}" for k, v in (report.best or {}).items() if v is not None) or "none kept"
    print(f"stopped: {report.stopped}\n{report.experiments} experiments ({counts}); best: {best}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(experiments=args.experiments, keep=args.keep)


# --- main ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="autoexp-mcp",
        description="An MCP server that runs a guarded modify-run-measure-keep/revert loop for a coding agent.",
    )
    ap.add_argument("--version", action="version", version=f"autoexp-mcp {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging (to stderr)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the MCP server (over stdio, or Streamable HTTP with --http)")
    _repo_arg(p)
    p.add_argument("--from", dest="from_commit", default=None, help="start a new tag from this commit")
    p.add_argument(
        "--tag",
        default=None,
        help="run lane NAME (overrides the config's tag) in its own worktree .autoexp/lanes/NAME on autoexp/NAME; "
        "several lanes' servers may run at once on one repository",
    )
    p.add_argument("--focus", default=None, help="with --tag: one line for the lane's prompt (what to work on)")
    p.add_argument(
        "--accept-git-config",
        action="store_true",
        help="accept .git/config or .git/info/attributes changes made since the last server ran",
    )
    p.add_argument(
        "--coordinator",
        action="store_true",
        help="also serve the combine tool, for an agent that merges lanes (other agents do not see it)",
    )
    p.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        default=None,
        help="serve over Streamable HTTP at http://HOST:PORT/mcp (HOST defaults to 127.0.0.1; port 0: any free port)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="the bearer token clients must send (default: $AUTOEXP_HTTP_TOKEN, else a file made on first start "
        "next to the autoexp-mcp key)",
    )
    p.add_argument("--no-token", action="store_true", help="accept requests without a token (loopback only)")
    p.add_argument("--allow-host", action="append", metavar="NAME", help="also accept this Host name; repeatable")
    p.add_argument("--allow-origin", action="append", metavar="ORIGIN", help="also accept this Origin; repeatable")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("init", help="write a starter autoexp.toml")
    _repo_arg(p)
    p.add_argument("--target", required=True, help="the one file the agent may edit")
    p.add_argument("--eval", required=True, help="the eval command (run without a shell)")
    p.add_argument(
        "--metric",
        action="append",
        help="NAME:max|min (max: higher is better); for usual names (val_loss, accuracy…) the direction "
        "may be left out and is inferred; repeatable",
    )
    p.add_argument(
        "--direction", choices=("max", "min"), default=None, help="the direction of every --metric given without one"
    )
    p.add_argument("--tag", default=None, help="branch autoexp/<tag> (default: from target and metric)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per eval run")
    p.add_argument("--max-experiments", type=int, default=100)
    p.add_argument("--max-hours", type=float, default=None)
    p.add_argument("--max-cost", type=float, default=None, help="USD")
    p.add_argument("--domain", default="generic", help="prompt template (see prompts/domains)")
    p.add_argument("--force", action="store_true", help="overwrite an existing autoexp.toml")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("check", help="run the eval once on the current tree and show the metrics read")
    _repo_arg(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("status", help="phase, best vs baseline, last rows, budget used")
    _repo_arg(p)
    p.add_argument("--last", type=int, default=10, help="how many recent rows to show")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object (for scripts)")
    p.add_argument("--all", action="store_true", help="one line per lane: best, experiments, state")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("combine", help="merge lanes' best changes greedily, keeping each only if it still improves")
    _repo_arg(p)
    p.add_argument("--tags", required=True, help="the lanes to combine, comma-separated: a,b,c")
    p.add_argument("--into", default="combined", help="the new lane that holds the combination (default combined)")
    p.set_defaults(func=cmd_combine)

    p = sub.add_parser("report", help="write report.md and progress.png (and lanes.md, lanes.png when there are lanes)")
    _repo_arg(p)
    p.add_argument("--out", type=Path, default=None, help="output directory (default .autoexp/report)")
    p.add_argument(
        "--against",
        default=None,
        metavar="TAG",
        help="compare with another run instead: a tag archived here, or the path of another repository, lane or "
        "experiments.jsonl (one chart and one table: best over experiments and over wall time)",
    )
    p.add_argument(
        "--lanes",
        action="store_true",
        help="only lanes.md and lanes.png: every lane's best so far on one chart, combinations marked "
        "(the main checkout's plain report writes them too when it has lanes)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("prompt", help="print the rendered agent instructions")
    _repo_arg(p)
    p.add_argument("--domain", default=None, help="override [experiment].domain")
    p.set_defaults(func=cmd_prompt)

    p = sub.add_parser("verify", help="check the ledger's hash chain, results.tsv and kept commits")
    _repo_arg(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("install", help="register the server in an MCP client")
    _repo_arg(p)
    p.add_argument(
        "--client",
        required=True,
        choices=("claude-code", "claude-desktop", "codex", "cursor", "vscode", "gemini"),
    )
    p.add_argument("--write", action="store_true", help="merge the entry into the client's config file")
    p.add_argument("--name", default="autoexp", help="server name in the client")
    p.add_argument(
        "--http",
        metavar="URL",
        default=None,
        help="connect to a server started with `serve --http` at URL (the token comes from $AUTOEXP_HTTP_TOKEN)",
    )
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("agent", help="run the built-in agent (no model): coordinate or random search over numbers")
    _repo_arg(p)
    p.add_argument(
        "--strategy",
        default=None,
        help="coordinate (default), random, or a strategy file (YAML, TOML or JSON: search, seed, step, keys, bounds)",
    )
    p.add_argument("--seed", type=int, default=None, help="the random seed (overrides the strategy file's)")
    p.add_argument(
        "--experiments", type=int, default=None, help="stop after this many experiments (default: the server's budget)"
    )
    p.add_argument("--from", dest="from_commit", default=None, help="start a new tag from this commit (serve --from)")
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("demo", help="run the regex example with a scripted agent over real MCP")
    p.add_argument("--experiments", type=int, default=12, help="how many experiments after the baseline")
    p.add_argument("--keep", type=Path, default=None, help="where to create the demo repo (default: a new temp dir)")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="autoexp-mcp: %(levelname)s %(message)s",
    )
    try:
        rc = int(args.func(args))
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        # `autoexp-mcp status | head`: the reader left; quietly stop writing (like a shell tool).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except AutoexpError as e:
        print(f"autoexp-mcp: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
