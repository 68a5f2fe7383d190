"""``tools/capacity.py``: bits, Gaussian MSE and predicted EPM of formats (docs/fitting.md)."""
from __future__ import annotations

import argparse
import json
import sys

from .capacity import calibrate, describe, measured_epms


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="capacity.py",
        description="Per format: weight/activation bits, Gaussian MSE (GMSE) and the EPM the "
                    "capacity law predicts, Lc*tanh(F*log_1/4 GMSE)^C per compressed part.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="compression specs, e.g. w4 w4a4 s50+w4 fp8")
    p.add_argument("--json", action="store_true",
                   help="print only a JSON list, one object per spec")
    p.add_argument("--calibrate", metavar="FIT_JSON",
                   help="refit (Lc, F, C) on the EPMs measured in a fit_laws.py --json file and "
                        "predict with them; refuses EPMs the fit's diagnostics put in doubt")
    p.add_argument("--force", action="store_true",
                   help="with --calibrate: use EPMs flagged by the fit's diagnostics anyway")
    return p


def flagged_epms(fit_json_path, specs) -> dict:
    """{spec: [diagnostic lines]} of the measured EPMs the fit's diagnostics concern."""
    from .diagnostics import concerns_epm

    with open(fit_json_path) as f:
        diags = json.load(f).get("diagnostics") or []
    out = {}
    for spec in specs:
        hits = [f"[{d.get('code')}] {d.get('message')}" for d in diags
                if isinstance(d, dict) and concerns_epm(d, spec)]
        if hits:
            out[spec] = hits
    return out


def run(args) -> int:
    from megatron_csl.compression import CapacityParams

    if args.force and not args.calibrate:
        raise ValueError("--force only applies to --calibrate FIT_JSON")
    measured = None
    if args.calibrate:   # checked before any work: the file, its EPMs and its diagnostics
        from .runs import canonical_spec
        raw = measured_epms(args.calibrate)
        flagged = flagged_epms(args.calibrate, raw)
        if flagged and not args.force:
            detail = "".join(f"\n  {spec}: " + "\n    ".join(lines) for spec, lines in flagged.items())
            raise ValueError(f"{args.calibrate}: the fit's diagnostics put the EPM(s) of "
                             f"{', '.join(flagged)} in doubt; refusing to calibrate on them (fix the "
                             f"data or refit, or pass --force to use them anyway):{detail}")
        for spec in flagged:
            print(f"capacity.py: warning: --force: calibrating on the flagged EPM of {spec}",
                  file=sys.stderr)
        measured = {canonical_spec(s): v for s, v in raw.items()}
    rows = [describe(s) for s in args.specs]  # SpecError (ValueError) on a bad spec
    calib = None
    if measured is not None:
        from .formats import gmse_parts
        calib = calibrate(measured, {s: gmse_parts(s) for s in measured})
        for row in rows:
            row["default_epm"] = row["predicted_epm"]
            row["predicted_epm"] = describe(row["spec"], calib.params())["predicted_epm"]
            m = measured.get(row["canonical"])
            row["measured_epm"] = None if m is None else m["value"]
            row["capacity_params"] = {"Lc": calib.Lc, "F": calib.F, "C": calib.C}
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    p = CapacityParams() if calib is None else calib.params()
    if calib is not None:
        print(f"calibrated on {len(calib.formats)} measured format(s) ({', '.join(calib.formats)}): "
              f"fitted {', '.join(calib.fitted)}; Lc={calib.Lc:.4g} F={calib.F:.4g} C={calib.C:.4g}; "
              f"RMSE(log EPM) {calib.rmse_log:.3g}")
    else:
        print(f"capacity law: Lc={p.Lc:g} F={p.F:g} C={p.C:g} (reference fit; --calibrate FIT_JSON to refit)")
    header = ["spec", "canonical", "bits W/A", "GMSE (W)", "GMSE (A)", "predicted EPM"]
    if calib is not None:
        header += ["reference EPM", "measured EPM"]
    table = []
    for r in rows:
        line = [r["spec"], r["canonical"], f"{r['w_bits']:g}/{r['a_bits']:g}",
                "-" if r["gmse_w"] is None else f"{r['gmse_w']:.5g}",
                "-" if r["gmse_a"] is None else f"{r['gmse_a']:.5g}",
                f"{r['predicted_epm']:.4f}"]
        if calib is not None:
            line += [f"{r['default_epm']:.4f}",
                     "-" if r["measured_epm"] is None else f"{r['measured_epm']:.4f}"]
        table.append(line)
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"capacity.py: error: {e}", file=sys.stderr)
        return 2
