"""Access to a Raspberry Pi OS boot partition: a mounted folder, or the FAT partition of an
image file or block device read and written through mtools (no root, no mounting).

It must not decide what to write (that is ``render``) and must not write anywhere but the
FAT boot partition; it refuses targets that are not a Pi OS boot partition.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SECTOR_B = 512
MBR_TABLE_AT = 446
FAT_TYPES = frozenset({0x0B, 0x0C, 0x0E})  # FAT32 (CHS/LBA), FAT16 LBA: what Pi OS images use
GPT_PROTECTIVE = 0xEE
TRIXIE_FIRST_RELEASE = dt.date(2025, 10, 1)
CLOUD_INIT_SEEDS = ("user-data", "meta-data", "network-config")


class TargetError(Exception):
    """The target cannot be provisioned; the message says why and what to point at instead."""


@dataclass(frozen=True)
class Partition:
    """One MBR entry: where the FAT boot partition starts, in bytes."""

    index: int
    type_id: int
    start_b: int
    size_b: int


@dataclass(frozen=True)
class Release:
    """Which first-boot mechanism the image expects, and the evidence for it."""

    name: str  # "bookworm" | "trixie"
    method: str  # "firstrun" (systemd.run= + firstrun.sh) | "cloud-init" (NoCloud seed)
    evidence: str


class BootFs:
    """Files on the boot partition, by '/'-separated path relative to its root."""

    description = ""

    def names(self, folder: str = "") -> set[str]:
        """Lower-cased names in ``folder`` (FAT is case-insensitive); directories end in '/'."""
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        folder, _, name = path.rpartition("/")
        found = self.names(folder)
        return name.lower() in found or f"{name.lower()}/" in found

    def read(self, path: str) -> bytes:
        raise NotImplementedError

    def write(self, path: str, data: bytes, *, secret: bool = False) -> None:
        raise NotImplementedError

    def copy_in(self, source: Path, path: str) -> None:
        """Copy a (possibly large) local file without reading it into memory."""
        raise NotImplementedError

    def size_b(self, path: str) -> int:
        """Size of an existing file, 0 when absent (for the free-space check)."""
        raise NotImplementedError

    def free_b(self) -> int:
        raise NotImplementedError

    def mkdir(self, path: str) -> None:
        raise NotImplementedError

    def delete(self, path: str) -> None:
        raise NotImplementedError


class FolderBoot(BootFs):
    """A mounted boot partition (``/media/me/bootfs``, ``/boot/firmware``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"mounted boot partition {root}"

    def _path(self, path: str) -> Path:
        return self.root.joinpath(*[p for p in path.split("/") if p])

    def names(self, folder: str = "") -> set[str]:
        where = self._path(folder)
        if not where.is_dir():
            return set()
        return {p.name.lower() + ("/" if p.is_dir() else "") for p in where.iterdir()}

    def read(self, path: str) -> bytes:
        return self._path(path).read_bytes()

    def write(self, path: str, data: bytes, *, secret: bool = False) -> None:
        """Write via a temp file and rename, so a pulled card never holds half a file.

        Secrets are created 0600 from the start (a vfat mount may ignore modes; its
        ``umask``/``fmask`` options then decide, which the guide mentions).
        """
        dest = self._path(path)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".hark-")
        try:
            os.fchmod(fd, 0o600 if secret else 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            Path(tmp).replace(dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def copy_in(self, source: Path, path: str) -> None:
        dest = self._path(path)
        tmp = dest.with_name(f".hark-{dest.name}")
        shutil.copyfile(source, tmp)
        tmp.replace(dest)

    def size_b(self, path: str) -> int:
        where = self._path(path)
        return where.stat().st_size if where.is_file() else 0

    def free_b(self) -> int:
        return shutil.disk_usage(self.root).free

    def mkdir(self, path: str) -> None:
        self._path(path).mkdir(parents=True, exist_ok=True)

    def delete(self, path: str) -> None:
        self._path(path).unlink(missing_ok=True)


class ImageBoot(BootFs):
    """The FAT partition inside an image file or block device, through mtools ``-i IMG@@OFF``."""

    def __init__(self, image: Path, part: Partition) -> None:
        self.image = image
        self.part = part
        self.description = (
            f"partition {part.index} (FAT, type 0x{part.type_id:02x}) of {image} "
            f"at byte {part.start_b}"
            if part.index
            else f"FAT filesystem {image}"
        )
        for tool in ("mcopy", "mdir", "mmd", "mdel"):
            if shutil.which(tool) is None:
                raise TargetError(f"{tool} not found: install mtools (Debian: apt install mtools)")

    def _run(self, tool: str, *args: str, stdin: bytes | None = None) -> bytes:
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": os.devnull}
        done = subprocess.run(
            [tool, "-i", f"{self.image}@@{self.part.start_b}", *args],
            input=stdin,
            capture_output=True,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise OSError(f"{tool} {' '.join(args)}: {err[-1] if err else 'failed'}")
        return done.stdout

    def names(self, folder: str = "") -> set[str]:
        target = "::/" + folder.strip("/")
        try:
            out = self._run("mdir", "-b", target).decode("utf-8", errors="replace")
        except OSError:
            return set()
        prefix = target.rstrip("/") + "/"
        found: set[str] = set()
        for line in out.splitlines():
            if line.lower().startswith(prefix.lower()):
                found.add(line[len(prefix) :].lower())
        return found

    def read(self, path: str) -> bytes:
        return self._run("mcopy", "-n", f"::/{path.lstrip('/')}", "-")

    def write(self, path: str, data: bytes, *, secret: bool = False) -> None:
        """mcopy from a private temp file (0600 in a 0700 dir), removed at once."""
        with tempfile.TemporaryDirectory(prefix="hark-provision-") as tmp:
            src = Path(tmp) / "payload"
            fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            self._run("mcopy", "-o", "-n", str(src), f"::/{path.lstrip('/')}")

    def copy_in(self, source: Path, path: str) -> None:
        self._run("mcopy", "-o", "-n", str(source), f"::/{path.lstrip('/')}")

    def size_b(self, path: str) -> int:
        if not self.exists(path):
            return 0
        out = self._run("mdir", f"::/{path.lstrip('/')}").decode("utf-8", errors="replace")
        match = re.search(r"^\s*1 file\s+([\d ]+?) bytes", out, re.MULTILINE)
        return int(match.group(1).replace(" ", "")) if match else 0

    def free_b(self) -> int:
        out = self._run("mdir", "::/").decode("utf-8", errors="replace")
        match = re.search(r"([\d ]+?) bytes free", out)
        return int(match.group(1).replace(" ", "")) if match else 2**63

    def mkdir(self, path: str) -> None:
        if not self.exists(path):
            self._run("mmd", f"::/{path.strip('/')}")

    def delete(self, path: str) -> None:
        if self.exists(path):
            self._run("mdel", f"::/{path.lstrip('/')}")


def read_mbr(image: Path) -> list[Partition]:
    """The four primary MBR entries (struct-parsed: 16 bytes each at offset 446)."""
    try:
        with image.open("rb") as fh:
            head = fh.read(SECTOR_B)
    except PermissionError:
        raise TargetError(
            f"cannot read {image}: permission denied (for a card reader, run with sudo or "
            "join the 'disk' group; or mount the boot partition and pass its folder)"
        ) from None
    except OSError as exc:
        raise TargetError(f"cannot read {image}: {exc.strerror}") from None
    if len(head) < SECTOR_B or head[510:512] != b"\x55\xaa":
        raise TargetError(f"{image} has no MBR partition table: not a Raspberry Pi OS image")
    parts: list[Partition] = []
    for i in range(4):
        entry = head[MBR_TABLE_AT + 16 * i : MBR_TABLE_AT + 16 * (i + 1)]
        type_id = entry[4]
        start_lba, sectors = struct.unpack("<II", entry[8:16])
        if type_id and sectors:
            parts.append(Partition(i + 1, type_id, start_lba * SECTOR_B, sectors * SECTOR_B))
    return parts


def _is_fat(image: Path, offset_b: int) -> bool:
    try:
        with image.open("rb") as fh:
            fh.seek(offset_b)
            boot = fh.read(SECTOR_B)
    except OSError:
        return False  # read_mbr then says why, with a hint
    return boot[510:512] == b"\x55\xaa" and (boot[54:57] == b"FAT" or boot[82:87] == b"FAT32")


def _mounted_sources() -> set[str]:
    try:
        text = Path("/proc/mounts").read_text()
    except OSError:
        return set()
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def open_image(image: Path) -> ImageBoot:
    """Find the FAT boot partition of an image/device; refuse GPT, no FAT, or mounted devices."""
    if image.is_block_device() if image.exists() else False:
        busy = sorted(s for s in _mounted_sources() if s.startswith(str(image)))
        if busy:
            raise TargetError(
                f"{image} is mounted ({', '.join(busy)}): unmount it first, or pass the "
                "mounted boot partition folder instead"
            )
    if _is_fat(image, 0):
        # A partition device (/dev/sdb1) or a bare FAT image: the boot partition itself.
        size_b = image.stat().st_size
        return ImageBoot(image, Partition(0, 0x0C, 0, size_b))
    parts = read_mbr(image)
    if any(p.type_id == GPT_PROTECTIVE for p in parts):
        raise TargetError(f"{image} has a GPT partition table: Raspberry Pi OS images use MBR")
    fat = [p for p in parts if p.type_id in FAT_TYPES]
    if not fat:
        kinds = ", ".join(f"{p.index}: 0x{p.type_id:02x}" for p in parts) or "none"
        raise TargetError(
            f"{image} has no FAT boot partition (partition types {kinds}): "
            "not a Raspberry Pi OS image"
        )
    part = fat[0]
    if not _is_fat(image, part.start_b):
        raise TargetError(
            f"partition {part.index} of {image} is marked FAT but holds no FAT filesystem"
        )
    return ImageBoot(image, part)


def open_target(target: Path) -> BootFs:
    """A folder, an image file or a block device, checked to be a Pi OS boot partition."""
    if not target.exists():
        raise TargetError(f"{target} does not exist")
    if target.is_dir():
        boot: BootFs = FolderBoot(target)
        _refuse_root_fs(target)
    elif target.is_file() or stat.S_ISBLK(target.stat().st_mode):
        boot = open_image(target)
    else:
        raise TargetError(f"{target} is neither a folder, an image file nor a block device")
    check_pi_boot(boot)
    return boot


def _refuse_root_fs(folder: Path) -> None:
    if (folder / "cmdline.txt").exists():
        return
    if folder.resolve() == Path("/") or (folder / "etc" / "os-release").exists():
        hint = ""
        for sub in ("boot/firmware", "boot"):
            if (folder / sub / "cmdline.txt").exists():
                hint = f" (the boot partition is {folder / sub})"
                break
        raise TargetError(
            f"{folder} is a mounted ROOT filesystem (it has etc/os-release and no cmdline.txt): "
            f"point at the FAT boot partition instead{hint}"
        )
    if (folder / "firmware" / "cmdline.txt").exists():
        raise TargetError(f"{folder} is /boot; the boot partition is {folder / 'firmware'}")


def check_pi_boot(boot: BootFs) -> None:
    """Require config.txt, cmdline.txt and firmware (start*.elf, bcm27xx dtbs or overlays/)."""
    names = boot.names()
    missing = [n for n in ("config.txt", "cmdline.txt") if n not in names]
    firmware = (
        any(re.fullmatch(r"start\w*\.elf", n) for n in names)
        or any(re.fullmatch(r"bcm27\d\d.*\.dtb|bcm2712.*\.dtb", n) for n in names)
        or "overlays/" in names
    )
    if missing or not firmware:
        what = ", ".join(missing + ([] if firmware else ["firmware (start*.elf, bcm27*.dtb)"]))
        raise TargetError(
            f"{boot.description} is not a Raspberry Pi OS boot partition (missing {what})"
        )
    cmdline = boot.read("cmdline.txt").decode("utf-8", errors="replace")
    if "root=" not in cmdline:
        raise TargetError(
            f"{boot.description}: cmdline.txt has no root= argument; not a Pi OS boot partition"
        )


def issue_date(boot: BootFs) -> dt.date | None:
    """The image's build date from issue.txt ("Raspberry Pi reference 2024-11-19")."""
    if not boot.exists("issue.txt"):
        return None
    text = boot.read("issue.txt").decode("utf-8", errors="replace")
    match = re.search(r"reference (\d{4})-(\d{2})-(\d{2})", text)
    if not match:
        return None
    year, month, day = (int(g) for g in match.groups())
    return dt.date(year, month, day)


def detect_release(boot: BootFs, override: str | None = None) -> Release:
    """Pick firstrun.sh (Bookworm) or cloud-init (Trixie) from what the image carries.

    Trixie images built with pi-gen's cloud-init stage ship ``user-data``/``meta-data``/
    ``network-config`` seeds on the boot partition; that is the strongest sign. The
    first Trixie release (2025-10-01) had no cloud-init and still used firstrun.sh.
    """
    if override:
        method = "cloud-init" if override == "trixie" else "firstrun"
        return Release(override, method, "--release")
    names = boot.names()
    seeds = [s for s in CLOUD_INIT_SEEDS if s in names]
    date = issue_date(boot)
    if seeds:
        return Release("trixie", "cloud-init", f"it has cloud-init seeds: {', '.join(seeds)}")
    if date is None:
        raise TargetError(
            f"{boot.description}: cannot tell the release (no issue.txt and no cloud-init "
            "seed files); pass --release bookworm or --release trixie"
        )
    if date < TRIXIE_FIRST_RELEASE:
        return Release("bookworm", "firstrun", f"issue.txt dated {date}")
    # Trixie 2025-10-01 or a later Bookworm "legacy" build: both boot firstrun.sh.
    return Release(
        f"pi-os-{date}", "firstrun", f"issue.txt dated {date} and no cloud-init seed files"
    )
