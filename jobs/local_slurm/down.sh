#!/usr/bin/env bash
# Stop the single-node SLURM started by up.sh: cancel its jobs, then stop slurmd, slurmctld and
# munged by the pids in their pid files (nothing else is touched). `down.sh --purge` also removes
# the state dir. Safe to run when nothing is up.
#   HISTAUG_SLURM_STATE  state dir (default /tmp/histaug_slurm)
set -uo pipefail

STATE=${HISTAUG_SLURM_STATE:-/tmp/histaug_slurm}
CONF=$STATE/slurm.conf
say() { echo "local_slurm: $*" >&2; }

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { [ -s "$1" ] && cat "$1" 2>/dev/null; }

stop_pid() {  # name pidfile
  local pid
  pid=$(pid_of "$2") || return 0
  alive "$pid" || { rm -f "$2"; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then say "$1 (pid $pid) ignored SIGTERM, sending SIGKILL"; kill -KILL "$pid" 2>/dev/null; fi
  rm -f "$2"
  say "stopped $1 (pid $pid)"
}

ctld=$(pid_of "$STATE/slurmctld.pid")
if [ -f "$CONF" ] && alive "$ctld"; then
  export SLURM_CONF=$CONF
  jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for _ in $(seq 150); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

stop_pid slurmd "$STATE/slurmd.pid"
stop_pid slurmctld "$STATE/slurmctld.pid"
stop_pid munged "$STATE/munge/munged.pid"

if [ "${1:-}" = "--purge" ]; then
  case "$STATE" in /|/tmp|/root|"$HOME") say "refusing to remove $STATE" ;; *) rm -rf "$STATE"; say "removed $STATE" ;; esac
fi
exit 0
