"""A human-readable summary of a preprocessing job (what the command line prints at the end)."""
from __future__ import annotations

from megatron_csl.data.preprocess.pipeline import PreprocessReport


def format_report(report: PreprocessReport, examples_per_shard: int = 3) -> str:
    lines = []
    if report.already_complete:
        lines.append(f"already complete (same inputs, tokenizer and options): {report.dataset_prefix}")
    lines.append(
        f"wrote {report.dataset_prefix}.bin/.idx: {report.documents:,} documents, "
        f"{report.tokens:,} tokens ({report.dtype}, vocabulary {report.vocab_size:,})"
    )
    lines.append(
        f"read {report.lines:,} lines in {report.units} unit(s)"
        + (f", {report.units_resumed} resumed from an earlier run" if report.units_resumed else "")
        + f"; {report.seconds:.1f} s"
    )
    if report.empty_documents or report.blank_lines:
        lines.append(
            f"skipped {report.empty_documents:,} documents with empty text and "
            f"{report.blank_lines:,} blank lines"
        )
    if report.malformed:
        lines.append(f"skipped {report.malformed:,} malformed lines (use --strict to stop at one):")
        for path, entry in report.malformed_by_shard.items():
            shown = "; ".join(f"line {line}: {reason}"
                              for line, reason in entry["examples"][:examples_per_shard])
            lines.append(f"  {path}: {entry['malformed']:,} ({shown})")
    return "\n".join(lines)
