#!/usr/bin/env bash
# Show or apply the host tuning for many connections (tuning/sysctl.conf, tuning/limits.conf).
#
# Usage: scripts/tune-host.sh            print current vs proposed values (changes nothing)
#        scripts/tune-host.sh --apply    apply (root): saves the current values to
#                                        /var/backups/corechat-sysctl.before, installs
#                                        /etc/sysctl.d/99-corechat.conf and
#                                        /etc/security/limits.d/99-corechat.conf, and sets the
#                                        values now with sysctl -w
#        scripts/tune-host.sh --undo     restore the values saved by --apply (sysctl -w) and
#                                        remove the two installed files
#        scripts/tune-host.sh --help
#
# Undo by hand: rm /etc/sysctl.d/99-corechat.conf /etc/security/limits.d/99-corechat.conf,
# then `sysctl -p /var/backups/corechat-sysctl.before` (or reboot). The nofile limits apply to
# new login sessions; services get theirs from LimitNOFILE= (tuning/corechat.service).
set -euo pipefail
cd "$(dirname "$0")/.."

SYSCTL_SRC=tuning/sysctl.conf
LIMITS_SRC=tuning/limits.conf
SYSCTL_DST=/etc/sysctl.d/99-corechat.conf
LIMITS_DST=/etc/security/limits.d/99-corechat.conf
BACKUP=/var/backups/corechat-sysctl.before

mode=show
case "${1:-}" in
  "") ;;
  --apply) mode=apply ;;
  --undo) mode=undo ;;
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
  *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
esac

# key<TAB>value for every setting in the file (comments and blanks skipped)
settings() {
  sed -e 's/#.*//' "$1" | awk -F= 'NF >= 2 {
    k=$1; v=substr($0, index($0, "=") + 1);
    gsub(/^[ \t]+|[ \t]+$/, "", k); gsub(/^[ \t]+|[ \t]+$/, "", v); gsub(/[ \t]+/, " ", v);
    print k "\t" v }'
}

current() {
  local f=/proc/sys/${1//.//}
  if [ -r "$f" ]; then tr -s ' \t' '  ' <"$f" | sed 's/^ *//; s/ *$//'; else echo "(n/a)"; fi
}

need_root() {
  [ "$(id -u)" = 0 ] || { echo "$mode needs root" >&2; exit 1; }
}

case "$mode" in
show)
  printf '%-32s %-26s %-26s %s\n' setting current proposed ""
  while IFS=$'\t' read -r k v; do
    cur=$(current "$k")
    mark=""
    [ "$cur" != "$v" ] && mark="<- change"
    printf '%-32s %-26s %-26s %s\n' "$k" "$cur" "$v" "$mark"
  done < <(settings "$SYSCTL_SRC")
  echo
  printf '%-32s %-26s %-26s\n' "nofile (this shell soft/hard)" "$(ulimit -Sn)/$(ulimit -Hn)" \
    "$(awk '$1=="*" && $3=="nofile" {print $4}' "$LIMITS_SRC" | sort -u | paste -sd/)"
  echo
  echo "installed: $([ -f "$SYSCTL_DST" ] && echo "$SYSCTL_DST" || echo "no $SYSCTL_DST"), $([ -f "$LIMITS_DST" ] && echo "$LIMITS_DST" || echo "no $LIMITS_DST")"
  echo "apply with: sudo $0 --apply   (undo: sudo $0 --undo)"
  ;;
apply)
  need_root
  mkdir -p "$(dirname "$BACKUP")"
  if [ ! -f "$BACKUP" ]; then
    {
      echo "# values before scripts/tune-host.sh --apply, $(date -u)"
      while IFS=$'\t' read -r k _; do
        cur=$(current "$k")
        [ "$cur" != "(n/a)" ] && echo "$k = $cur"
      done < <(settings "$SYSCTL_SRC")
    } >"$BACKUP"
    echo "saved current values to $BACKUP"
  else
    echo "keeping the earlier backup $BACKUP"
  fi
  install -m 0644 "$SYSCTL_SRC" "$SYSCTL_DST"
  install -m 0644 "$LIMITS_SRC" "$LIMITS_DST"
  echo "installed $SYSCTL_DST and $LIMITS_DST"
  rc=0
  while IFS=$'\t' read -r k v; do
    if ! sysctl -q -w "$k=$v"; then echo "could not set $k (container or missing key?)" >&2; rc=1; fi
  done < <(settings "$SYSCTL_SRC")
  echo "applied; new login sessions get the nofile limits, services need LimitNOFILE="
  exit $rc
  ;;
undo)
  need_root
  rm -f "$SYSCTL_DST" "$LIMITS_DST"
  echo "removed $SYSCTL_DST and $LIMITS_DST"
  if [ -f "$BACKUP" ]; then
    while IFS=$'\t' read -r k v; do
      sysctl -q -w "$k=$v" || echo "could not restore $k" >&2
    done < <(settings "$BACKUP")
    echo "restored the values saved in $BACKUP"
    mv "$BACKUP" "$BACKUP.restored"
  else
    echo "no backup at $BACKUP: run 'sysctl --system' or reboot to return to the defaults"
  fi
  ;;
esac
