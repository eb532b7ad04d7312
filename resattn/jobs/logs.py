"""What a job's files say about it: its log (head, tail, progress-bar redraws collapsed), the trainer's
``metrics.jsonl`` and, from both, how far it is (:func:`read_progress`). Read-only; standard library only."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from .store import Job, Progress

_PLAN = re.compile(r"(\d+) iterations \((\d+) per epoch, (\d+) epochs\)")
_BAR = re.compile(r"epoch (\d+)/(\d+):\s*\d+%\|[^|]*\|\s*(\d+)/(\d+) \[[^\]]*?,\s*([\d.]+)(it/s|s/it)")


def _read_head(path: Path, size: int = 32 * 1024) -> str:
    """The first ``size`` bytes of a file as text ('' if it cannot be read)."""
    try:
        with path.open("rb") as fh:
            return fh.read(size).decode("utf-8", "replace")
    except OSError:
        return ""


def _read_tail(path: Path, size: int = 64 * 1024) -> str:
    """The last ``size`` bytes of a file as text ('' if it cannot be read): a long log is never read whole."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def clean_log(text: str) -> list[str]:
    """Log lines as a terminal would show them: of a line rewritten with carriage returns (a progress bar), the
    last non-blank version."""
    lines = []
    for line in text.splitlines():
        pieces = [p for p in line.split("\r") if p.strip()]
        if pieces:
            lines.append(pieces[-1].rstrip())
    return lines


def job_log(job: Job) -> str:
    """The whole log of a job ('' before it started)."""
    try:
        return job.log_path.read_text(errors="replace")
    except OSError:
        return ""


def log_tail(job: Job, lines: int = 40) -> str:
    """The last ``lines`` lines of the job's log, progress-bar redraws collapsed."""
    return "\n".join(clean_log(_read_tail(job.log_path))[-lines:])


_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(\w*(?:Error|Exception|Interrupt))(?:: (.*))?$")


def failure_cause(job: Job) -> str | None:
    """Why the job's trainer failed, from its log: its own ``error: ...`` line, else the last exception a
    traceback names (``DataError: ...``), else None."""
    lines = clean_log(_read_tail(job.log_path))
    for line in reversed(lines):
        if line.startswith("error: "):
            return line.removeprefix("error: ").strip()
    for line in reversed(lines):
        found = _EXCEPTION.match(line.strip())
        if found:
            return found.group(1) + (f": {found.group(2)}" if found.group(2) else "")
    return None


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The trainer's ``metrics.jsonl`` lines (one per epoch); a half-written last line is skipped."""
    try:
        text = (folder / "metrics.jsonl").read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def read_progress(job: Job) -> Progress:
    """Progress 0–1, iteration, epochs and ETA, from ``metrics.jsonl`` and the progress bar in the log: the
    trainer's plan line gives the iteration count, its last bar the iteration and the rate."""
    metrics = read_metrics(job.folder)
    log = _read_tail(job.log_path) if job.state != "queued" else ""
    plan = _PLAN.findall(_read_head(job.log_path)) or _PLAN.findall(log) if log else []
    total, per_epoch, epochs = (int(v) for v in plan[-1]) if plan else (None, None, None)
    last = metrics[-1] if metrics else {}
    iteration = int(last.get("iteration", 0))
    rate = None
    bars = _BAR.findall(log)
    if bars and per_epoch:
        epoch, _, done, _, speed, unit = bars[-1]
        iteration = max(iteration, (int(epoch) - 1) * per_epoch + int(done))
        rate = float(speed) if unit == "it/s" else 1 / max(float(speed), 1e-9)
    fraction = iteration / total if total else float(last.get("progress", 0.0))
    if job.state == "succeeded":
        fraction = 1.0
    eta = None
    if job.state == "running" and total:
        if rate:
            eta = (total - iteration) / rate
        elif fraction > 0 and job.started:
            eta = (time.time() - job.started) * (1 - fraction) / fraction
    return Progress(min(1.0, fraction), iteration, total, len(metrics), epochs, eta, rate)
