"""Papermill parameter sweeps over the book's notebooks: ``instructedit-sweep SWEEP.yaml``.

A sweep file (YAML) names the notebooks, the profile, fixed parameters and the parameter sets to run::

    name: ci-rank                      # default: the file's stem
    profile: ci                        # the notebooks' profile (parameters cell + the profile's values)
    notebooks: [02_editor_training]    # executed in this order for every run
    fixed: {balance_seeds: [0]}        # given to every run
    grid: {rank: [8, 16]}              # every combination of these values ...
    runs: [{rank: 32, c_loc: 1.0}]     # ... and/or an explicit list of parameter sets
    sweep_dir: runs/sweeps/ci-rank     # default runs/sweeps/<name> (relative: to the project root)
    report: {metric: edit/acc, where: {method: instructedit}, x: rank, hue: task}

A parameter goes to every notebook of the sweep whose parameters cell declares it; one that no notebook declares, an
empty grid, or a value a notebook's configuration rejects is an error before anything runs. Each run is executed
into ``<sweep_dir>/<run_id>/``: the executed notebooks, one run folder per notebook (``<run_id>/<notebook>/``, so a
chapter finds the run folders of the chapters before it, as in the book), ``params.json`` and ``status.json``. The
``run_id`` is made from the swept parameters (``c_loc-1.0_rank-32``): readable, and the same for the same values.

A failing run is recorded (notebook, cell, the error's last line) and the sweep goes on; rerunning it skips finished
runs and retries failed ones. The runs' own ``*summary.csv`` files are gathered into ``sweep_summary.csv`` (one row
per run × group × metric, the parameters as columns), ``sweep_summary.md`` (the runs and the report's metric) and a
figure of the report's metric against the swept parameter (``sweep_<metric>.png``).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from ..config.experiment import PROFILES
from ..evaluation.summaries import is_fraction
from ..config.parameters import DERIVED, notebook_config, notebook_path, overrides_by_notebook, read_yaml_mapping
from ..util.paths import display_path, project_path
from ..analysis.plotting import plot_sweep
from .runner import prepare_models, run_notebook

SWEEPS_DIR = "runs/sweeps"
KEYS = ("name", "profile", "notebooks", "fixed", "grid", "runs", "sweep_dir", "report")
STATS = ("metric", "mean", "ci_low", "ci_high", "n")
DONE, FAILED = "done", "failed"


@dataclass(frozen=True)
class Report:
    """What the sweep's table and figure show: ``metric`` on the summary rows matching ``where`` (group column →
    value), against ``x`` (default: the first swept parameter), one line per ``hue`` and one panel per ``col`` (group
    columns or parameters)."""

    metric: str = "edit/acc"
    where: dict[str, Any] = field(default_factory=dict)
    x: str | None = None
    hue: str | None = None
    col: str | None = None

    def __post_init__(self):
        if not isinstance(self.where, dict):
            raise ValueError(f"report.where must map summary columns to values, got {self.where!r}")


@dataclass
class SweepConfig:
    """One sweep: see the module docstring. Validated on construction (names, grid, profile, notebooks)."""

    name: str
    profile: str
    notebooks: tuple[str, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    runs: tuple[dict[str, Any], ...] = ()
    sweep_dir: Path | None = None
    report: Report = field(default_factory=Report)
    source: str = "sweep"  # where it was read from, for error messages

    def __post_init__(self):
        where = self.source
        if self.profile not in PROFILES:
            raise ValueError(f"{where}: unknown profile {self.profile!r}; choose from {PROFILES}")
        if isinstance(self.notebooks, str) or not self.notebooks:
            raise ValueError(f"{where}: `notebooks` must be a non-empty list of notebook names")
        self.notebooks = tuple(Path(n).stem for n in self.notebooks)
        for name in self.notebooks:
            notebook_path(name)  # an error naming the available notebooks
        self.runs = tuple(self.runs or ())
        for label, mapping in (("fixed", self.fixed), ("grid", self.grid), *((f"runs[{i}]", r)
                                                                             for i, r in enumerate(self.runs))):
            if not isinstance(mapping, dict):
                raise ValueError(f"{where}: `{label}` must map parameter names to values, got {mapping!r}")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"{where}: grid parameter {key!r} needs a non-empty list of values, got {values!r}")
        if not self.grid and not self.runs:
            raise ValueError(f"{where}: the sweep is empty: give a `grid` or a list of `runs`")
        swept = self.swept()
        derived = sorted(set([*self.fixed, *swept]) & set(DERIVED))
        if derived:
            raise ValueError(f"{where}: {derived} are set by the sweep itself (one run folder per run and notebook)")
        try:
            overrides_by_notebook(self.notebooks, dict.fromkeys([*self.fixed, *swept]))
        except KeyError as exc:
            raise ValueError(f"{where}: {exc.args[0]}") from None
        both = sorted(set(self.fixed) & set(swept))
        if both:
            raise ValueError(f"{where}: {both} are both fixed and swept")
        self.sweep_dir = project_path(self.sweep_dir or f"{SWEEPS_DIR}/{self.name}")
        ids = [run_id(p) for p in self.parameter_sets()]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{where}: two runs have the same parameters (run ids {sorted(ids)})")

    @classmethod
    def load(cls, path: str | Path, sweep_dir: str | Path | None = None) -> "SweepConfig":
        """Read a sweep file; unknown keys and malformed YAML are errors naming the file."""
        path = Path(path)
        data = read_yaml_mapping(path, f"a mapping with keys {KEYS}")
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; a sweep file has {KEYS}")
        for key in ("profile", "notebooks"):
            if key not in data:
                raise ValueError(f"{path}: missing `{key}`")
        report = data.get("report") or {}
        try:
            report = Report(**report)
        except TypeError as exc:
            raise ValueError(f"{path}: report: {exc}") from None
        return cls(name=str(data.get("name") or path.stem), profile=data["profile"], notebooks=data["notebooks"],
                   fixed=data.get("fixed") or {}, grid=data.get("grid") or {}, runs=data.get("runs") or (),
                   sweep_dir=sweep_dir or data.get("sweep_dir"), report=report, source=str(path))

    def swept(self) -> list[str]:
        """The swept parameters' names: the grid's, then those of the explicit runs, in order of appearance."""
        return list(dict.fromkeys([*self.grid, *(k for r in self.runs for k in r)]))

    def parameter_sets(self) -> list[dict[str, Any]]:
        """The swept parameters of every run: the grid's combinations, then the explicit runs."""
        keys = list(self.grid)
        combos = [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())] if keys else []
        return combos + [dict(r) for r in self.runs]

    def notebook_overrides(self, notebook: str, params: dict[str, Any], folder: Path) -> dict[str, Any]:
        """What ``notebook`` gets in the run of ``params`` executed into ``folder``: the fixed and swept parameters
        its parameters cell declares, and its run folder ``<folder>/<notebook>``."""
        mine = overrides_by_notebook(self.notebooks, {**self.fixed, **params})[notebook]
        return {**mine, "run_dir": display_path(folder / notebook)}

    def check(self) -> None:
        """Build every run's configuration for every notebook: a rejected value is an error before anything runs."""
        for params in self.parameter_sets():
            folder = self.sweep_dir / run_id(params)
            for nb in self.notebooks:
                try:
                    notebook_config(nb, self.profile, self.notebook_overrides(nb, params, folder))
                except (ValueError, TypeError, KeyError) as exc:
                    raise ValueError(f"{self.source}: run {run_id(params)}, notebook {nb}: {exc}") from None


def _slug(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "+".join(_slug(v) for v in value) or "none"
    if isinstance(value, dict):
        return ".".join(f"{k}={_slug(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (int, float)):
        return repr(value)
    return re.sub(r"[^A-Za-z0-9.+=-]+", "-", str(value)).strip("-") or "x"


def run_id(params: dict[str, Any], max_len: int = 100) -> str:
    """A readable, stable folder name for one run's swept parameters (sorted by name): ``c_loc-1.0_rank-32``; a
    long one is cut and ends with a hash of the parameters; no swept parameters give ``default``."""
    if not params:
        return "default"
    text = "_".join(f"{k}-{_slug(params[k])}" for k in sorted(params))
    if len(text) <= max_len:
        return text
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{text[:max_len - 9]}~{digest}"


# --------------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def run_params(cfg: SweepConfig, params: dict[str, Any]) -> dict[str, Any]:
    """What ``params.json`` of a run holds (and what a rerun must match)."""
    return json.loads(json.dumps({"run_id": run_id(params), "profile": cfg.profile, "notebooks": list(cfg.notebooks),
                                  "swept": params, "fixed": cfg.fixed}, default=str))


def failure(exc: BaseException, notebook: str) -> dict[str, Any]:
    """Notebook, cell and the error's last line of a failed execution (papermill's error carries the cell)."""
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    lines = [ln for ln in str(evalue).strip().splitlines() if ln.strip()]
    return {"notebook": notebook, "cell": getattr(exc, "exec_count", None),
            "error": f"{ename}: {lines[-1] if lines else ''}".strip()}


def execute_run(cfg: SweepConfig, params: dict[str, Any],
                execute: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Execute every notebook of one run into its folder; the status (``done`` or ``failed`` with where and why)."""
    folder = cfg.sweep_dir / run_id(params)
    if execute is None:
        execute = run_notebook
        prepare_models(cfg.notebooks, cfg.profile, {**cfg.fixed, **params})  # GGUF conversion here, not on a page
    _write_json(folder / "params.json", run_params(cfg, params))
    started = time.time()
    status: dict[str, Any] = {"run_id": run_id(params), "state": DONE}
    for nb in cfg.notebooks:
        try:
            execute(nb, cfg.profile, cfg.notebook_overrides(nb, params, folder), output_dir=folder, runs_dir=folder)
        except Exception as exc:  # noqa: BLE001 - a failed run is recorded; the sweep goes on
            status.update(state=FAILED, failure=failure(exc, nb))
            break
    status["wall_s"] = round(time.time() - started, 1)
    _write_json(folder / "status.json", status)
    return status


def run_row(params: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """One line of the runs' table: id, swept values, state and where a failed run failed."""
    return {"run_id": run_id(params), **{k: _cell(v) for k, v in params.items()}, "state": status["state"],
            **{f"failed_{k}": v for k, v in (status.get("failure") or {}).items()}}


def run_sweep(cfg: SweepConfig, execute: Callable[..., Any] | None = None,
              log: Callable[[str], None] = print) -> pd.DataFrame:
    """Run every parameter set not finished yet (failed ones again), then aggregate; the runs' table."""
    cfg.check()
    rows = []
    for params in cfg.parameter_sets():
        rid = run_id(params)
        folder = cfg.sweep_dir / rid
        old = _read_json(folder / "params.json")
        if old is not None and old != run_params(cfg, params):
            raise ValueError(f"{display_path(folder)} holds a run with other settings ({old}); use another "
                             "sweep_dir or remove the folder")
        status = _read_json(folder / "status.json")
        if status and status.get("state") == DONE:
            log(f"[instructedit-sweep] {rid}: done before, skipped")
        else:
            log(f"[instructedit-sweep] {rid}: executing {', '.join(cfg.notebooks)} ({cfg.profile})")
            status = execute_run(cfg, params, execute)
            where = status.get("failure")
            log(f"[instructedit-sweep] {rid}: {status['state']} in {status['wall_s'] / 60:.1f} min"
                + (f" — {where['notebook']}, cell {where['cell']}: {where['error']}" if where else ""))
        rows.append(run_row(params, status))
    runs = pd.DataFrame(rows)
    aggregate(cfg, runs)
    return runs


# --------------------------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------------------------


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def collect(cfg: SweepConfig, runs: pd.DataFrame) -> pd.DataFrame:
    """One long table of every finished run's ``*summary.csv`` rows: run id, swept parameters, notebook, source
    (the summary's folder in the run), the summary's group columns, ``metric``, ``mean``, ``ci_low``, ``ci_high``,
    ``n``."""
    frames = []
    swept = cfg.swept()
    for run in runs[runs["state"] == DONE].itertuples(index=False):
        run = run._asdict()
        folder = cfg.sweep_dir / run["run_id"]
        for nb in cfg.notebooks:
            for path in sorted((folder / nb).rglob("*summary.csv")):
                df = pd.read_csv(path, index_col=0)
                if not set(STATS) <= set(df.columns):
                    raise ValueError(f"{path}: a summary needs the columns {STATS}, has {list(df.columns)}")
                source = path.parent.relative_to(folder).as_posix()
                frames.append(df.assign(run_id=run["run_id"], notebook=nb, source=source,
                                        **{k: _cell(run.get(k)) for k in swept}))
    if not frames:
        return pd.DataFrame(columns=["run_id", *swept, "notebook", "source", *STATS])
    long = pd.concat(frames, ignore_index=True)
    groups = [c for c in long.columns if c not in {"run_id", *swept, "notebook", "source", *STATS}]
    return long[["run_id", *swept, "notebook", "source", *groups, *STATS]]


def report_rows(cfg: SweepConfig, long: pd.DataFrame) -> pd.DataFrame:
    """The rows of the report's metric matching its ``where``."""
    rep = cfg.report
    missing = [k for k in rep.where if k not in long.columns]
    if missing:
        raise ValueError(f"{cfg.source}: report.where names {missing}, not columns of the summaries "
                         f"({list(long.columns)})")
    part = long[long["metric"] == rep.metric]
    for key, value in rep.where.items():
        part = part[part[key].astype(str) == str(value)]
    return part


def plot_report(cfg: SweepConfig, rows: pd.DataFrame):
    """The report's metric against ``x`` (a line per ``hue``, a panel per ``col``) with the runs' 95% CIs; rows
    that do not name one point per ``x``/``hue``/``col`` are an error saying which columns still vary."""
    rep = cfg.report
    x = rep.x or cfg.swept()[0]
    keys = [k for k in (x, rep.hue, rep.col) if k]
    dup = rows.duplicated(keys)
    if dup.any():
        varying = [c for c in rows.columns if c not in (*keys, *STATS) and rows[c].nunique() > 1]
        raise ValueError(f"{cfg.source}: several summary rows per {keys} for {rep.metric}; they differ in "
                         f"{varying}: narrow report.where or set report.hue/col")
    return plot_sweep(rows, rep.metric, x, rep.hue, rep.col,
                      title=f"{cfg.name}: {rep.metric}" + (f" where {rep.where}" if rep.where else ""))


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def aggregate(cfg: SweepConfig, runs: pd.DataFrame) -> dict[str, Path]:
    """Write ``sweep_runs.csv``, ``sweep_summary.csv``, ``sweep_summary.md`` and the report's figure."""
    cfg.sweep_dir.mkdir(parents=True, exist_ok=True)
    out = {"runs": cfg.sweep_dir / "sweep_runs.csv", "summary": cfg.sweep_dir / "sweep_summary.csv",
           "markdown": cfg.sweep_dir / "sweep_summary.md"}
    runs.to_csv(out["runs"], index=False)
    long = collect(cfg, runs)
    long.to_csv(out["summary"], index=False)
    rows = report_rows(cfg, long) if len(long) else long
    shown = rows.assign(**{c: (rows[c] * 100).round(1) for c in ("mean", "ci_low", "ci_high")}) \
        if is_fraction(cfg.report.metric) else rows.round({"mean": 4, "ci_low": 4, "ci_high": 4})
    text = [f"# Sweep `{cfg.name}` ({cfg.profile} profile)", "",
            f"Notebooks: {', '.join(cfg.notebooks)}. Fixed: `{json.dumps(cfg.fixed)}`.", "", "## Runs", "",
            _markdown(runs), "", f"## {cfg.report.metric}" + (f" where `{json.dumps(cfg.report.where)}`"
                                                              if cfg.report.where else ""), ""]
    text.append(_markdown(shown.drop(columns=["notebook"])) if len(shown) else "No finished run has this metric.")
    if len(rows):
        import matplotlib.pyplot as plt

        fig = plot_report(cfg, rows)
        out["figure"] = cfg.sweep_dir / f"sweep_{_slug(cfg.report.metric.replace('/', '-'))}.png"
        fig.savefig(out["figure"], dpi=110)
        plt.close(fig)
        text += ["", f"![{cfg.report.metric}]({out['figure'].name})"]
    out["markdown"].write_text("\n".join(text) + "\n")
    return out


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructedit-sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="the sweep file (YAML), e.g. sweeps/ci_edit_lr.yaml")
    parser.add_argument("--sweep-dir", type=Path, help="where the runs go (default: the file's, else runs/sweeps/NAME)")
    parser.add_argument("--dry-run", action="store_true", help="check the sweep and list its runs; execute nothing")
    parser.add_argument("--aggregate-only", action="store_true", help="only gather the finished runs' summaries")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = SweepConfig.load(args.sweep, args.sweep_dir)
        cfg.check()
    except (ValueError, FileNotFoundError) as exc:
        print(f"instructedit-sweep: error: {exc}")
        return 2
    if args.dry_run:
        for params in cfg.parameter_sets():
            print(f"{display_path(cfg.sweep_dir / run_id(params))}: {json.dumps({**cfg.fixed, **params})}")
        return 0
    if args.aggregate_only:
        runs = pd.DataFrame([run_row(p, _read_json(cfg.sweep_dir / run_id(p) / "status.json") or {"state": "not run"})
                             for p in cfg.parameter_sets()])
        out = aggregate(cfg, runs)
    else:
        runs = run_sweep(cfg)
        out = {k: cfg.sweep_dir / v for k, v in (("summary", "sweep_summary.csv"), ("markdown", "sweep_summary.md"))}
    failed = runs[runs["state"] != DONE]
    print(f"[instructedit-sweep] {len(runs) - len(failed)}/{len(runs)} runs finished; "
          + ", ".join(f"{k}: {display_path(v)}" for k, v in out.items()))
    return 1 if len(failed) else 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Report", "SweepConfig", "run_id", "run_sweep", "execute_run", "aggregate", "collect", "main"]
