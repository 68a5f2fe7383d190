"""``tools/fit_laws.py``: fit a scaling law to finished runs and report EPMs (docs/fitting.md)."""
from __future__ import annotations

import argparse
import sys

from .bootstrap import bootstrap_fit
from .diagnostics import diagnose_fit
from .fitting import FitOptions, fit_runs
from .formats import law_inputs
from .laws import LAW_NAMES
from .parallel import default_workers
from .predict import parse_predict_arg, predict
from .report import build_report, check_finite, format_markdown, format_text
from .validation import check_laws, check_predictions, predict_values_as_options
from .runs import canonical_spec, collect_runs, read_epoch_chinchilla
from .outputs import write_json, write_text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fit_laws.py",
        description="Fit L = a/(N*eff(C))^b + c/D^d + e (or the plain Chinchilla law, or the "
                    "capacity law) to finished runs; report every format's effective parameter "
                    "multiplier (EPM) with bootstrap intervals.")
    p.add_argument("paths", nargs="*", metavar="RUN_DIR_OR_ROOT",
                   help="run directories, or roots searched recursively for run.json + result.json")
    p.add_argument("--table", action="append", default=[], metavar="CSV",
                   help="CSV with columns N,D,loss[,compression] (absent/empty compression = dense); repeatable")
    p.add_argument("--epoch-csv", action="append", default=[], metavar="CSV",
                   help="Epoch AI's digitised Chinchilla points (columns 'Model Size', 'Training FLOP', "
                        "loss; D = FLOP/(6N); the 5 highest losses dropped as Epoch did)")
    p.add_argument("--law", choices=LAW_NAMES, default="compression",
                   help="compression (default): one free EPM per format; chinchilla: E + A/N^alpha + "
                        "B/D^beta on one format; capacity: EPM = Lc*tanh(F*log_1/4 GMSE)^C; "
                        "precision (Kumar et al. 2024): EPM = (1-e^{-P/gamma}) per part, P its bits")
    p.add_argument("--format", dest="only", action="append", default=[], metavar="SPEC",
                   help="fit only runs of this format (repeatable); e.g. --law chinchilla --format dense")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples over runs for 95%% intervals (0 = none; default 1000)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="bootstrap seed (default 0)")
    p.add_argument("--bootstrap-unit", choices=("run", "size"), default="run",
                   help="resample runs within each format (run, default) or whole model sizes with "
                        "every format's run at that size (size: the paired bootstrap for sweeps "
                        "whose formats share their sizes)")
    p.add_argument("--json", metavar="OUT", help="write every number as JSON")
    p.add_argument("--markdown", metavar="OUT", help="write the report as Markdown")
    p.add_argument("--plot-dir", metavar="DIR",
                   help="write loss_vs_N.png, epm.png, pareto.png here")
    p.add_argument("--predict", nargs="+", action="extend", default=[], metavar="N,D,SPEC",
                   help="print predicted losses (and the Chinchilla-optimal token count); every "
                        "value is checked before the fit starts")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 4 when the fit has any diagnostic (outputs still written)")
    p.add_argument("--compare-laws", metavar="LAW,LAW[,...]",
                   help="also fit these laws (e.g. compression,capacity,precision) and print a "
                        "table of RMSE(log), leave-one-size-out error and AIC per law")
    p.add_argument("--holdout-ratio", type=float, metavar="R",
                   help="also fit on the runs at other tokens-per-parameter ratios and report the "
                        "prediction error on the runs at ratio R, per format")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the bootstrap (default: all usable cores)")
    p.add_argument("--refine-top", default="64", metavar="K|all",
                   help="run L-BFGS-B from the K best of the 4,500 grid starts (default 64), "
                        "or from all of them")
    p.add_argument("--extra-starts", type=int, default=2, metavar="K",
                   help="per bootstrap resample, also start from up to K other competitive local "
                        "optima of the full fit (default 2)")
    p.add_argument("--ratio-tolerance", type=float, default=1.25, metavar="X",
                   help="D counts as a function of N (reduced form) when every run is within this "
                        "factor of D = k*N^m (default 1.25)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _options(args) -> FitOptions:
    if args.refine_top == "all":
        refine = None
    else:
        try:
            refine = int(args.refine_top)
        except ValueError:
            raise ValueError(f"--refine-top must be a positive integer or 'all', got {args.refine_top!r}") from None
        if refine < 1:
            raise ValueError(f"--refine-top must be a positive integer or 'all', got {refine}")
    if args.ratio_tolerance <= 1.0:
        raise ValueError(f"--ratio-tolerance must be > 1, got {args.ratio_tolerance}")
    return FitOptions(refine_top=refine, ratio_tolerance=args.ratio_tolerance)


def _check_outputs(args) -> None:
    """Unwritable --json/--markdown files are found before the (long) fit, not after it."""
    from megatron_csl.training.preflight import output_file_problem

    for flag in ("json", "markdown"):
        path = getattr(args, flag, None)
        problem = output_file_problem(path, f"--{flag}") if path else None
        if problem:
            raise ValueError(problem)


def _load(args):
    runs, skipped = collect_runs(args.paths, args.table)
    for path in args.epoch_csv:
        epoch = read_epoch_chinchilla(path)
        runs = _concat(runs, epoch)
    if args.only:
        keep = {canonical_spec(s) for s in args.only}
        runs = runs.subset([f in keep for f in runs.formats])
    return runs, skipped


def _concat(a, b):
    import numpy as np
    from .problem import RunTable

    return RunTable(np.concatenate([a.N, b.N]), np.concatenate([a.D, b.D]),
                    np.concatenate([a.loss, b.loss]),
                    np.concatenate([a.formats, b.formats]), list(a.sources) + list(b.sources))


def run(args) -> int:
    options = _options(args)
    _check_outputs(args)
    if args.bootstrap < 0 or args.bootstrap == 1:
        raise ValueError(f"--bootstrap must be 0 (off) or at least 2, got {args.bootstrap}")
    predictions = []
    for text in args.predict:
        N, D, spec = parse_predict_arg(text)
        try:
            predictions.append((N, D, canonical_spec(spec), text))
        except ValueError as e:
            raise ValueError(f"--predict {text!r}: {e}") from None
    compare = None
    if args.compare_laws:
        from .compare import parse_law_list
        compare = parse_law_list(args.compare_laws)
    workers = args.workers or default_workers()
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    runs, skipped = _load(args)
    if len(runs) == 0:
        reasons = "".join(f"\n  {s.source}: {s.reason}" for s in skipped)
        raise ValueError("no usable runs in the inputs" + (f"; skipped:{reasons}" if reasons else ""))
    # everything the command line asks for is checked here, before any fit or bootstrap runs
    check_predictions(args.law, runs, predictions)
    if compare:
        check_laws(compare, runs)
    if args.holdout_ratio is not None:
        from .holdout import check_holdout
        check_holdout(runs, args.holdout_ratio, options)
    inputs = law_inputs(args.law, runs.format_names())
    progress = not args.quiet

    result = fit_runs(args.law, runs, options=options, workers=workers, progress=progress, **inputs)
    boot = None
    if args.bootstrap:
        boot = bootstrap_fit(result, args.bootstrap, args.seed, workers=workers,
                             extra_starts=args.extra_starts, options=options, progress=progress,
                             unit=args.bootstrap_unit)
    from .loso import leave_one_size_out
    # Leave-one-size-out refits once per size: computed once for the diagnostics and the table.
    loso = leave_one_size_out(result, options) if boot or compare else None
    diagnostics = diagnose_fit(result, boot, loso if boot else ())
    report = build_report(result, boot, skipped, diagnostics=diagnostics)
    if compare:
        from .compare import compare_laws
        report["law_comparison"] = compare_laws(compare, runs, options, workers, progress,
                                                fitted={args.law: result}, loso={args.law: loso})
    if args.holdout_ratio is not None:
        from .holdout import holdout_report
        report["holdout"] = holdout_report(args.law, runs, args.holdout_ratio, options, workers,
                                           progress)
    if predictions:
        report["predictions"] = []
        for N, D, spec, _ in predictions:
            report["predictions"].append(predict(result, N, D, spec).as_dict())
    check_finite(report)

    sys.stdout.write(format_text(report))
    if compare:
        from .compare import format_comparison
        sys.stdout.write(format_comparison(report["law_comparison"]))
    if args.holdout_ratio is not None:
        from .holdout import format_holdout
        sys.stdout.write(format_holdout(report["holdout"]))
    if predictions:
        sys.stdout.write(format_predictions(report["predictions"]))
    if args.json:
        write_json(args.json, report)
    if args.markdown:
        write_text(args.markdown, format_markdown(report))
    if args.plot_dir:
        from .plots import write_plots
        for path in write_plots(result, report, args.plot_dir):
            print(f"wrote {path}")
    if args.strict and report["diagnostics"]:
        print(f"fit_laws.py: --strict: {len(report['diagnostics'])} diagnostic(s); exit 4",
              file=sys.stderr)
        return STRICT_EXIT
    return 0


STRICT_EXIT = 4


def format_predictions(preds) -> str:
    lines = ["", "predictions:"]
    for p in preds:
        line = (f"  N={p['N']:.4g} D={p['D']:.4g} {p['spec']}: eff {p['eff']:.4g}, "
                f"loss {p['loss']:.5g}")
        if p["optimal_D"] is not None:
            line += (f"; Chinchilla-optimal D = {p['optimal_D']:.4g} (dense optimum at "
                     f"N*eff = {p['N'] * p['eff']:.4g}; loss there {p['loss_at_optimal_D']:.5g})")
        lines.append(line)
        if p["note"]:
            lines.append(f"    note: {p['note']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(predict_values_as_options(sys.argv[1:] if argv is None else argv))
    if not (args.paths or args.table or args.epoch_csv):
        parser.error("give run directories/roots, --table CSV or --epoch-csv CSV")
    try:
        return run(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"fit_laws.py: error: {e}", file=sys.stderr)
        return 2
