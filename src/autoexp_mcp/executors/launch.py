"""The shell script a scheduler runs for one eval run (a Slurm batch script, a Ray job's
entrypoint): exactly the eval's environment, its resource limits, its sandbox where the node
has bubblewrap, and its output passed on through a pipe.

The pipe matters: a job's output file is what the server reads the metrics from, and an eval
holding that file as its stdout could rewrite what it printed earlier. Behind a pipe it can
only add to it, as with a local run, and only until it exits: then what it left in its process
group is killed, as a local run's is. The file itself is hidden from a sandboxed eval.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..runner import METRIC_FD_VAR, RunSpec

# What a scheduler sets for the job and the eval needs: its devices and its allocation.
PASSTHROUGH = (
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
    "SLURM_JOB_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_CPUS_ON_NODE",
    "SLURM_CPUS_PER_TASK",
    "SLURM_JOB_GPUS",
    "RAY_JOB_ID",
)
CHANNEL_FD = 3
RELAY_GRACE_S = 5  # after the eval exits, the longest the relay may take to pass on the rest of its output


@dataclass(frozen=True)
class Launch:
    argv: Sequence[str]  # the eval's command, already wrapped in bwrap when sandboxed
    env: Mapping[str, str]
    sandboxed: bool = False
    cpu_seconds: int | None = None
    memory_mb: int | None = None
    channel: str | None = None  # a file the metric channel (fd 3) writes to
    # argv words (and paths beneath them) that stand for places known only on the node, by the
    # shell expression of each, e.g. the server-side snapshot for "$PWD"
    places: tuple[tuple[str, str], ...] = ()
    prelude: tuple[str, ...] = ()  # shell lines run before the eval (outside its sandbox)
    max_log_bytes: int = 64 * 1024 * 1024  # [experiment] max_log_bytes: the most of its output the job keeps


def from_spec(
    spec: RunSpec,
    *,
    sandboxed: bool,
    channel: str | None = None,
    places: tuple[tuple[str, str], ...] = (),
    prelude: tuple[str, ...] = (),
) -> Launch:
    """The launch of a prepared run (`RunPlan.prepare`): its command, environment and limits.
    Its log was made fresh, with nothing planted at its path; the job writes it by its path,
    so the server's descriptor of it is closed here."""
    if spec.log_fd is not None:
        os.close(spec.log_fd)
    return Launch(
        argv=spec.argv,
        env=spec.env,
        sandboxed=sandboxed,
        cpu_seconds=spec.cpu_seconds,
        memory_mb=spec.memory_mb,
        channel=channel,
        places=places,
        prelude=prelude,
        max_log_bytes=spec.max_log_bytes,
    )


def _word(w: str, places: tuple[tuple[str, str], ...]) -> str:
    for word, expr in places:
        if w == word:
            return f'"{expr}"'
        if w.startswith(word + "/"):
            return f'"{expr}"' + shlex.quote(w[len(word) :])
    return shlex.quote(w)


def script(launch: Launch, title: str) -> str:
    """A bash script that runs the eval once and exits with its status."""
    lines = ["#!/bin/bash", f"# {title}: written by the server; it runs the eval and nothing else", "set -o pipefail"]
    if launch.cpu_seconds is not None:
        lines.append(f"ulimit -t {int(launch.cpu_seconds)}")
    if launch.memory_mb is not None:
        lines.append(f"ulimit -v {int(launch.memory_mb) * 1024}")
    if launch.sandboxed:
        lines.append(
            'BWRAP=$(command -v bwrap) || { echo "autoexp: bubblewrap is not installed on $(hostname), so the '
            'eval cannot run sandboxed there: install it on the nodes, or set [sandbox] mode = \\"none\\"" >&2; '
            "exit 126; }"
        )
    lines += launch.prelude
    env = dict(launch.env)
    if launch.channel is not None:
        lines.append(f"exec {CHANNEL_FD}>{shlex.quote(launch.channel)}")
        env[METRIC_FD_VAR] = str(CHANNEL_FD)
    words = ["env", "-i", *(shlex.quote(f"{k}={v}") for k, v in env.items())]
    words += [f'${{{k}+"{k}=${k}"}}' for k in PASSTHROUGH if k not in env]
    argv = list(launch.argv)
    if launch.sandboxed:  # the node's own bubblewrap, wherever it is installed there
        words.append('"$BWRAP"')
        argv = argv[1:]
    words += (_word(w, launch.places) for w in argv)
    # The eval in a session of its own, writing into a pipe the script relays to the job's
    # output; when it exits, whatever it left in its process group is killed, and the relay
    # gets a bounded time to pass on what is still in the pipe.
    lines += [
        'relay_dir=$(mktemp -d) && mkfifo -m 600 "$relay_dir/out" || exit 125',
        # At most max_log_bytes reach the job's output: its first half, then the last half of the
        # rest (what lies between is dropped, as a local run's log keeps its head and tail).
        # (dd, not head -c, which holds back what it reads until it has them all.)
        f"{{ dd iflag=count_bytes count={launch.max_log_bytes // 2} bs=65536 status=none; "
        f'tail -c {launch.max_log_bytes // 2}; }} <"$relay_dir/out" & relay=$!',
        "setsid -w " + " ".join(words) + ' >"$relay_dir/out" 2>&1 </dev/null & eval_pid=$!',
        "wait $eval_pid; rc=$?",
        "kill -KILL -- -$eval_pid 2>/dev/null",
        # (A guard that is the sleep itself, so no sleep outlives the script: the job ends when
        # its last process does.)
        f"sleep {RELAY_GRACE_S} & guard=$!",
        "wait -n $relay $guard 2>/dev/null; kill $relay $guard 2>/dev/null",
        'rm -rf "$relay_dir"',
        "exit $rc",
    ]
    return "\n".join(lines) + "\n"
