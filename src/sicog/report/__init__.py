"""Reporting: the per-cycle HTML report (tables + embedded matplotlib PNGs) and the multi-seed evidence table.

`write_report` turns one run's metrics, scores and losses into a self-contained report.html;
`write_evidence` turns the metrics of several seeds into the mean ± std table the README quotes.
"""

from sicog.report.evidence import evidence_markdown, evidence_table, write_evidence
from sicog.report.html import render_report, write_report

__all__ = ["evidence_markdown", "evidence_table", "render_report", "write_evidence", "write_report"]
