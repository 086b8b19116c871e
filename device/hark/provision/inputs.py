"""The owner's provisioning inputs and their validation (hostname, Wi-Fi, user, key, token).

It must not touch the card or print a secret: a rejected passphrase or token is described
by its length and kind, never by its value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import shlex
import struct
import subprocess
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path

# ISO 3166-1 alpha-2 (the list tzdata ships as iso3166.tab); Wi-Fi regulatory domains use it.
COUNTRIES = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR
    BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ
    EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW
    GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY
    KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV
    MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY
    QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG
    TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM
    ZW
    """.split()  # noqa: SIM905 - a 249-item literal list would hide the table's shape
)

SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)

# Each is used with fullmatch: "$" would also accept a value ending in a newline.
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_USERNAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # what hark.config.read_token accepts: one HTTP-safe word
_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")
_TIMEZONE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")
_RESERVED_USERS = frozenset({"root", "hark", "daemon", "bin", "sys", "nobody"})


class InputError(ValueError):
    """One or more inputs are unusable; ``problems`` has one line each, naming the option."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Wifi:
    """A WPA2-PSK network. ``psk_hex`` is what goes onto the card, never the passphrase."""

    ssid: str
    psk_hex: str = field(repr=False)
    country: str
    hidden: bool = False


@dataclass(frozen=True)
class FirstUser:
    """The owner's login: a name and one public key (the password stays locked)."""

    name: str
    ssh_key: str


def check_hostname(value: str) -> str:
    """An RFC 1123 single label; the Pi answers to ``<hostname>.local`` over mDNS."""
    if not _HOSTNAME.fullmatch(value) or value.isdigit():
        raise InputError(
            [
                f"--hostname {value!r}: use 1-63 letters, digits and '-', "
                "not starting or ending with '-' (RFC 1123), e.g. hark-kitchen"
            ]
        )
    return value.lower()


def check_ssid(value: str) -> str:
    """802.11 allows 1-32 octets; netplan and NetworkManager take UTF-8."""
    size = len(value.encode("utf-8"))
    if not 1 <= size <= 32:
        raise InputError([f"--wifi-ssid: must be 1-32 bytes of UTF-8 (got {size} bytes)"])
    if any(ord(c) < 32 for c in value):
        raise InputError(["--wifi-ssid: contains a control character"])
    return value


def wpa_psk(ssid: str, passphrase: str) -> str:
    """The 256-bit PSK as 64 hex digits: PBKDF2-SHA1(passphrase, ssid, 4096), as Imager does.

    A passphrase of 64 hex digits already is the PSK. The card then never carries the
    passphrase itself (NetworkManager and netplan both accept the hex form).
    """
    if _HEX64.fullmatch(passphrase):
        return passphrase.lower()
    size = len(passphrase)
    if not 8 <= size <= 63:
        raise InputError(
            [f"--wifi-passphrase: WPA needs 8-63 characters or 64 hex digits (got {size})"]
        )
    if not all(32 <= ord(c) <= 126 for c in passphrase):
        raise InputError(["--wifi-passphrase: only printable ASCII is allowed in a WPA passphrase"])
    raw = hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode("utf-8"), 4096, 32)
    return raw.hex()


def check_country(value: str) -> str:
    """The Wi-Fi regulatory domain: an ISO 3166-1 alpha-2 code such as GB or US."""
    code = value.strip().upper()
    if code not in COUNTRIES:
        raise InputError([f"--wifi-country {value!r}: not an ISO 3166-1 alpha-2 code (e.g. GB)"])
    return code


def check_timezone(value: str) -> str:
    """An IANA zone name (Europe/London); checked against this machine's tzdata when present."""
    if not _TIMEZONE.fullmatch(value) or ".." in value:
        raise InputError([f"--timezone {value!r}: not an IANA time zone name (e.g. Europe/London)"])
    zones = zoneinfo.available_timezones()
    if zones and value not in zones:
        raise InputError([f"--timezone {value!r}: unknown time zone (e.g. Europe/London)"])
    return value


def check_username(value: str) -> str:
    """A Debian login name that is not a system account (hark runs as its own user)."""
    if not _USERNAME.fullmatch(value) or value in _RESERVED_USERS:
        raise InputError(
            [
                f"--user {value!r}: use lower-case letters, digits, '_' or '-' "
                "(max 32, starting with a letter), and not root or hark"
            ]
        )
    return value


def check_ssh_key(text: str, source: str) -> str:
    """One OpenSSH public key line whose blob really is of the type its prefix names."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if text.lstrip().startswith("-----BEGIN"):
        raise InputError([f"--ssh-key {source}: this is a PRIVATE key; pass the .pub file"])
    if len(lines) != 1:
        raise InputError([f"--ssh-key {source}: expected one public key line, got {len(lines)}"])
    parts = lines[0].split()
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        raise InputError(
            [f"--ssh-key {source}: not an OpenSSH public key (ssh-ed25519 AAAA… or similar)"]
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (size,) = struct.unpack(">I", blob[:4])
        kind = blob[4 : 4 + size].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        kind = ""
    if kind != parts[0]:
        raise InputError([f"--ssh-key {source}: the key data does not match its type {parts[0]}"])
    return " ".join(parts)


def check_token(value: str, source: str) -> str:
    """The device token: one line of visible ASCII (it becomes an HTTP header)."""
    token = value.strip()
    if not token:
        raise InputError([f"{source}: the device token is empty"])
    if not _TOKEN.fullmatch(token):
        raise InputError(
            [f"{source}: the device token must be one word of visible ASCII ({len(token)} chars)"]
        )
    return token


def read_token_file(path: Path) -> str:
    """Read the token from a file the owner made (``hark-backend device add … > F``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError([f"--token-file {path}: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise InputError([f"--token-file {path}: not UTF-8 text"]) from None
    return check_token(text, f"--token-file {path}")


def mint_token(command: str, timeout_s: float = 60.0) -> str:
    """Run the backend's admin command and take the LAST line it prints as the token.

    ``hark-backend device add NAME --db URL`` prints the new token last; its output is
    captured, never echoed, and only its error stream is shown when it fails.
    """
    argv = shlex.split(command)
    if not argv:
        raise InputError(["--backend-admin: empty command"])
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, check=False, shell=False
        )
    except FileNotFoundError:
        raise InputError([f"--backend-admin: command not found: {argv[0]}"]) from None
    except subprocess.TimeoutExpired:
        raise InputError([f"--backend-admin: no answer within {timeout_s:.0f} s"]) from None
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:]) or "no error output"
        raise InputError([f"--backend-admin: exited with {done.returncode}: {tail}"])
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    if not lines:
        raise InputError(["--backend-admin: printed nothing (expected the token last)"])
    return check_token(lines[-1], "--backend-admin")
