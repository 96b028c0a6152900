"""The eval's sandbox: a bubblewrap (`bwrap`) command line that runs the eval with the
repository read-only, the server's files invisible, its own PID namespace and no network.

The target's code runs inside the eval, so the eval is untrusted. `wrap()` builds the bwrap
argv; the runner starts it like any eval (its own session, killed as a process group). What
the sandbox gives, and why each piece is there:

- `/` read-only, then a private `/dev` (bwrap's tmpfs with null, zero, random and the like,
  and an empty writable `/dev/shm`), `/tmp` and `/run`, then the repository again read-only
  when it lives under one of those, then the writable dirs, the metric file binds, and last
  the hidden paths, so nothing declared later can uncover them.
- `/run` is empty because a unix socket can be connected to through a read-only mount: the
  user's session bus or systemd there would run commands outside the sandbox.
- `--cap-drop ALL`: bwrap run by root keeps every capability by default, and with
  CAP_SYS_ADMIN the eval could unmount the tmpfs over `.git` or remount the repository
  read-write. Root without capabilities may still write most sysctls (the kernel checks the
  uid, not a capability), so `/proc/sys` is bound read-only (bwrap covers `/proc/sysrq-trigger`
  itself, but skips `/proc/sys`, whose directory mode has no write bit).
- `--unshare-pid` and a fresh `/proc`: the eval cannot see or signal the server. bwrap keeps
  a pid 1 that reaps zombies; when pid 1 dies, the kernel kills everything in the namespace.
- `--new-session`: the eval cannot push keystrokes into a terminal (TIOCSTI). It also means
  the runner's `killpg` reaches only the outer bwrap; `--die-with-parent` (PR_SET_PDEATHSIG,
  SIGKILL, set in bwrap's launcher, pid 1 and the command) turns that death into the death of
  the whole sandbox, and so does the death of the server. So the eval gets no SIGTERM grace
  period of its own. PR_SET_PDEATHSIG fires when the *thread* that started bwrap exits:
  start the wrapped command from a thread that outlives it.
- Inherited fds (`pass_fds`) and the environment Popen is given reach the command unchanged
  (bwrap closes extra fds only in its own monitor and pid 1); `HOME` is set to an empty
  private directory and `TMPDIR` to the private `/tmp`.

Non-root users need unprivileged user namespaces: bwrap, not setuid on current
distributions, creates one by itself. `available()` runs the same sandbox on `true` once per
process and says why it failed and how to fix it.
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import AutoexpError

PROBE_TIMEOUT_S = 10.0  # a trivial sandbox starts in ~5 ms; a hung bwrap must not hang the server
PRIVATE_TMP = Path("/tmp")
REPLACED = (PRIVATE_TMP, Path("/dev"), Path("/run"))  # trees the sandbox mounts afresh over the host's
INSTALL_HINT = (
    "install the package `bubblewrap` (Debian/Ubuntu: apt install bubblewrap; Fedora: dnf install "
    "bubblewrap; Arch: pacman -S bubblewrap)"
)
USERNS_HINT = (
    "bwrap could not create its namespaces; unprivileged user namespaces are probably off. Enable them "
    "(sysctl user.max_user_namespaces=15000; older Debian kernels: sysctl kernel.unprivileged_userns_clone=1; "
    "Ubuntu 24.04+: sysctl kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap). "
    "In a container, start it with --security-opt seccomp=unconfined (or --privileged), or run the server "
    "outside the container"
)


class SandboxError(AutoexpError):
    """The sandbox cannot be set up as asked: a path is missing, outside the repository or a
    symlink, or bubblewrap cannot run here."""


@dataclass(frozen=True)
class Plan:
    """What one eval run may see and touch. All paths absolute."""

    root: Path  # the repository: read-only at its own path, and the cwd of the run
    writable: tuple[Path, ...] = ()  # dirs strictly inside root, bound read-write (prepare() creates them)
    hidden: tuple[Path, ...] = ()  # dir -> empty read-only tmpfs; file -> /dev/null, unreadable; missing: skipped
    # (server-owned file, destination inside root) bound read-write: metric files the eval writes
    # in place (a rename over a mount point fails). prepare() creates a missing destination.
    files: tuple[tuple[Path, Path], ...] = ()
    network: bool = False  # True shares the host's network namespace, abstract unix sockets included
    devices: tuple[str, ...] = ()  # globs such as "/dev/nvidia*", expanded by wrap(), bound with device access
    home: str = "/tmp/autoexp-home"  # private empty HOME, under the private /tmp
    # Paths under a tree the sandbox replaces (/tmp, /run) that the command needs, bound again
    # read-only: a virtualenv or a PATH entry that lives in /tmp.
    keep: tuple[Path, ...] = ()
    # Directories replaced by an empty tmpfs before the repository is bound again (a scheduler's
    # own files around a job's working dir), and whether to bind the repository again in any case.
    cover: tuple[Path, ...] = ()
    bind_root: bool = False


@dataclass(frozen=True)
class Availability:
    ok: bool
    detail: str  # ok: which bwrap, e.g. "bubblewrap 0.8.0 (/usr/bin/bwrap)"; else why not and what to do


# --- checks -----------------------------------------------------------------------------------------


def _abs(path: Path, what: str) -> Path:
    if not path.is_absolute():
        raise SandboxError(f"sandbox {what} {str(path)!r} must be an absolute path.")
    return Path(os.path.normpath(path))


def _beneath(root: Path, path: Path, what: str) -> Path:
    """`path`, refused unless it lies strictly inside `root` with no symlink on the way
    (a symlink would point the bind somewhere else than the plan says)."""
    path = _abs(path, what)
    if path == root or not path.is_relative_to(root):
        raise SandboxError(
            f"sandbox {what} {path} must lie inside the repository {root} (and not be the repository itself)."
        )
    cur = root
    for part in path.relative_to(root).parts:
        cur = cur / part
        if cur.is_symlink():
            raise SandboxError(f"sandbox {what} {path} goes through the symlink {cur}; name the real path.")
    return path


def _root(plan: Plan) -> Path:
    root = _abs(plan.root, "root")
    if not root.is_dir():
        raise SandboxError(f"the sandbox root {root} is not a directory.")
    return root


def _home(plan: Plan) -> str:
    home = os.path.normpath(plan.home)
    if not Path(home).is_relative_to(PRIVATE_TMP) or Path(home) == PRIVATE_TMP:
        raise SandboxError(f"the sandbox HOME {plan.home!r} must be a directory under the private {PRIVATE_TMP}.")
    return home


def prepare(plan: Plan) -> None:
    """Create what the sandbox binds but the repository may lack: the writable dirs, and an
    empty file at each missing metric destination (a read-only tree cannot hold a new mount
    point). Refuses paths outside the repository or through symlinks."""
    root = _root(plan)
    for w in plan.writable:
        path = _beneath(root, w, "writable dir")
        path.mkdir(parents=True, exist_ok=True)
        _beneath(root, path, "writable dir")  # a symlink planted meanwhile
    for _, dest in plan.files:
        path = _beneath(root, dest, "metric file")
        if not path.parent.is_dir():
            raise SandboxError(f"the directory of the metric file {path} does not exist; create it in the repository.")
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            os.close(fd)


# --- the command line -------------------------------------------------------------------------------


def _namespaces(network: bool) -> list[str]:
    flags = ["--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    flags += ["--unshare-cgroup-try", "--cap-drop", "ALL"]
    return flags if network else [*flags, "--unshare-net"]


def _system(network: bool) -> list[str]:
    """Everything outside the repository: read-only, with private scratch space."""
    args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    args += ["--ro-bind", "/proc/sys", "/proc/sys", "--tmpfs", str(PRIVATE_TMP), "--tmpfs", "/run"]
    resolv = os.path.realpath("/etc/resolv.conf")
    if network and resolv.startswith("/run/") and os.path.exists(resolv):
        args += ["--ro-bind", resolv, resolv]  # systemd-resolved keeps the real file under /run
    return args


def _devices(patterns: Sequence[str]) -> list[str]:
    args: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        if not pattern.startswith("/"):
            raise SandboxError(f"sandbox device {pattern!r} must be an absolute path or glob, e.g. /dev/nvidia*.")
        for dev in sorted(glob.glob(pattern)):
            if dev not in seen:
                seen.add(dev)
                args += ["--dev-bind", dev, dev]
    return args


def _hide(root: Path, hidden: Sequence[Path], bound: Sequence[Path]) -> list[str]:
    """Mounts that hide each of `hidden`, but those already out of sight: under a replaced
    tree (/tmp, /run) with nothing of theirs `bound` into the sandbox again."""
    args: list[str] = []
    for h in hidden:
        path = _abs(h, "hidden path")
        if root.is_relative_to(path):
            raise SandboxError(f"the sandbox cannot hide {path}: it holds the repository {root}.")
        gone = any(path.is_relative_to(d) for d in REPLACED)
        if gone and not any(path.is_relative_to(b) or b.is_relative_to(path) for b in bound):
            continue
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            args += ["--tmpfs", str(path), "--remount-ro", str(path)]
        else:  # nodev: opening it fails with EACCES, so its content can be neither read nor replaced
            args += ["--ro-bind", "/dev/null", str(path)]
    return args


def wrap(plan: Plan, argv: Sequence[str], bwrap: str = "bwrap") -> list[str]:
    """The bwrap command line that runs `argv` in the sandbox `plan` describes, from the
    repository root. Call `prepare(plan)` first. Raises SandboxError for a plan it cannot honour."""
    if not argv:
        raise SandboxError("the sandboxed command is empty.")
    root = _root(plan)
    home = _home(plan)
    exe = shutil.which(bwrap) or bwrap  # resolved here: the eval's own PATH may lack it
    args = [exe, *_namespaces(plan.network), *_system(plan.network), "--dir", home]
    for c in plan.cover:
        args += ["--tmpfs", str(_abs(c, "covered dir"))]
    bound: list[Path] = []  # what is bound again under the replaced trees
    if plan.bind_root or plan.cover or any(root.is_relative_to(d) for d in REPLACED):
        args += ["--ro-bind", str(root), str(root)]
        bound.append(root)
    for k in plan.keep:
        path = _abs(k, "kept path")
        if path not in REPLACED and any(path.is_relative_to(d) for d in REPLACED) and path.exists():
            args += ["--ro-bind", str(path), str(path)]
            bound.append(path)
    devices = _devices(plan.devices)
    args += devices
    bound += (Path(d) for d in devices[2::3])  # the paths of each --dev-bind SRC DEST
    for w in plan.writable:
        path = _beneath(root, w, "writable dir")
        if not path.is_dir():
            raise SandboxError(f"the writable dir {path} does not exist; call sandbox.prepare(plan) first.")
        args += ["--bind", str(path), str(path)]
    for src, dest in plan.files:
        source = _abs(src, "metric source")
        path = _beneath(root, dest, "metric file")
        if not source.is_file():
            raise SandboxError(f"the server-side metric file {source} is not a regular file.")
        if not path.is_file():
            raise SandboxError(
                f"the metric file {path} does not exist and a read-only repository cannot hold a new mount "
                "point; call sandbox.prepare(plan) first."
            )
        args += ["--bind", str(source), str(path)]
    args += _hide(root, plan.hidden, bound)
    args += ["--setenv", "HOME", home, "--setenv", "TMPDIR", str(PRIVATE_TMP), "--chdir", str(root)]
    return [*args, "--", *argv]


# --- can it run here? -------------------------------------------------------------------------------

_probes: dict[str, Availability] = {}
_probe_lock = threading.Lock()


def _probe(bwrap: str) -> Availability:
    exe = shutil.which(bwrap)
    if exe is None:
        return Availability(False, f"bubblewrap ({bwrap!r}) is not installed or not on PATH: {INSTALL_HINT}")
    true = shutil.which("true") or "/bin/true"
    argv = wrap(Plan(root=Path("/")), [true], bwrap=exe)
    try:
        res = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        version = subprocess.run([exe, "--version"], capture_output=True, timeout=PROBE_TIMEOUT_S, text=True)
    except subprocess.TimeoutExpired:
        return Availability(False, f"{exe} did not run a trivial sandbox within {PROBE_TIMEOUT_S:g} s")
    except OSError as e:
        return Availability(False, f"cannot run {exe}: {e}; {INSTALL_HINT}")
    name = version.stdout.strip() or "bubblewrap"
    if res.returncode != 0:
        said = res.stderr.decode(errors="replace").strip().splitlines()
        why = said[-1] if said else f"exit status {res.returncode}"
        if "nknown option" in why:
            return Availability(False, f"{name} ({exe}) is too old for the sandbox ({why}); install a newer bubblewrap")
        return Availability(False, f"{name} ({exe}) failed: {why}. {USERNS_HINT}")
    return Availability(True, f"{name} ({exe})")


def available(bwrap: str = "bwrap") -> Availability:
    """Whether `bwrap` can run the sandbox here: probed once per process and path, by running
    `wrap()`'s own namespaces and mounts on `true`."""
    with _probe_lock:
        if bwrap not in _probes:
            _probes[bwrap] = _probe(bwrap)
        return _probes[bwrap]
