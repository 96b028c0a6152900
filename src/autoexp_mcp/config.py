"""autoexp.toml: frozen pydantic models, loaded with tomllib and written with tomli-w.

Unknown keys are refused (`extra="forbid"`) and every error names the file and the key.
A pipeline (`[[stage]]`) is folded into per-stage views of the same `Config` shape, so the
rest of the code only ever sees one target, one metric list and one budget at a time.
"""

from __future__ import annotations

import math
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import tomlerrors
from .errors import ConfigError

CONFIG_FILE = "autoexp.toml"

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_WAIT_S = 45.0
DEFAULT_MAX_TARGET_BYTES = 1024 * 1024
DEFAULT_MAX_LOG_BYTES = 64 * 1024 * 1024

# Variables passed to the eval besides the user's `env` list. Everything else is dropped so
# the eval sees the same environment however the client started the server.
DEFAULT_ENV_ALLOWLIST = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "TERM",
    "SHELL",
    "SYSTEMROOT",
    "VIRTUAL_ENV",
    "PYTHONPATH",
)

_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_@.-]{0,63}$")

Direction = Literal["max", "min"]
PolicyMode = Literal["single", "primary_secondary", "pareto", "weighted", "threshold", "lexicographic", "constraints"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_relpath(value: str, what: str) -> str:
    p = PurePosixPath(value.replace("\\", "/"))
    if not value or p.is_absolute() or ".." in p.parts or value.startswith("-"):
        raise ValueError(f"{what} must be a path relative to the repository root, inside it (got {value!r})")
    return str(p)


def _check_command(value: str) -> str:
    try:
        argv = shlex.split(value)
    except ValueError as e:
        raise ValueError(f"cannot split the command {value!r}: {e}") from e
    if not argv:
        raise ValueError("the command is empty")
    return value


class ExperimentConfig(_Frozen):
    tag: str = Field(description="experiments live on branch autoexp/<tag>")
    target: str = Field(description="the one editable file, relative to the repo root")
    eval: str = Field(description="split with shlex, run from the repo root, no shell")
    timeout: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="seconds per eval run")
    wait_seconds: float = Field(DEFAULT_WAIT_S, gt=0, le=3600, description="longest wait of one run_eval call")
    domain: str = Field("generic", description="which prompt template in prompts/ to serve")
    prompt_template: str | None = Field(None, description="a template file of your own, relative to the repo")
    protect: tuple[str, ...] = Field((), description="globs of untracked files the eval reads (data)")
    env: tuple[str, ...] = Field((), description="extra environment variable names passed to the eval")
    max_target_bytes: int = Field(DEFAULT_MAX_TARGET_BYTES, gt=0)
    max_log_bytes: int = Field(DEFAULT_MAX_LOG_BYTES, ge=64 * 1024)
    cpu_seconds: int | None = Field(None, gt=0, description="RLIMIT_CPU of each eval process")
    memory_mb: int | None = Field(None, gt=0, description="RLIMIT_AS of each eval process")

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not _TAG_RE.match(v) or ".." in v or v.endswith((".", ".lock")):
            raise ValueError(
                f"tag {v!r} must be 1-64 characters of letters, digits, '.', '_' or '-', "
                "starting with a letter or digit (it becomes the branch autoexp/<tag>)"
            )
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        return _check_relpath(v, "target")

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        return None if v is None else _check_relpath(v, "prompt_template")

    @field_validator("eval")
    @classmethod
    def _eval(cls, v: str) -> str:
        return _check_command(v)

    @field_validator("protect")
    @classmethod
    def _protect(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_relpath(g, "protect entry") for g in v)

    @property
    def branch(self) -> str:
        return f"autoexp/{self.tag}"

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.eval)


class MetricConfig(_Frozen):
    name: str
    direction: Direction
    pattern: str | None = Field(None, description="regex with one group; default: a line '<name>: <number>'")
    json_key: str | None = Field(None, description="key (dotted for nesting) of the last JSON object line")
    file: str | None = Field(None, description="read the metric from this file the eval writes, not stdout")
    channel: Literal["output", "fd"] = Field(
        "output", description="fd: read it from the pipe the harness gets as AUTOEXP_METRIC_FD, not the output"
    )
    weight: float | None = Field(None, description="weight in the weighted composite")
    transform: Literal["identity", "reciprocal", "log"] = Field(
        "identity", description="applied before weighting: reciprocal is the seed's 1/latency term"
    )
    at_least: float | None = Field(None, description="constraint: the value must be >= this")
    at_most: float | None = Field(None, description="constraint: the value must be <= this")
    max_regression: float | None = Field(
        None, ge=0, description="soft limit for a secondary metric: relative worsening allowed (1.0 = 2x)"
    )
    tolerance: float = Field(0.0, ge=0, description="absolute difference that still counts as a tie")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"metric name {v!r} must start with a letter or '_' and have no spaces or tabs")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            rx = re.compile(v, re.MULTILINE)
        except re.error as e:
            raise ValueError(f"pattern {v!r} is not a valid regular expression: {e}") from e
        if rx.groups != 1:
            raise ValueError(f"pattern {v!r} must have exactly one capture group, it has {rx.groups}")
        return v

    @field_validator("file")
    @classmethod
    def _file(cls, v: str | None) -> str | None:
        return None if v is None else _check_relpath(v, "metric file")

    @model_validator(mode="after")
    def _one_source(self) -> MetricConfig:
        if self.pattern is not None and self.json_key is not None:
            raise ValueError(f"metric {self.name!r}: give pattern or json_key, not both")
        if self.file is not None and self.channel == "fd":
            raise ValueError(f'metric {self.name!r}: give file or channel = "fd", not both')
        for bound in (self.at_least, self.at_most, self.weight):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"metric {self.name!r}: bounds and weights must be finite numbers")
        return self

    @property
    def is_constraint(self) -> bool:
        return self.at_least is not None or self.at_most is not None


class PolicyConfig(_Frozen):
    mode: PolicyMode = "single"
    keep_ties: bool = Field(False, description="keep a candidate that exactly ties the incumbent")
    min_improvement: float = Field(0.0, ge=0, description="absolute gain the objective must exceed")
    explore_every: int = Field(0, ge=0, description="every Nth experiment is kept regardless (0 = never)")
    repeats: int = Field(1, ge=1, le=100, description="runs per experiment; mean and stddev are compared")
    noise_sigmas: float = Field(1.0, ge=0, description="with repeats: mean must improve by this many stddevs")
    significance: Literal["sigma", "welch"] = "sigma"
    alpha: float = Field(0.05, gt=0, lt=1, description="level of the Welch t-test")
    drift_every: int = Field(0, ge=0, description="re-measure the incumbent every N experiments (0 = never)")


class HoldoutConfig(_Frozen):
    eval: str = Field(description="a second command, run only on a candidate about to be kept")
    tolerance: float = Field(0.0, ge=0, description="regression of the objective allowed on the hold-out")
    timeout: float | None = Field(None, gt=0)
    files: tuple[str, ...] = Field(
        (),
        description="its script and data in the repository, hidden from the visible eval (besides the "
        "files named in the command, which are hidden anyway)",
    )

    @field_validator("eval")
    @classmethod
    def _eval(cls, v: str) -> str:
        return _check_command(v)

    @field_validator("files")
    @classmethod
    def _files(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_relpath(g, "holdout file") for g in v)

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.eval)


class SandboxConfig(_Frozen):
    """Where the eval runs: bubblewrap on Linux, so the target's code cannot forge a result."""

    mode: Literal["auto", "bwrap", "none"] = Field(
        "auto", description="auto: bwrap when it works, else none; bwrap: refuse to start without it"
    )
    writable: tuple[str, ...] = Field((), description="directories in the repository the eval may write")
    network: bool = Field(False, description="give the eval the network")
    devices: tuple[str, ...] = Field((), description="device nodes passed through, e.g. /dev/nvidia*, /dev/dri")
    hide: tuple[str, ...] = Field((), description="more repository paths the visible eval must not see")

    @field_validator("writable", "hide")
    @classmethod
    def _paths(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        paths = tuple(_check_relpath(g, "sandbox path") for g in v)
        for p in paths:
            if p == "." or p.split("/")[0] in (".git", ".autoexp"):
                raise ValueError(
                    f"sandbox path {p!r} must be a directory inside the repository, not the repository itself, "
                    '.git or .autoexp (e.g. writable = ["out"])'
                )
        return paths

    @field_validator("writable")
    @classmethod
    def _not_bytecode(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            if "__pycache__" in p.split("/"):
                raise ValueError(
                    f"writable dir {p!r} is or lies in a __pycache__ directory, where Python looks for the bytecode "
                    'of the code beside it: name a directory that holds only output (e.g. writable = ["out"])'
                )
        return v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for d in v:
            if not d.startswith("/dev/"):
                raise ValueError(f"device {d!r} must be a path (or glob) under /dev/")
        return v


class BudgetConfig(_Frozen):
    max_experiments: int | None = Field(None, ge=1)
    max_wall_clock_hours: float | None = Field(None, gt=0)
    max_cost_usd: float | None = Field(None, gt=0)
    usd_per_million_tokens: float = Field(0.0, ge=0, description="prices tokens_used when cost_usd is not given")
    abort_on_consecutive_crashes: int | None = Field(3, ge=1)


class ResourcesConfig(_Frozen):
    """What this machine gives to evals, shared by every lane (server) on the repository."""

    slots: int = Field(1, ge=1, le=256, description="evals of all lanes that may run at once on this machine")
    gpus: tuple[str, ...] = Field((), description="device ids, one slot each, exported as CUDA_VISIBLE_DEVICES")

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for d in v:
            if not re.fullmatch(r"[A-Za-z0-9:,_-]{1,64}", d):
                raise ValueError(f'gpus entry {d!r} must be a device id such as "0" or "GPU-3f2a"')
        return v

    @property
    def count(self) -> int:
        """How many slots: one per device when devices are listed, else `slots`."""
        return len(self.gpus) or self.slots


# sbatch options the server sets itself, or that would break its following of the job.
SBATCH_DENIED_LONG = (
    "output", "error", "input", "chdir", "wrap", "export", "export-file", "job-name", "array", "open-mode",
    "requeue", "no-requeue", "parsable", "wait", "test-only", "hold", "get-user-env",
)  # fmt: skip
SBATCH_DENIED_SHORT = frozenset("oeiDJaWH")
# Short sbatch options that take a value: what follows them in the same word is that value.
SBATCH_SHORT_WITH_VALUE = frozenset("AabCcDdeFGiJLMmNnopqStwx")


def _sbatch_option_denied(arg: str) -> bool:
    """Whether an sbatch argument sets one of the denied options, however it is spelt: a long
    option by any prefix sbatch would accept (`--outp=`), a short one glued to its value
    (`-o/dev/null`) or grouped with flags (`-vJname`)."""
    if arg.startswith("--"):
        name = arg[2:].split("=", 1)[0]
        return bool(name) and any(d.startswith(name) for d in SBATCH_DENIED_LONG)
    for ch in arg[1:]:
        if ch in SBATCH_DENIED_SHORT:
            return True
        if ch in SBATCH_SHORT_WITH_VALUE or not ch.isalpha():
            return False
    return False


class ExecutorConfig(_Frozen):
    """Where each eval run executes: on this machine (sandboxed), or as a job of the user's
    Slurm or Ray cluster. The server still decides: it reads the run's output and applies the rule."""

    kind: Literal["local", "slurm", "ray"] = Field("local", description="local | slurm | ray")
    # Slurm: sbatch options; the repository must be on a file system the nodes share.
    partition: str | None = Field(None, description="slurm: --partition")
    account: str | None = Field(None, description="slurm: --account")
    gres: str | None = Field(None, description='slurm: --gres, e.g. "gpu:1"')
    cpus_per_task: int | None = Field(None, ge=1, description="slurm: --cpus-per-task")
    time: str | None = Field(
        None, description="slurm: --time; default: the eval's timeout plus a minute (the server cancels at the timeout)"
    )
    extra_args: tuple[str, ...] = Field((), description='slurm: more sbatch arguments, e.g. ["--qos=short"]')
    # Ray: the job submission API (the dashboard's address).
    address: str = Field("http://127.0.0.1:8265", description="ray: the dashboard address jobs are submitted to")
    num_cpus: float | None = Field(None, ge=0, description="ray: entrypoint_num_cpus")
    num_gpus: float | None = Field(None, ge=0, description="ray: entrypoint_num_gpus")
    entrypoint_resources: dict[str, float] = Field(default_factory=dict, description="ray: custom resources")
    poll_seconds: float = Field(0.5, gt=0, le=60, description="longest pause between two looks at a job's state")

    @field_validator("extra_args")
    @classmethod
    def _extra(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for a in v:
            if not a.startswith("-") or a in ("-", "--"):
                raise ValueError(f'extra_args entry {a!r} must be an sbatch option such as "--qos=short"')
            if _sbatch_option_denied(a):
                raise ValueError(
                    f"extra_args entry {a!r} sets what the server must control (the job's name, output, "
                    "directory, environment, requeueing, or a job array); remove it"
                )
        return v


class StageConfig(_Frozen):
    name: str
    target: str
    metric: tuple[MetricConfig, ...] = Field(min_length=1)
    budget: BudgetConfig = BudgetConfig()
    policy: PolicyConfig | None = None

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        return _check_relpath(v, "stage target")


class Config(_Frozen):
    experiment: ExperimentConfig
    metric: tuple[MetricConfig, ...] = ()
    policy: PolicyConfig = PolicyConfig()
    budget: BudgetConfig = BudgetConfig()
    holdout: HoldoutConfig | None = None
    stage: tuple[StageConfig, ...] = ()
    sandbox: SandboxConfig = SandboxConfig()
    resources: ResourcesConfig = ResourcesConfig()
    executor: ExecutorConfig = ExecutorConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if not self.metric and not self.stage:
            raise ValueError("[[metric]]: at least one metric is required")
        _check_metrics(self.metric, self.policy, "[[metric]]")
        for i, st in enumerate(self.stage):
            _check_metrics(st.metric, st.policy or self.policy, f"[[stage]] #{i + 1} ({st.name})")
        if self.executor.kind == "ray" and self.sandbox.network and self.sandbox.mode != "none":
            raise ValueError(
                '[sandbox] network = true with [executor] kind = "ray": the eval could submit jobs of its own to '
                "the Ray cluster's job API, and they run outside the sandbox. Keep the network off, or set "
                '[sandbox] mode = "none" knowingly'
            )
        if self.executor.kind == "ray":
            for m in (*self.metric, *(m for st in self.stage for m in st.metric)):
                if m.file is not None or m.channel == "fd":
                    raise ValueError(
                        f"metric {m.name!r}: a Ray job's files and descriptors stay on its node; with "
                        '[executor] kind = "ray" the eval must print its metrics (drop file / channel)'
                    )
        return self

    # --- derived views ------------------------------------------------------------------

    @property
    def objective(self) -> MetricConfig:
        """The metric optimised: the first one that is not only a constraint."""
        for m in self.metric:
            if not m.is_constraint:
                return m
        return self.metric[0]

    def for_stage(self, index: int) -> Config:
        """The config as seen while stage `index` runs (the whole config when there are none)."""
        if not self.stage:
            return self
        st = self.stage[index]
        exp = self.experiment.model_copy(update={"target": st.target})
        return Config.model_construct(
            experiment=exp,
            metric=st.metric,
            policy=st.policy or self.policy,
            budget=st.budget,
            holdout=self.holdout,
            stage=self.stage,
            sandbox=self.sandbox,
            resources=self.resources,
        )

    @property
    def ledger_metric_names(self) -> list[str]:
        """The ledger's metric columns: every metric of every stage, in order of first appearance."""
        names: list[str] = []
        for i in range(max(1, len(self.stage))):
            names += [m.name for m in self.for_stage(i).metric if m.name not in names]
        return names

    def stage_name(self, index: int) -> str | None:
        return self.stage[index].name if self.stage else None


def _check_metrics(metrics: tuple[MetricConfig, ...], policy: PolicyConfig, where: str) -> None:
    names = [m.name for m in metrics]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"{where}: metric names must be unique, repeated: {sorted(dup)}")
    mode = policy.mode
    objectives = [m for m in metrics if not m.is_constraint]
    need_two = {"primary_secondary", "pareto", "lexicographic"}
    if mode in need_two and len(metrics) < 2:
        raise ValueError(f"policy.mode = {mode!r} needs at least two [[metric]] entries ({where} has {len(metrics)})")
    if mode == "weighted":
        if not any(m.weight for m in metrics):
            raise ValueError(f"policy.mode = 'weighted' needs a non-zero `weight` on at least one metric ({where})")
    elif any(m.weight is not None for m in metrics):
        raise ValueError(f"{where}: `weight` is only used with policy.mode = 'weighted' (mode is {mode!r})")
    if mode in ("threshold", "constraints"):
        if not any(m.is_constraint for m in metrics):
            raise ValueError(f"policy.mode = {mode!r} needs `at_least` or `at_most` on a metric ({where})")
        if not objectives:
            raise ValueError(f"policy.mode = {mode!r} needs one metric without bounds to optimise ({where})")
    for m in metrics:
        if m.transform != "identity" and m.weight is None:
            raise ValueError(f"{where}: metric {m.name!r} has transform = {m.transform!r} but no weight")
        if m.weight is not None and m.weight < 0:
            raise ValueError(
                f"{where}: metric {m.name!r} has a negative weight; weights must be >= 0 "
                "(`direction` already says which way is better)"
            )
        if m.max_regression is not None and mode != "primary_secondary":
            raise ValueError(
                f"{where}: metric {m.name!r} sets max_regression, which only applies with "
                f"policy.mode = 'primary_secondary' (mode is {mode!r})"
            )


# --- loading and writing ------------------------------------------------------------------


def parse_config(data: dict[str, Any], source: str = CONFIG_FILE) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = [tomlerrors.describe(err, Config) for err in e.errors()]
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


def parse_config_text(text: str, source: str = CONFIG_FILE) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return parse_config(data, source)


# What may change between two runs of one experiment: caps and waits, never what is measured
# or how it is judged (their results would not compare with the rows already logged).
ADOPTABLE = (
    "budget",
    "stage.budget",
    "experiment.timeout",
    "experiment.wait_seconds",
    "experiment.cpu_seconds",
    "experiment.memory_mb",
    "experiment.max_log_bytes",
    "experiment.max_target_bytes",
    "experiment.domain",
    "experiment.prompt_template",
    "sandbox",
    "resources",
)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out if value else {prefix: []}
    return {prefix: value}


def config_changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """The differences between two configs as `key: old → new` lines, and the keys among them
    that may not change between runs."""
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    changes, refused = [], []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) == b.get(key):
            continue
        changes.append(f"{key}: {a.get(key)} → {b.get(key)}")
        generic = ".".join(part for part in key.split(".") if not part.isdigit())
        if not generic.startswith(ADOPTABLE):
            refused.append(key)
    return changes, refused


def with_tag(cfg: Config, tag: str) -> Config:
    """`cfg` with another [experiment].tag (a lane's `serve --tag`), validated like the file's."""
    try:
        exp = ExperimentConfig.model_validate({**cfg.experiment.model_dump(), "tag": tag})
    except ValidationError as e:
        raise ConfigError(f"--tag {tag}: " + "; ".join(str(err["msg"]) for err in e.errors())) from None
    return cfg.model_copy(update={"experiment": exp})


def load_config(repo: Path) -> Config:
    path = Path(repo) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"{path}: no config file. Create one with "
            "`autoexp-mcp init --target FILE --eval 'CMD' --metric NAME:max|min`."
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(data, str(path))


def starter_config(
    *,
    tag: str,
    target: str,
    eval_cmd: str,
    metrics: list[tuple[str, Direction]],
    timeout: float = 120.0,
    max_experiments: int = 100,
    max_hours: float | None = None,
    max_cost_usd: float | None = None,
    domain: str = "generic",
) -> str:
    """A commented starter autoexp.toml. Validated before it is returned."""
    data: dict[str, Any] = {
        "experiment": {"tag": tag, "target": target, "eval": eval_cmd, "timeout": timeout, "domain": domain},
        "metric": [{"name": n, "direction": d} for n, d in metrics],
        "budget": {"max_experiments": max_experiments, "abort_on_consecutive_crashes": 3},
    }
    if max_hours is not None:
        data["budget"]["max_wall_clock_hours"] = max_hours
    if max_cost_usd is not None:
        data["budget"]["max_cost_usd"] = max_cost_usd
    if len(metrics) > 1:
        data["policy"] = {"mode": "lexicographic"}
    parse_config(data, "the generated config")
    header = (
        "# autoexp.toml: the experiment the autoexp-mcp server runs. Reference: README.md, 'Config'.\n"
        "# The agent may edit only [experiment].target; everything else in the repository is the\n"
        "# harness and is protected. Check the setup with `autoexp-mcp check` before handing it\n"
        "# to an agent.\n\n"
    )
    metric_note = (
        "# Each metric is read from the eval output by the server: by default the last line\n"
        "# '<name>: <number>'; set `pattern` (a regex with one group) or `json_key` (a key of the\n"
        "# last JSON object line) to change that.\n"
    )
    budget_note = "# The loop stops when any cap is reached. Costs are what the agent reports to log_result.\n"
    parts = [header, tomli_w.dumps({"experiment": data["experiment"]}), "\n", metric_note]
    for m in data["metric"]:
        parts += ["[[metric]]\n", tomli_w.dumps(m), "\n"]
    if "policy" in data:
        parts += [
            "# Two metrics: the first decides, the second breaks ties.\n",
            tomli_w.dumps({"policy": data["policy"]}),
            "\n",
        ]
    parts += [budget_note, tomli_w.dumps({"budget": data["budget"]})]
    return "".join(parts)
