"""The agent instructions: prompts/generic.md (or the user's template) filled from the config,
with the domain section and a warm-start summary of the ledger."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from string import Template

from . import budget as budgetmod
from . import metrics as metricsmod
from .assets import asset_dir
from .config import Config
from .errors import ConfigError
from .ledger import KEPT_STATUSES, Record
from .policy import weighted_formula

_DOMAIN_RE = re.compile(r"^[a-z0-9_-]{1,40}$")
WARM_START_RECENT = 8


def domains() -> list[str]:
    d = asset_dir("prompts") / "domains"
    return sorted(p.stem for p in d.glob("*.md"))


def check_domain(domain: str | None) -> None:
    """Raise ConfigError, naming the choices, unless `domain` (None: the config's) has a template."""
    if domain in (None, "", "generic"):
        return
    assert domain is not None
    if not _DOMAIN_RE.match(domain):
        raise ConfigError(f"domain {domain!r} is not a valid name; choose one of: {', '.join(domains())}")
    if not (asset_dir("prompts") / "domains" / f"{domain}.md").is_file():
        raise ConfigError(f"no prompt template for domain {domain!r}; choose one of: {', '.join(domains())}")


def _domain_text(domain: str) -> str:
    check_domain(domain)
    if domain in ("", "generic"):
        return ""
    return (asset_dir("prompts") / "domains" / f"{domain}.md").read_text(encoding="utf-8")


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.6g}"


def _row(r: Record, names: Sequence[str]) -> str:
    figures = ", ".join(f"{n} {_fmt(r.metrics.get(n))}" for n in names)
    return f"- #{r.experiment} {r.status} ({figures}): {r.description}"


def warm_start(records: Sequence[Record], cfg: Config) -> str:
    """What has been tried: best kept, recent keeps, discards and crashes (from the ledger tail)."""
    if not records:
        return "No experiments yet."
    names = [m.name for m in cfg.metric]
    last = records[-1]
    lines = [f"{last.experiment} experiments so far."]
    if last.best_commit and last.best_metrics:
        best = ", ".join(f"{k} {_fmt(v)}" for k, v in last.best_metrics.items())
        lines.append(f"Best kept: commit {last.best_commit} ({best}).")
    kept = [r for r in records if r.status in KEPT_STATUSES and r.experiment > 1]
    failed = [r for r in records if r.status in ("discard", "crash", "timeout")]
    if kept:
        lines.append("Kept recently:")
        lines += [_row(r, names) for r in kept[-WARM_START_RECENT:]]
    if failed:
        lines.append("Tried and reverted recently (do not repeat these without a new reason):")
        lines += [_row(r, names) for r in failed[-WARM_START_RECENT:]]
    return "\n".join(lines)


def policy_sentence(cfg: Config) -> str:
    p = cfg.policy
    obj = cfg.objective
    arrow = "higher" if obj.direction == "max" else "lower"
    rules = {
        "single": f"keep when {obj.name} is strictly better ({arrow} is better) than the incumbent",
        "primary_secondary": f"keep when {cfg.metric[0].name} improves and the other metrics stay within "
        "their allowed regression",
        "pareto": "keep when better on at least one metric and worse on none",
        "weighted": f"keep when the weighted score {weighted_formula(cfg)} improves (higher is better)",
        "threshold": f"constraints must hold first; then keep when {obj.name} improves",
        "constraints": f"any violated constraint discards at once; then keep when {obj.name} improves",
        "lexicographic": "compare metrics in order; a later metric only breaks ties of the earlier ones",
    }
    text = rules[p.mode]
    if p.keep_ties:
        text += "; exact ties are kept"
    if p.min_improvement:
        text += f"; the gain must exceed {p.min_improvement:g}"
    if p.repeats > 1:
        test = (
            f"a Welch t-test at alpha {p.alpha:g}"
            if p.significance == "welch"
            else (f"more than {p.noise_sigmas:g} standard deviation(s)")
        )
        text += f"; each experiment runs {p.repeats} times and the mean must improve by {test}"
    if p.explore_every:
        text += f"; every {p.explore_every}th experiment is kept regardless (explore)"
    constraints = [m for m in cfg.metric if m.is_constraint]
    if constraints:
        bounds = []
        for m in constraints:
            if m.at_least is not None:
                bounds.append(f"{m.name} >= {m.at_least:g}")
            if m.at_most is not None:
                bounds.append(f"{m.name} <= {m.at_most:g}")
        text += "; constraints: " + ", ".join(bounds)
    if cfg.holdout is not None:
        text += "; a kept change must also pass a hidden held-out check"
    return text + "."


def render(
    cfg: Config,
    records: Sequence[Record] = (),
    *,
    root: Path | None = None,
    domain: str | None = None,
    stage_line: str = "",
) -> str:
    exp = cfg.experiment
    if exp.prompt_template and root is not None:
        path = root / exp.prompt_template
        try:
            template = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"[experiment].prompt_template: cannot read {path}: {e}") from None
    else:
        template = (asset_dir("prompts") / "generic.md").read_text(encoding="utf-8")
    chosen = exp.domain if domain is None else domain
    metric_list = ", ".join(f"{m.name} ({'higher' if m.direction == 'max' else 'lower'} is better)" for m in cfg.metric)
    obj = cfg.objective
    values = {
        "goal": f"{'maximise' if obj.direction == 'max' else 'minimise'} {obj.name} by editing {exp.target}",
        "target": exp.target,
        "eval_command": exp.eval,
        "extraction": "; ".join(metricsmod.describe(m) for m in cfg.metric),
        "direction": "; ".join(
            f"{m.name} {'↑ higher is better' if m.direction == 'max' else '↓ lower is better'}" for m in cfg.metric
        ),
        "budget": budgetmod.summary_line(cfg.budget) + f"; each eval run is cut at {exp.timeout:g}s",
        "branch": exp.branch,
        "tag": exp.tag,
        "policy": policy_sentence(cfg),
        "stage": stage_line,
        "metrics": metric_list,
        "warm_start": warm_start(records, cfg),
    }
    values["domain_notes"] = Template(_domain_text(chosen)).safe_substitute(values).strip()
    return Template(template).safe_substitute(values).strip() + "\n"


def render_current(
    full_cfg: Config, stage: int, records: Sequence[Record], *, root: Path | None = None, domain: str | None = None
) -> str:
    """The prompt for the experiment as it stands: the running pipeline stage's target,
    metrics and budget, and that stage's rows. The one rendering for the server and the CLI."""
    if not full_cfg.stage:
        return render(full_cfg, records, root=root, domain=domain)
    name = full_cfg.stage_name(stage)
    line = f"- **Pipeline stage**: {stage + 1} of {len(full_cfg.stage)} ({name}); earlier stages' targets are frozen."
    rows = [r for r in records if r.stage == name]
    return render(full_cfg.for_stage(stage), rows, root=root, domain=domain, stage_line=line)
