"""One eval run as the server starts it: where it runs (the sandbox), what it sees (its
environment, the paths hidden from it), and what the server reads back afterwards (the output
bytes it received, the metric channel, metric files read once).

The target's own code runs inside the eval, so nothing the eval could have written is trusted:
under bubblewrap the repository is read-only and `.git`, `.autoexp/`, the ledger, the hold-out
files and the server's key are invisible; without it, metric files are read once, right after
the run, without following symlinks, and only if this run wrote them.

Python bytecode: no eval writes any (PYTHONDONTWRITEBYTECODE), and the interpreter's own
caches are used as they are. In the sandbox the eval can write only its private /tmp and the
writable dirs, which may hold no Python code and must not become a package (preflight.py,
`remove_packages_left`). Without the sandbox an earlier run could have left bytecode beside
the repository's Python files (an unchecked hash-based .pyc is loaded whatever the source
says): it is removed before each run (`remove_bytecode`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import auth, fsafe, metrics
from .config import DEFAULT_ENV_ALLOWLIST, Config, MetricConfig, SandboxConfig
from .errors import EvalError
from .runner import EvalProcess, RunOutcome, RunSpec, build_env

LEDGER_FILES = ("results.tsv", "experiments.jsonl")
STATE_DIR = ".autoexp"


@dataclass(frozen=True)
class Isolation:
    """Whether evals run sandboxed, and the words that say so to the user and the agent."""

    active: bool
    note: str

    @property
    def label(self) -> str:
        return "bwrap" if self.active else "none"


def isolation(cfg: SandboxConfig) -> Isolation:
    """The isolation `cfg` asks for and this machine gives. Raises SandboxError when
    `mode = "bwrap"` and bubblewrap cannot run here."""
    from . import sandbox  # only where a sandbox is wanted

    if cfg.mode == "none":
        return Isolation(False, 'no sandbox ([sandbox] mode = "none"): the eval can reach all the server can')
    avail = sandbox.available()
    if avail.ok:
        return Isolation(True, f"sandboxed with {avail.detail}")
    if cfg.mode == "bwrap":
        raise sandbox.SandboxError(
            f'[sandbox] mode = "bwrap" but bubblewrap cannot run here: {avail.detail}. '
            'Fix that, or set mode = "auto" to run without a sandbox.'
        )
    return Isolation(False, f"no sandbox: {avail.detail}")


def eval_env(cfg: Config, *, run: int, repeat: int, experiment: int, commit: str) -> dict[str, str]:
    """The eval's environment, the same for the server's runs and `autoexp-mcp check`:
    allowlisted variables, the run's identity, and no Python bytecode written."""
    extra = {
        "AUTOEXP_RUN": str(run),
        "AUTOEXP_REPEAT": str(repeat),
        "AUTOEXP_REPEATS": str(cfg.policy.repeats),
        "AUTOEXP_EXPERIMENT": str(experiment),
        "AUTOEXP_COMMIT": commit,
        "AUTOEXP_TAG": cfg.experiment.tag,
        "AUTOEXP_TARGET": cfg.experiment.target,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return build_env([*DEFAULT_ENV_ALLOWLIST, *cfg.experiment.env], extra)


def holdout_paths(root: Path, cfg: Config) -> list[Path]:
    """The hold-out's script and data: `[holdout].files`, and every word of its command that
    names something in the repository, except what the visible eval's command names too (a
    harness that serves both, `python evaluate.py --holdout`) and the target."""
    hold = cfg.holdout
    if hold is None:
        return []
    shared = {os.path.normpath(root / w) for w in (*cfg.experiment.argv, cfg.experiment.target)}
    found: list[Path] = []
    for g in hold.files:
        found += (Path(p) for p in glob.glob(str(root / g), recursive=True))
    for word in hold.argv[1:]:
        p = (root / word) if not os.path.isabs(word) else Path(word)
        with contextlib.suppress(OSError, ValueError):
            if os.path.normpath(p) not in shared and p.exists() and p.resolve().is_relative_to(root):
                found.append(p)
    return found


def packages_in_writable(root: Path, cfg: Config) -> list[str]:
    """What makes a writable dir a Python package (`__init__.py`, its bytecode or an extension
    module), repo-relative: a later run's `import out` (or of a module of the dir's name beside
    it, `data.py` for `data/`) would load it instead."""
    found: list[str] = []
    for w in cfg.sandbox.writable:
        with contextlib.suppress(OSError):  # not there (yet), or not a directory: the sandbox says so
            found += sorted(f"{w}/{n}" for n in os.listdir(root / w) if n.startswith("__init__"))
    return found


def remove_packages_left(root: Path, cfg: Config) -> list[str]:
    """What a sandboxed run left of `packages_in_writable`: removed; returns the paths."""
    found = packages_in_writable(root, cfg)
    for rel in found:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return found


def python_dirs(paths: Iterable[str]) -> tuple[str, ...]:
    """The directories (repo-relative, "" for the root) holding the Python files among `paths`."""
    return tuple(sorted({os.path.dirname(p) for p in paths if p.endswith(".py")}))


def remove_bytecode(root: Path, dirs: Iterable[str]) -> int:
    """Empty the __pycache__ dirs in `dirs` (python_dirs: those beside the repository's tracked
    Python files), never through a symlink, and remove anything else standing there under that name (a link
    to bytecode elsewhere); returns how many entries went. No run of the server writes
    bytecode, so what is there was left by hand or by an earlier unsandboxed run."""
    removed = 0
    for d in dirs:
        try:
            if d:
                parent = fsafe.open_beneath(root, d, os.O_RDONLY | os.O_DIRECTORY)
            else:
                parent = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:  # gone, or not a real directory: the harness watch says so
            continue
        try:
            removed += _empty_pycache(parent)
        finally:
            os.close(parent)
    return removed


def _empty_pycache(parent: int) -> int:
    try:
        st = os.lstat("__pycache__", dir_fd=parent)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        os.unlink("__pycache__", dir_fd=parent)
        return 1
    fd = os.open("__pycache__", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    removed = 0
    try:
        for entry in os.listdir(fd):
            with contextlib.suppress(OSError):  # a directory in there: Python never reads one
                os.unlink(entry, dir_fd=fd)
                removed += 1
    finally:
        os.close(fd)
    return removed


@dataclass
class RunPlan:
    """One run: built before it starts, read back after it ends. `close()` removes its
    scratch directory."""

    root: Path
    cfg: Config
    iso: Isolation
    argv: Sequence[str]
    log_rel: str  # under root, e.g. .autoexp/runs/3.log
    env: Mapping[str, str]
    timeout: float
    run_id: str
    metric_cfgs: Sequence[MetricConfig]
    git_dirs: Sequence[Path] = ()
    holdout: bool = False  # the hold-out run: its own files stay visible
    log_root: Path | None = None  # where log_rel lives (default: root)
    cover: tuple[Path, ...] = ()  # sandbox.Plan.cover: dirs around the root the eval must not see
    python_dirs: Sequence[str] = ()  # where the repository's tracked Python files are: see remove_bytecode
    _scratch: Path | None = None
    _binds: dict[str, Path] = field(default_factory=dict)  # metric file -> server-owned copy bound at it
    _before: dict[str, tuple[int, int, int] | None] = field(default_factory=dict)

    def hidden(self) -> list[Path]:
        """What the eval must not see: `.git`, `.autoexp/`, the ledger, the hold-out's files
        (but in the hold-out run) and the key."""
        hidden = [*self.git_dirs, self.root / STATE_DIR, *(self.root / f for f in LEDGER_FILES)]
        hidden += (self.root / h for h in self.cfg.sandbox.hide)
        if not self.holdout:
            hidden += holdout_paths(self.root, self.cfg)
        hidden.append(auth.key_dir())  # the key that signs what a restart trusts
        return hidden

    def _metric_files(self) -> list[str]:
        return [m.file for m in self.metric_cfgs if m.file]

    def start(self) -> EvalProcess:
        return EvalProcess(self.prepare())

    def prepare(self, scratch_at: Path | None = None) -> RunSpec:
        """Everything the run needs, made ready: the sandbox's command line, the metric file
        binds and the fresh log file. `scratch_at` names the run's scratch directory, made new
        (default: a fresh one in the system's temp dir, made only when the run needs one; a job
        on another node needs it on a shared file system, where a restarted server finds it
        again by the job's name)."""
        if scratch_at is not None:
            scratch_at.parent.mkdir(parents=True, exist_ok=True)
            scratch_at.mkdir(mode=0o700)
            self._scratch = scratch_at
        env = dict(self.env)
        if "PYTHONPYCACHEPREFIX" in env:  # allowlisted: bytecode there is beyond remove_bytecode's reach
            env["PYTHONPYCACHEPREFIX"] = str(self._scratch_dir() / "pycache")  # empty: nothing is read
        argv: Sequence[str] = self.argv
        _check_command(self.argv, self.root, env.get("PATH"))
        if self.iso.active:
            from . import sandbox

            writable = tuple(self.root / w for w in self.cfg.sandbox.writable)
            files: list[tuple[Path, Path]] = []
            for rel in self._metric_files():
                if any((self.root / rel).is_relative_to(w) for w in writable):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.root / rel)  # whatever is there after the run, this run wrote
                    continue
                copy = self._scratch_dir() / f"metric-{len(files)}"
                copy.touch(mode=0o600)
                dest = self.root / rel
                if not dest.exists():
                    os.close(fsafe.create_beneath(self.root, rel))  # the mount point
                self._binds[rel] = copy
                files.append((copy, dest))
            plan = sandbox.Plan(
                keep=tuple(_needed_under_replaced(self.argv, env, (sandbox.PRIVATE_TMP, Path("/run")))),
                root=self.root,
                writable=writable,
                hidden=tuple(self.hidden()),
                files=tuple(files),
                network=self.cfg.sandbox.network,
                devices=self.cfg.sandbox.devices,
                cover=self.cover,
            )
            sandbox.prepare(plan)
            argv = sandbox.wrap(plan, list(self.argv))
        else:
            remove_bytecode(self.root, self.python_dirs)
            self._before = {rel: _stat_sig(self.root / rel) for rel in self._metric_files()}
        log_root = self.log_root or self.root
        log_fd = fsafe.create_beneath(log_root, self.log_rel)
        return RunSpec(
            argv=argv,
            cwd=self.root,
            env=env,
            timeout_s=self.timeout,
            log_path=log_root / self.log_rel,
            max_log_bytes=self.cfg.experiment.max_log_bytes,
            run_id=self.run_id,
            cpu_seconds=self.cfg.experiment.cpu_seconds,
            memory_mb=self.cfg.experiment.memory_mb,
            log_fd=log_fd,
            metric_channel=any(m.channel == "fd" for m in self.metric_cfgs),
        )

    def spec_for_attach(self, scratch: Path | None) -> RunSpec:
        """The spec of a run an earlier server started on a scheduler, which still writes its
        log: nothing is made afresh; `scratch` is the run's scratch directory, if it has one."""
        self._scratch = scratch if scratch is not None and scratch.is_dir() else None
        if self.iso.active and self._scratch is not None:
            writable = tuple(self.root / w for w in self.cfg.sandbox.writable)
            bound = [r for r in self._metric_files() if not any((self.root / r).is_relative_to(w) for w in writable)]
            self._binds = {rel: self._scratch / f"metric-{i}" for i, rel in enumerate(bound)}
        return RunSpec(
            argv=self.argv,
            cwd=self.root,
            env=self.env,
            timeout_s=self.timeout,
            log_path=(self.log_root or self.root) / self.log_rel,
            max_log_bytes=self.cfg.experiment.max_log_bytes,
            run_id=self.run_id,
            metric_channel=any(m.channel == "fd" for m in self.metric_cfgs),
        )

    def _scratch_dir(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="autoexp-run-"))
        return self._scratch

    @property
    def scratch(self) -> Path | None:
        """The run's scratch directory (removed by close()), once prepared."""
        return self._scratch

    def metric_files(self) -> dict[str, str | metrics.MetricFileError | None]:
        """Each metric file's text, read once now (right after the run, without following
        symlinks); None when this run did not write it."""
        out: dict[str, str | metrics.MetricFileError | None] = {}
        for rel in self._metric_files():
            if rel in self._binds:
                copy = self._binds[rel]
                text = metrics.read_files(copy.parent, [copy.name])[copy.name]
                out[rel] = text if text != "" else None  # still empty: this run did not write it
            elif self.iso.active or _stat_sig(self.root / rel) not in (None, self._before.get(rel)):
                out.update(metrics.read_files(self.root, [rel]))
            else:
                out[rel] = None
        return out

    def extract(self, outcome: RunOutcome) -> metrics.Extraction:
        return metrics.extract(
            self.metric_cfgs,
            outcome.output.decode("utf-8", errors="replace"),
            files=self.metric_files(),
            channel=outcome.channel.decode("utf-8", errors="replace"),
        )

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def _check_command(argv: Sequence[str], cwd: Path, path: str | None) -> None:
    """Say "command not found" as a plain run would, before a sandbox turns it into its own error."""
    exe = argv[0]
    found = (cwd / exe).is_file() if "/" in exe else shutil.which(exe, path=path) is not None
    if not found:
        raise EvalError(
            f"cannot start the eval command {exe!r}: command not found. Check [experiment].eval "
            "in autoexp.toml and that the program is on PATH."
        )


def _needed_under_replaced(argv: Sequence[str], env: Mapping[str, str], replaced: Sequence[Path]) -> list[Path]:
    """What the command needs from trees the sandbox replaces with empty ones (/tmp, /run): the
    directories on its PATH, its virtualenv and PYTHONPATH, and its own program — each widened
    to the virtualenv holding it."""
    words = [*env.get("PATH", "").split(os.pathsep), env.get("VIRTUAL_ENV", "")]
    words += env.get("PYTHONPATH", "").split(os.pathsep)
    exe = shutil.which(argv[0], path=env.get("PATH")) if argv else None
    if exe:
        words += [os.path.dirname(os.path.abspath(exe)), os.path.dirname(os.path.realpath(exe))]
    dirs = [str(d) for d in replaced]
    found: list[Path] = []
    for w in words:
        if not w or not os.path.isabs(w):
            continue
        w = os.path.normpath(w)  # plain strings: this runs before every run
        if w in dirs or not any(w.startswith(d + os.sep) for d in dirs):
            continue
        p = Path(w)
        venv = next((q for q in (p, *list(p.parents)[:2]) if (q / "pyvenv.cfg").is_file()), p)
        if venv not in replaced and venv not in found:
            found.append(venv)
    return found


def describe_exit(rc: int | None, sandboxed: bool) -> str:
    """How the eval ended, in words: a signal by its name (bwrap reports a command killed by
    signal N as exit code 128 + N)."""
    sig = -rc if rc is not None and rc < 0 else rc - 128 if sandboxed and rc is not None and 128 < rc < 160 else None
    if sig is None:
        return f"exited with code {rc}"
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    return f"was killed by {name} (exit code {rc})"


def _stat_sig(path: Path) -> tuple[int, int, int] | None:
    """Identity of a file's current content: changes whenever it is written (ctime cannot be set)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns, st.st_size)
