"""Take a training run to a lent GPU and bring it back: ``python scripts/device_carry.py --help``.

A call to the lent GPU machine sends the working tree (tracked and untracked-not-ignored files) and carried
folders, 64 MiB in all, and the tracked files alone are about 56 MiB, 51 of them the shipped checkpoints. So:

1. ``pack --data cifar10-jpeg.zip`` writes the zip's images end to end into one file, the ignored
   ``carry/cifar10.pack`` (53.3 MiB for CIFAR-10, against 59.3 for the zip with its 60,000 headers; a folder of
   60,000 images costs a call far more than its bytes and was refused), and prints the call's budget, naming
   the tracked folders to leave behind; ``untrack FOLDER...`` takes them out of git's index for the call (the
   files stay here; a folder with uncommitted changes is refused) and ``retrack`` puts them back afterwards.
2. On the device, with ``carry`` carried: ``python scripts/device_carry.py rezip carry/cifar10.pack
   /tmp/cifar10-jpeg.zip`` rebuilds the zip (same members, names and CRC-32s, so the same listing, order and
   decoded-cache key as the original), then ``python scripts/train_gpu_set.py --data /tmp/cifar10-jpeg.zip
   --root /tmp/zoo --only NAME --deadline S --export $OUT`` trains until the deadline and exports the run's
   resumable files flat (``$OUT/NAME/``: state, metrics, log, config and, if it finished, the model).
3. ``unpack FILES/NAME`` installs what came back under ``--root`` (default ``~/.cache/resattn/zoo``), where
   ``scripts/train_zoo.py`` continues the run on the CPU. Files it replaces are moved aside, not deleted, and a
   returned state behind the local one is refused unless ``--force``: nothing trained is lost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resattn.data import read_member  # noqa: E402

#: What one device call may send: the working tree (tracked and untracked-not-ignored files) and carried paths.
DEVICE_LIMIT = 64 * 2**20
#: The files of a run that travel back and forth (the state lives in ``state/`` locally, beside them on return).
RUN_FILES = ("config.json", "metrics.jsonl", "train.log", "model.safetensors")
STATE = "state.safetensors"
REPO = Path(__file__).resolve().parents[1]
#: The most a pack's directory may expand to (a compressed directory could otherwise be a zip bomb).
MAX_DIRECTORY = 64 * 2**20
#: The first bytes of a pack (:func:`pack`): then the directory's length (8 bytes, little-endian), the directory
#: (``{"members": [[name, size, crc32], ...]}`` as zlib-compressed JSON: 0.6 MiB for CIFAR-10's 60,000 names
#: instead of 2.4) and the members' bytes end to end, in that order.
PACK_MAGIC = b"RESATTN-PACK-1\n"
#: Top-level entries a device call always needs: the code (``.`` is the files at the top).
KEEP = (".", "resattn", "scripts", "app")
#: The comment line before each ``.git/info/exclude`` pattern :func:`untrack` writes (git has no trailing
#: comments), so :func:`retrack` removes those alone.
MARK = "# device_carry.py untrack (retrack removes this line and the next)"


def travelling_bytes(repo: Path = REPO) -> dict[str, int]:
    """Bytes of the working tree a device call sends, by top-level folder: tracked files that exist and untracked
    files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout
    sizes: dict[str, int] = {}
    for name in filter(None, out.decode().split("\0")):
        path = repo / name
        if path.is_file():
            top = name.split("/", 1)[0] if "/" in name else "."
            sizes[top] = sizes.get(top, 0) + path.stat().st_size
    return sizes


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``: what carrying it costs."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@dataclass
class Budget:
    """What one device call would send: the working tree's bytes by top-level entry, the carried folder's bytes,
    and the tracked folders to untrack for the call (largest first) until the total fits the limit."""

    tree: dict[str, int]
    carried: int
    untrack: list[str]

    @property
    def total(self) -> int:
        return sum(size for top, size in self.tree.items() if top not in self.untrack) + self.carried

    def report(self) -> str:
        mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
        largest = sorted(self.tree.items(), key=lambda item: -item[1])[:4]
        lines = [f"tree {mib(sum(self.tree.values()))} ({', '.join(f'{k} {mib(v)}' for k, v in largest)}) + carried "
                 f"{mib(self.carried)} against the call's {mib(DEVICE_LIMIT)}"]
        if self.untrack:
            lines.append(f"untracking {' '.join(self.untrack)} for the call leaves {mib(self.total)}: "
                         f"python scripts/device_carry.py untrack {' '.join(self.untrack)} (and retrack after it)")
        if self.total > DEVICE_LIMIT:
            lines.append("it does not fit even so: carry less")
        return "\n".join(lines)


def budget(carried: Path, repo: Path = REPO) -> Budget:
    """The :class:`Budget` of a call that carries ``carried`` (a file or a folder). Code folders are never
    untracked."""
    tree = travelling_bytes(repo)
    size = carried.stat().st_size if carried.is_file() else folder_bytes(carried) if carried.exists() else 0
    plan = Budget(tree, size, [])
    for top, _ in sorted(tree.items(), key=lambda item: -item[1]):
        if plan.total > DEVICE_LIMIT and top not in KEEP:
            plan.untrack.append(top)
    return plan


def pack(data: Path, to: Path) -> None:
    """Write the files of the zip ``data`` end to end into the one file ``to`` behind a JSON directory of their
    names, sizes and CRC-32s (:data:`PACK_MAGIC`); :func:`rezip` rebuilds the zip. An existing ``to`` is kept."""
    if to.exists():
        print(f"{to} exists: kept as it is")
        return
    with zipfile.ZipFile(data) as zf:
        members = [info for info in zf.infolist() if not info.is_dir()]
        header = zlib.compress(json.dumps({"members": [[m.filename, m.file_size, m.CRC] for m in members]}).encode(), 9)
        to.parent.mkdir(parents=True, exist_ok=True)
        partial = to.with_name(to.name + ".tmp")
        with partial.open("wb") as fh:
            fh.write(PACK_MAGIC + len(header).to_bytes(8, "little") + header)
            for member in members:
                fh.write(read_member(zf, member.filename))
    partial.replace(to)
    print(f"packed {len(members)} files of {data} into {to} ({to.stat().st_size / 2**20:.1f} MiB)")


def _safe_name(name: object) -> bool:
    parts = Path(name).parts if isinstance(name, str) else ()
    return bool(parts) and not name.startswith(("/", "\\")) and ".." not in parts and ":" not in name  # type: ignore[union-attr]


def rezip(packed: Path, to: Path) -> int:
    """Rebuild the zip that :func:`pack` packed into ``packed``, as the new file ``to`` (members stored, names
    and order kept); returns the number of members. Raises ``SystemExit`` on a pack that is not one, is cut
    short, names a path outside the zip's tree or holds a member whose CRC-32 does not match."""
    with packed.open("rb") as fh:
        if fh.read(len(PACK_MAGIC)) != PACK_MAGIC:
            raise SystemExit(f"{packed} is not a pack written by device_carry.py pack")
        length = int.from_bytes(fh.read(8), "little")
        if not 0 < length <= packed.stat().st_size:
            raise SystemExit(f"{packed}: its directory's length ({length} bytes) does not fit the file")
        try:
            inflate = zlib.decompressobj()
            text = inflate.decompress(fh.read(length), MAX_DIRECTORY)
            if inflate.unconsumed_tail or not inflate.eof:
                raise ValueError(f"over {MAX_DIRECTORY} bytes expanded, or cut short")
            members = json.loads(text)["members"]
            entries = [(name, int(size), int(crc)) for name, size, crc in members]
        except (ValueError, KeyError, TypeError, zlib.error) as exc:
            raise SystemExit(f"{packed}: unreadable directory ({exc})") from exc
        names = [name for name, _, _ in entries]
        if not all(_safe_name(name) and size >= 0 for name, size, _ in entries) or len(set(names)) != len(names):
            raise SystemExit(f"{packed}: a member's name or size is not acceptable, or a name repeats")
        if sum(size for _, size, _ in entries) != packed.stat().st_size - fh.tell():
            raise SystemExit(f"{packed}: its members' sizes do not add up to the file's (cut short?)")
        partial = to.with_name(to.name + ".tmp")
        try:
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as out:
                for name, size, crc in entries:
                    data = fh.read(size)
                    if zlib.crc32(data) != crc:
                        raise SystemExit(f"{packed}: {name} does not match its CRC-32")
                    out.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    partial.replace(to)
    return len(entries)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def _untracked(lines: list[str]) -> dict[int, str]:
    """The folders :func:`untrack` wrote into ``.git/info/exclude``, by the index of each pattern's line."""
    return {i + 1: lines[i + 1].strip("/") for i, line in enumerate(lines[:-1]) if line == MARK}


def untrack(folders: list[str], repo: Path = REPO) -> None:
    """Take ``folders`` out of git's index and ignore them (files stay on disk), so a device call does not send
    them. Refused for a folder with changes that are not committed, which :func:`retrack` would not bring back."""
    exclude = repo / ".git" / "info" / "exclude"
    already = _untracked(exclude.read_text().splitlines() if exclude.exists() else [])
    for folder in folders:
        if folder in KEEP or "/" in folder.strip("/"):
            raise SystemExit(f"{folder}: only a top-level folder other than {', '.join(KEEP)} can be untracked")
        if folder.strip("/") in already.values():
            raise SystemExit(f"{folder} is untracked already (retrack restores it)")
        if not _git(repo, "ls-files", "--", folder).strip():
            raise SystemExit(f"{folder}: git tracks nothing there")
        if _git(repo, "status", "--porcelain", "--", folder).strip():
            raise SystemExit(f"{folder} has changes that are not committed: commit them first")
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a") as fh:
        for folder in folders:
            _git(repo, "rm", "-r", "-q", "--cached", "--", folder)
            fh.write(f"{MARK}\n/{folder.strip('/')}/\n")
    print(f"untracked {' '.join(folders)} (git status shows them deleted); retrack after the device calls")


def retrack(repo: Path = REPO) -> list[str]:
    """Undo :func:`untrack`: drop its lines from ``.git/info/exclude`` and restore those folders to the index."""
    exclude = repo / ".git" / "info" / "exclude"
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    marked = _untracked(lines)
    folders = list(marked.values())
    exclude.write_text("".join(f"{line}\n" for i, line in enumerate(lines) if i not in marked and line != MARK))
    if folders:
        _git(repo, "reset", "-q", "--", *folders)
    print(f"retracked {' '.join(folders) or 'nothing'}")
    return folders


def state_iteration(path: Path) -> int:
    """The iteration a resume state (``state.safetensors``) was saved at."""
    with safe_open(str(path), "pt") as fh:
        return int(json.loads(fh.metadata()["info"])["iteration"])


def unpack(returned: Path, root: Path, force: bool = False) -> Path:
    """Install a run that came back from a device (``returned``, named after the run) under ``root``: its state
    into ``root/NAME/state/``, its other files beside it. Files it replaces are moved to ``root/NAME/replaced-TIME``.
    Raises ``SystemExit`` when the returned state is behind the local one (unless ``force``)."""
    if not (returned / STATE).is_file():
        raise SystemExit(f"{returned} holds no {STATE}: nothing to resume from")
    run = root / returned.name
    local = run / "state" / STATE
    theirs = state_iteration(returned / STATE)
    if local.is_file() and not force and state_iteration(local) > theirs:
        raise SystemExit(f"{local} is at iteration {state_iteration(local)}, ahead of the returned "
                         f"{theirs}: not replaced (--force replaces it, keeping the old files aside)")
    places = {STATE: run / "state" / STATE, **{name: run / name for name in RUN_FILES}}
    aside = run / time.strftime("replaced-%Y%m%d-%H%M%S")
    for name, place in places.items():
        if place.exists():
            aside.mkdir(parents=True, exist_ok=True)
            shutil.move(str(place), aside / name)
    for name, place in places.items():
        if (returned / name).is_file():
            place.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(returned / name, place)
    print(f"{run}: resumes at iteration {theirs}" + (f" (earlier files in {aside})" if aside.exists() else ""))
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="pack a dataset zip into one file under carry/ and print the call's budget")
    a.add_argument("--data", type=Path, required=True, help="the dataset zip (cifar10-jpeg.zip)")
    a.add_argument("--to", type=Path, default=REPO / "carry" / "cifar10.pack", help="the pack to write")
    a.add_argument("--carry", type=Path, default=REPO / "carry", help="everything the call carries")
    z = sub.add_parser("rezip", help="on the device: rebuild the dataset zip from a pack")
    z.add_argument("packed", type=Path)
    z.add_argument("to", type=Path)
    u = sub.add_parser("untrack", help="untrack top-level folders for a device call (files stay here)")
    u.add_argument("folders", nargs="+")
    sub.add_parser("retrack", help="undo untrack")
    b = sub.add_parser("unpack", help="install a run that came back from a device")
    b.add_argument("returned", type=Path, help="the run's folder among the returned files (FILES_AT/NAME)")
    b.add_argument("--root", type=Path, default=Path(os.path.expanduser("~/.cache/resattn/zoo")))
    b.add_argument("--force", action="store_true", help="replace a local state that is further on")
    args = p.parse_args(argv)
    if args.command == "unpack":
        unpack(args.returned, args.root, args.force)
    elif args.command == "untrack":
        untrack(args.folders)
    elif args.command == "retrack":
        retrack()
    elif args.command == "rezip":
        print(f"rebuilt {args.to} with {rezip(args.packed, args.to)} members")
    else:
        pack(args.data, args.to)
        plan = budget(args.carry)
        print(plan.report())
        return 0 if plan.total <= DEVICE_LIMIT else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
