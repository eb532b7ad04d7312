"""The command line, ``python -m resattn.jobs {submit,list,show,cancel,logs}`` (and the internal
``_supervise ID`` that runs one job's supervisor). Trusted: it is not subject to :mod:`.access`."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import CANCEL_GRACE_S, ENV_DIR, ENV_MAX_RUNNING, JobError, jobs_dir
from .logs import clean_log, job_log
from .manager import JobManager
from .options import _option
from .store import Job, database_problem


def _print_table(manager: JobManager, jobs: Sequence[Job]) -> None:
    """``list`` without ``--json``: one line per job."""
    if not jobs:
        print(f"no jobs in {manager.root}")
        return
    print(f"{'id':>4}  {'state':<10}{'progress':>9}  {'device':<18}label")
    for job in jobs:
        p = manager.progress(job)
        print(f"{job.id:>4}  {job.state:<10}{p.fraction:>8.0%}  {job.device_label:<18}{job.label}")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m resattn.jobs``; options after ``submit`` that it does not know go to the trainer."""
    p = argparse.ArgumentParser(prog="python -m resattn.jobs", allow_abbrev=False,
                                description="Background fine-tuning jobs (resattn.train runs).")
    p.add_argument("--dir", help=f"jobs directory (default ${ENV_DIR} or ~/.cache/resattn/jobs)")
    p.add_argument("--max-running", type=int, help=f"jobs run at once (default ${ENV_MAX_RUNNING} or 1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="{submit,list,show,cancel,logs}")
    s = sub.add_parser("submit", allow_abbrev=False, help="queue a job; prints its id",
                       description="Queue a run of resattn.train; every other option is passed to it "
                       "(python -m resattn.train --help). --data may name a dataset of $RESATTN_DATASETS.")
    s.add_argument("--pair", action="store_true", help="submit an ARL and a NAL job on the same data, seed and budget")
    s.add_argument("--upload", help="a zip of images in class folders, checked and extracted into the job's folder")
    s.add_argument("--label", help="a label for the job list (default: made from the options)")
    s.add_argument("--candidates", nargs="*", default=None,
                   help="checkpoints to find the --pair counterpart of --init-from in "
                        "(default: the folder of --init-from)")
    ls = sub.add_parser("list", help="every job, newest first")
    ls.add_argument("--json", action="store_true", help="print JSON")
    show = sub.add_parser("show", help="one job")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true", help="print JSON")
    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("id", type=int)
    cancel.add_argument("--wait", type=float, default=CANCEL_GRACE_S + 5, help="seconds to wait for it to stop")
    logs = sub.add_parser("logs", help="a job's log")
    logs.add_argument("id", type=int)
    logs.add_argument("--lines", type=int, help="only the last N lines")
    for role in ("_supervise", "_guard"):  # internal: one job's supervisor and its guard (resattn.jobs.supervisor)
        sub.add_parser(role).add_argument("id", type=int)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (1, with the reason on stderr, for a refused request)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "submit":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command in ("_supervise", "_guard"):
        manager = JobManager(args.dir, max_running=args.max_running, reconcile=False)
        return manager.supervise(args.id) if args.command == "_supervise" else manager.guard(args.id)
    try:
        manager = JobManager(args.dir, max_running=args.max_running)
        if args.command == "submit":
            if args.pair:
                base = _option(rest, "--init-from")
                candidates = args.candidates if args.candidates is not None else (
                    sorted(Path(base).parent.glob("*.safetensors")) if base else [])
                jobs = manager.submit_pair(rest, candidates=candidates, owner="cli", upload=args.upload)
            else:
                jobs = [manager.submit(rest, owner="cli", upload=args.upload, label=args.label)]
            for job in jobs:
                print(job.id)
        elif args.command == "list":
            jobs = manager.list()
            if args.json:
                print(json.dumps([j.to_dict(manager.progress(j)) for j in jobs], indent=2))
            else:
                _print_table(manager, jobs)
        elif args.command == "show":
            manager.reconcile()
            job = manager.get(args.id)
            if args.json:
                print(json.dumps(job.to_dict(manager.progress(job)), indent=2))
            else:
                p = manager.progress(job)
                print(f"job {job.id}: {job.state}, {p.fraction:.0%} ({p.iteration}/{p.iterations or '?'} iterations), "
                      f"{job.device_label}\n{job.label}\nfolder: {job.folder}")
                if job.checkpoint:
                    print(f"checkpoint: {job.checkpoint}")
                if job.error:
                    print(f"error: {job.error}")
        elif args.command == "cancel":
            job = manager.cancel(args.id, wait=args.wait)
            print(f"job {job.id}: {job.state}")
        elif args.command == "logs":
            lines = clean_log(job_log(manager.get(args.id)))
            print("\n".join(lines[-args.lines:] if args.lines else lines))
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # resattn.archive.ArchiveError, a bad checkpoint
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as exc:
        print(f"error: {database_problem(jobs_dir(args.dir), exc)}", file=sys.stderr)
        return 1
    return 0

