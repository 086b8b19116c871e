# shellcheck shell=bash
# STATUS tells the truth: connected (after the failed first connects at boot), with no
# stale "last error" from before the backend came up.
# shellcheck source=lib.sh
. /share/checks/lib.sh
ensure_hark
systemctl is-active -q rig-backend.service || ensure_backend
linked_at_all() { journalctl -b -u hark.service -q -o cat | grep -q -E 'session [^ ]+ active'; }
wait_for 60 linked_at_all || note "no 'session ... active' in hark's journal since boot"
sleep 3
status=$(prop StatusText)
note "systemctl status: $(systemctl status hark.service --no-pager 2>/dev/null | sed -n 's/^ *Status: //p')"
ok=1
case "$status" in *error*|*retry*|*unreachable*|*connecting*|*offline*|"") ok=0 ;; esac
verdict status-true "$ok" "STATUS after the link came up: '$status'"
finish
