"""What goes onto the boot partition: cmdline.txt edits, firstrun.sh (Bookworm), the
cloud-init seed (Trixie), the NetworkManager profile, and the rendered first-boot script.

Pure text in, text out: it must not read or write the card, run commands, or log a
secret. Values reach shell scripts only through ``shlex.quote`` and YAML only as JSON
strings, so an odd SSID or path cannot break out of either.
"""

from __future__ import annotations

import json
import shlex
import uuid
from dataclasses import dataclass
from importlib import resources

from hark.provision.inputs import FirstUser, Wifi

BOOT_MOUNT = "/boot/firmware"  # where Bookworm and Trixie mount the FAT partition
CARD_DIR = "hark"  # our folder on the boot partition
FIRSTRUN_HOOK = (
    f"systemd.run={BOOT_MOUNT}/firstrun.sh systemd.run_success_action=reboot "
    "systemd.unit=kernel-command-line.target"
)
# Groups Imager gives the first user (rpi-imager customization_generator.cpp).
USER_GROUPS = (
    "users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo"
)
_STRIPPED = (
    "systemd.run=",
    "systemd.run_success_action=",
    "ds=nocloud",
    "cfg80211.ieee80211_regdom=",
)


@dataclass(frozen=True)
class FirstbootValues:
    """The non-secret values baked into firstboot.sh (the token travels as its own file)."""

    service_user: str
    config_path: str
    token_path: str
    install_from: str  # "wheel" | "wheelhouse" | "index"
    wheel_name: str
    package_spec: str
    index_url: str
    apt_packages: str
    ssh_user: str
    provisioned_at: str


def edit_cmdline(original: str, method: str, country: str | None, instance_id: str) -> str:
    """Keep the one line and every original argument; drop our (or Imager's) earlier hooks.

    Re-provisioning a card therefore never stacks two ``systemd.run=`` or ``ds=nocloud``.
    """
    tokens = [
        t
        for t in original.replace("\r", " ").replace("\n", " ").split()
        if not t.startswith(_STRIPPED) and t != "systemd.unit=kernel-command-line.target"
    ]
    if country:
        tokens.append(f"cfg80211.ieee80211_regdom={country}")
    if method == "firstrun":
        tokens.extend(FIRSTRUN_HOOK.split())
    else:
        tokens.append(f"ds=nocloud;i={instance_id}")
    return " ".join(tokens) + "\n"


def _nm_ssid(ssid: str) -> str:
    """keyfile strings are fine for plain SSIDs; anything odd goes as the byte list form."""
    plain = ssid.isprintable() and ssid.isascii() and ssid == ssid.strip()
    if plain and not any(c in ssid for c in ";\\#"):
        return ssid
    return "".join(f"{b};" for b in ssid.encode("utf-8"))


def nmconnection(wifi: Wifi) -> str:
    """A NetworkManager keyfile like imager_custom's ``preconfigured.nmconnection``.

    NetworkManager ignores a keyfile not owned by root with mode 0600; firstrun.sh
    installs it so.
    """
    return (
        "[connection]\n"
        "id=hark-wifi\n"
        f"uuid={uuid.uuid4()}\n"
        "type=wifi\n"
        "interface-name=wlan0\n"
        "autoconnect=true\n"
        "\n[wifi]\n"
        "mode=infrastructure\n"
        f"ssid={_nm_ssid(wifi.ssid)}\n"
        f"hidden={'true' if wifi.hidden else 'false'}\n"
        "\n[wifi-security]\n"
        "auth-alg=open\n"
        "key-mgmt=wpa-psk\n"
        f"psk={wifi.psk_hex}\n"
        "\n[ipv4]\n"
        "method=auto\n"
        "\n[ipv6]\n"
        "addr-gen-mode=default\n"
        "method=auto\n"
        "\n[proxy]\n"
    )


def firstrun_sh(
    hostname: str, timezone: str | None, user: FirstUser | None, wifi: Wifi | None
) -> str:
    """Bookworm: run once by systemd.run= before the network exists, like Imager's script.

    It sets what must be set before networking (hostname, Wi-Fi profile, user, key,
    time zone), hands the installation to hark-firstboot.service, removes its own hook
    from cmdline.txt and itself, and lets systemd reboot.
    """
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        "# Written by hark provision. Runs once from cmdline.txt (systemd.run=), before the",
        "# network is up; hark itself is installed after the reboot by hark-firstboot.service.",
        "# HARK_ROOT prefixes every absolute path (tests).",
        "set +e",
        'ROOT="${HARK_ROOT:-}"',
        'BOOT="$(cd "$(dirname "$0")" && pwd)"',
        'LOG="$BOOT/hark-firstboot.log"',
        'note() { printf \'%s firstrun: %s\\n\' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$LOG"; }',
        f"NEW_HOSTNAME={q(hostname)}",
        'CURRENT_HOSTNAME="$(tr -d " \\t\\n\\r" <"$ROOT/etc/hostname")"',
        'echo "$NEW_HOSTNAME" >"$ROOT/etc/hostname"',
        'sed -i "s/127.0.1.1.*$CURRENT_HOSTNAME\\$/127.0.1.1\\t$NEW_HOSTNAME/" "$ROOT/etc/hosts"',
        'grep -q "^127.0.1.1" "$ROOT/etc/hosts" ||'
        ' printf "127.0.1.1\\t%s\\n" "$NEW_HOSTNAME" >>"$ROOT/etc/hosts"',
        'note "hostname set to $NEW_HOSTNAME"',
    ]
    if wifi is not None:
        lines += [
            f"WIFI_COUNTRY={q(wifi.country)}",
            'PROFILE="$ROOT/etc/NetworkManager/system-connections/hark-wifi.nmconnection"',
            f'if [ -f "$BOOT/{CARD_DIR}/wifi.nmconnection" ]; then',
            '    install -d -m 700 "$(dirname "$PROFILE")"',
            # NetworkManager ignores keyfiles with other modes (imager_custom set_wlan).
            f'    install -m 600 "$BOOT/{CARD_DIR}/wifi.nmconnection" "$PROFILE"',
            '    chown root:root "$PROFILE"',
            f'    rm -f "$BOOT/{CARD_DIR}/wifi.nmconnection"',
            '    note "Wi-Fi profile installed (mode 0600); the card copy is removed"',
            "fi",
            "if command -v raspi-config >/dev/null; then",
            '    raspi-config nonint do_wifi_country "$WIFI_COUNTRY"',
            "fi",
            "command -v rfkill >/dev/null && rfkill unblock wifi",
            'for f in "$ROOT"/var/lib/systemd/rfkill/*:wlan; do',
            '    [ -e "$f" ] && echo 0 >"$f"',
            "done",
        ]
    if timezone:
        lines += [
            f"TZ_NAME={q(timezone)}",
            'if [ -e "$ROOT/usr/share/zoneinfo/$TZ_NAME" ]; then',
            '    ln -sf "/usr/share/zoneinfo/$TZ_NAME" "$ROOT/etc/localtime"',
            '    echo "$TZ_NAME" >"$ROOT/etc/timezone"',
            '    note "time zone set to $TZ_NAME"',
            "fi",
        ]
    if user is not None:
        lines += [
            f"NEW_USER={q(user.name)}",
            f"SSH_KEY={q(user.ssh_key)}",
            'FIRSTUSER="$(getent passwd 1000 | cut -d: -f1)"',
            'if [ -n "$FIRSTUSER" ] && [ "$FIRSTUSER" != "$NEW_USER" ]; then',
            '    usermod -l "$NEW_USER" "$FIRSTUSER"',
            '    usermod -m -d "/home/$NEW_USER" "$NEW_USER"',
            '    groupmod -n "$NEW_USER" "$FIRSTUSER"',
            'elif [ -z "$FIRSTUSER" ]; then',
            f'    useradd -m -s /bin/bash -G {USER_GROUPS} "$NEW_USER"',
            "fi",
            'usermod -p "!" "$NEW_USER"  # key-only: no password to guess',
            'HOME_DIR="$ROOT/home/$NEW_USER"',
            'install -d -m 700 "$HOME_DIR/.ssh"',
            'printf "%s\\n" "$SSH_KEY" >"$HOME_DIR/.ssh/authorized_keys"',
            'chmod 600 "$HOME_DIR/.ssh/authorized_keys"',
            'chown -R "$NEW_USER:$NEW_USER" "$HOME_DIR/.ssh"',
            'echo "$NEW_USER ALL=(ALL) NOPASSWD: ALL" >"$ROOT/etc/sudoers.d/010_hark-owner"',
            'chmod 440 "$ROOT/etc/sudoers.d/010_hark-owner"',
            # Bookworm's first-boot user wizard would otherwise wait on a console.
            "systemctl disable userconfig.service >/dev/null 2>&1",
            'rm -f "$ROOT/etc/ssh/sshd_config.d/rename_user.conf"',
            "systemctl enable ssh >/dev/null 2>&1",
            'note "user $NEW_USER can log in with the SSH key"',
        ]
    lines += [
        f'bash "$BOOT/{CARD_DIR}/firstboot.sh" --install-unit &&'
        ' note "hark-firstboot.service enabled; rebooting"',
        "sed -i 's| systemd.run=[^ ]*||; s| systemd.run_success_action=[^ ]*||;"
        ' s| systemd.unit=kernel-command-line.target||\' "$BOOT/cmdline.txt"',
        'rm -f "$BOOT/firstrun.sh"',
        "sync",
        "exit 0",
    ]
    return "\n".join(lines) + "\n"


def _y(value: str) -> str:
    """A YAML scalar that cannot be misread: JSON strings are valid YAML."""
    return json.dumps(value, ensure_ascii=False)


def user_data(hostname: str, timezone: str | None, user: FirstUser | None) -> str:
    """Trixie cloud-init user-data in the shape Imager writes for ``cloudinit-rpi``."""
    lines = [
        "#cloud-config",
        "# Written by hark provision; hark-firstboot.service does the rest (runcmd below).",
        f"hostname: {_y(hostname)}",
        "manage_etc_hosts: true",
    ]
    if timezone:
        lines.append(f"timezone: {_y(timezone)}")
    if user is not None:
        lines += [
            "enable_ssh: true",
            "users:",
            f"- name: {_y(user.name)}",
            f"  groups: {USER_GROUPS}",
            "  shell: /bin/bash",
            "  lock_passwd: true",
            "  ssh_authorized_keys:",
            f"    - {_y(user.ssh_key)}",
            "  sudo: ALL=(ALL) NOPASSWD:ALL",
        ]
    lines += [
        "runcmd:",
        f"- [bash, {_y(f'{BOOT_MOUNT}/{CARD_DIR}/firstboot.sh')}, --install-unit, --start]",
    ]
    return "\n".join(lines) + "\n"


def network_config(wifi: Wifi | None) -> str:
    """netplan v2 for cloud-init: Ethernet DHCP (optional) and the Wi-Fi access point."""
    lines = [
        "# Written by hark provision (netplan v2). hark's first boot removes the Wi-Fi key",
        "# from this file once cloud-init has applied it.",
        "network:",
        "  version: 2",
        "  ethernets:",
        "    eth0:",
        "      dhcp4: true",
        "      optional: true",
    ]
    if wifi is not None:
        lines += [
            "  wifis:",
            "    wlan0:",
            "      dhcp4: true",
            "      optional: true",
            f"      regulatory-domain: {_y(wifi.country)}",
            "      access-points:",
            f"        {_y(wifi.ssid)}:",
            f"          password: {_y(wifi.psk_hex)}",
        ]
        if wifi.hidden:
            lines.append("          hidden: true")
    return "\n".join(lines) + "\n"


def meta_data(instance_id: str) -> str:
    """NoCloud meta-data; a fresh instance-id makes cloud-init treat the boot as a first boot."""
    return f"instance-id: {instance_id}\n"


def firstboot_sh(values: FirstbootValues) -> str:
    """The packaged firstboot.sh with every ``@@NAME@@`` replaced by a shell-quoted value."""
    text = resources.files("hark").joinpath("firstboot.sh").read_text(encoding="utf-8")
    for name, value in vars(values).items():
        text = text.replace(f"@@{name.upper()}@@", shlex.quote(value))
    if "@@" in text:
        raise RuntimeError("firstboot.sh has a placeholder that was not rendered")
    return text
