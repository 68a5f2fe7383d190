"""`launch/sweep.py plan|submit|status SWEEP.yaml`: the command line over this package."""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import sys
import warnings
from pathlib import Path

from tabulate import tabulate

from . import slurm, status as status_mod
from .config import load_sweep
from .errors import SweepError
from .local import LocalExecutor, local_command
from .matrix import expand_runs
from .plan import format_plan, plan_rows


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", type=Path, help="sweep file (launch/sweeps/*.yaml)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="folder of the run directories (default: output_dir of the sweep file)")
    parser.add_argument("--profile", default=None,
                        help="cluster profile name (slurm/profiles/NAME.yaml) or YAML path; "
                             "overrides the sweep file's 'cluster'")
    parser.add_argument("--only", action="append", default=None, metavar="GLOB",
                        help="only runs whose name matches this glob (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch/sweep.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="table of runs: N, D, FLOPs, resources, estimated GPU-hours")
    _common(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    p = sub.add_parser("submit", help="launch the runs that are not finished or running")
    _common(p)
    p.add_argument("--executor", choices=("slurm", "local"), required=True)
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be submitted (Slurm: also write the scripts) and change nothing")
    p.add_argument("--parallel", type=int, default=1, metavar="K",
                   help="local executor: runs at once (default 1)")
    p.add_argument("--python", default=sys.executable,
                   help="local executor: the interpreter for launch/pretrain.py (default: this one)")
    p.add_argument("--max-requeues", type=int, default=5,
                   help="local executor: restarts of a run that exits 3 (checkpoint saved) (default 5)")
    p.add_argument("--no-progress", action="store_true", help="local executor: no progress bar")
    p.add_argument("--repo-dir", type=Path, default=None,
                   help="checkout whose launch/pretrain.py runs (default: the profile's repo_dir "
                        "for Slurm, this checkout for local)")

    p = sub.add_parser("status", help="per run: pending/running/finished/failed, last loss, progress")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--fit", action="store_true",
                   help="also fit the compression law to the finished runs, with diagnostics, and "
                        "mark the EPMs that are still unidentified")
    p.add_argument("--fit-bootstrap", type=int, default=200, metavar="B",
                   help="with --fit: bootstrap resamples (default 200; 0 = no intervals)")

    p = sub.add_parser("suggest", help="the next runs: those that shrink the widest EPM intervals "
                                       "most per GPU-hour, written as a sweep file for submit")
    _common(p)
    p.add_argument("--budget-gpu-hours", type=float, required=True, metavar="H",
                   help="GPU-hours (task-hours on CPU profiles) the suggested runs may cost in all")
    p.add_argument("--out", type=Path, default=None,
                   help="sweep file to write (default: SWEEP_STEM.suggested.yaml in the current folder)")
    p.add_argument("--resamples", type=int, default=30, metavar="B",
                   help="bootstrap resamples the candidates are simulated on (default 30)")
    p.add_argument("--candidates", type=int, default=6, metavar="K",
                   help="candidates simulated per pick, the best K of a linearised ranking (default 6)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and simulation seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _select(runs, patterns):
    if not patterns:
        return runs
    chosen = [r for r in runs if any(fnmatch.fnmatch(r.name, p) for p in patterns)]
    if not chosen:
        raise SweepError(f"--only {' '.join(patterns)} matches none of the {len(runs)} runs "
                         f"(e.g. {runs[0].name if runs else '-'})")
    return chosen


def _statuses(sweep, runs):
    entries = [(r.name, sweep.output_dir / r.name, r.train_iters) for r in runs]
    return status_mod.collect_status(entries, slurm.read_queue, slurm.inspect_job)


def cmd_plan(sweep, runs, args) -> int:
    print(format_plan(sweep, plan_rows(sweep, runs), args.format))
    return 0


def cmd_status(sweep, runs, args) -> int:
    statuses = _statuses(sweep, runs)
    rows = status_mod.status_rows(statuses)
    counts = status_mod.summarize(statuses)
    fit = None
    if args.fit:
        from .live_fit import finished_run_dirs, fit_finished

        if args.fit_bootstrap < 0 or args.fit_bootstrap == 1:
            raise SweepError(f"--fit-bootstrap must be 0 (off) or at least 2, got {args.fit_bootstrap}")
        fit = fit_finished(finished_run_dirs(sweep, statuses), sweep.formats,
                           bootstrap=args.fit_bootstrap, progress=not args.json)
    if args.json:
        raw = [{**dataclasses.asdict(s), "progress": s.progress} for s in statuses]
        out = {"sweep": sweep.name, "output_dir": str(sweep.output_dir), "counts": counts, "runs": raw}
        if fit is not None:
            out["fit"] = fit
        print(json.dumps(out, indent=2))
    else:
        print(f"sweep {sweep.name}: {len(rows)} runs in {sweep.output_dir}")
        print(tabulate(rows, headers="keys", disable_numparse=True))
        print(", ".join(f"{n} {state}" for state, n in counts.items()))
        if fit is not None:
            from .live_fit import format_live_fit
            print(format_live_fit(fit), end="")
    return 0


def _check_output_dir(sweep) -> None:
    """An unwritable output folder is found before anything is submitted."""
    from megatron_csl.training.preflight import NotWritableError, check_writable

    try:
        check_writable(sweep.output_dir, "output_dir")
    except NotWritableError as e:
        raise SweepError(str(e)) from None


def cmd_submit(sweep, runs, args) -> int:
    _check_output_dir(sweep)
    statuses = {s.name: s for s in _statuses(sweep, runs)}
    todo = [r for r in runs if statuses[r.name].state in status_mod.RESUBMIT_STATES]
    for r in runs:
        s = statuses[r.name]
        if s.state not in status_mod.RESUBMIT_STATES:
            print(f"skip {r.name}: {s.state}" + (f" ({s.job})" if s.job else ""))
        elif s.state != status_mod.UNSUBMITTED:
            ckpt = f", resumes from step {s.checkpoint_step}" if s.checkpoint_step else ""
            print(f"resubmit {r.name}: {s.state}{ckpt}" + (f" ({s.detail})" if s.detail else ""))
    if not todo:
        print(f"nothing to submit: {', '.join(f'{n} {k}' for k, n in status_mod.summarize(list(statuses.values())).items())}")
        return 0

    if args.executor == "slurm":
        scripts = slurm.build_scripts(sweep, todo, repo_dir=args.repo_dir)
        folder = sweep.output_dir / slurm.SWEEP_META_DIR / ("dry-run" if args.dry_run else "scripts")
        for script in scripts:
            slurm.write_script(script, folder)
            what = f"array of {len(script.runs)}" if script.is_array else "job"
            if args.dry_run:
                print(f"would submit ({what}): {slurm.sbatch_command(script.path)}")
                for run in script.runs:
                    print(f"    {run.name}")
            else:
                ids = slurm.submit_script(script, sweep)
                print(f"submitted {script.job_name} ({what}) as job {ids[0].split('_')[0]}: {script.path}")
                for run, job in zip(script.runs, ids):
                    print(f"    {job}  {run.name}")
        return 0

    if args.dry_run:
        for run in todo:
            print(f"would run {run.name}: {' '.join(local_command(run, sweep, args.python))}")
        return 0
    executor = LocalExecutor(sweep, todo, parallel=args.parallel, python=args.python,
                             repo_dir=args.repo_dir or slurm.REPO_ROOT,
                             max_requeues=args.max_requeues, progress=not args.no_progress)
    results = executor.run()
    finished = sum(1 for rc in results.values() if rc == 0)
    mine = len(todo) - len(executor.skipped)   # the others were run by another submit
    taken = f" ({len(executor.skipped)} run by another submit)" if executor.skipped else ""
    print(f"sweep {sweep.name}: {finished}/{mine} runs finished this time{taken}")
    return 0 if finished == mine else 1


def cmd_suggest(sweep, runs, args) -> int:
    from megatron_csl.scaling.planner import format_plan
    from .suggest import run_suggest

    out = args.out or Path.cwd() / f"{sweep.source.stem}.suggested.yaml"
    plan = run_suggest(sweep, runs, _statuses(sweep, runs), args.budget_gpu_hours, out,
                       resamples=args.resamples, top_k=args.candidates, seed=args.seed,
                       progress=not args.no_progress)
    print(format_plan(plan), end="")
    if plan.picks:
        print(f"wrote {out}: submit it with launch/sweep.py submit {out} --executor ...")
    else:
        print("nothing fits the budget; no file written")
    return 0


COMMANDS = {"plan": cmd_plan, "submit": cmd_submit, "status": cmd_status, "suggest": cmd_suggest}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Importing megatron-core (for the model ladder) warns about TE/Apex; irrelevant to a sweep.
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    try:
        sweep = load_sweep(args.sweep, output_dir=args.output_dir, cluster=args.profile)
        from .suggest import select_listed
        runs = _select(select_listed(expand_runs(sweep), sweep.runs), args.only)
        return COMMANDS[args.command](sweep, runs, args)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
