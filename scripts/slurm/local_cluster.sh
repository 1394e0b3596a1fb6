#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests and CI (`pytest -m slurm`).
#
#   bash scripts/slurm/local_cluster.sh up       # install slurm-wlm + munge if missing, start, wait for idle
#   bash scripts/slurm/local_cluster.sh status   # the daemons' pids and `sinfo`
#   bash scripts/slurm/local_cluster.sh down     # stop what `up` started, restore the files it replaced
#
# Needs root (apt-get, /etc/slurm, /etc/munge); reads no stdin. `up` writes /etc/slurm/slurm.conf for
# this host (one node with `nproc` CPUs, one partition `local`; proctrack/linuxproc and task/none, so
# no cgroups or systemd), creates a munge key only if there is none, and starts munged, slurmctld and
# slurmd by hand, each recording its pid in the state directory ($FOCALNET_SLURM_STATE, default
# /var/tmp/focalnet_slurm; outside the repository). A slurm.conf that was there is kept in the state
# directory and put back by `down`. Both commands are idempotent. The packages stay installed.
set -euo pipefail

STATE=${FOCALNET_SLURM_STATE:-/var/tmp/focalnet_slurm}
CONF=/etc/slurm/slurm.conf
KEY=/etc/munge/munge.key
PARTITION=local
WAIT_S=${FOCALNET_SLURM_WAIT_S:-60}
DAEMONS=(munged slurmctld slurmd)  # started in this order, stopped in the reverse

log() { echo "local_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

alive() {  # alive NAME: the daemon whose pid `up` recorded still runs (and is that program)
  local pidfile="$STATE/$1.pid" pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$1" ]]
}

node_idle() { sinfo -h -N -o '%T' 2>/dev/null | grep -qx 'idle'; }
node_up() { sinfo -h -N -o '%T' 2>/dev/null | grep -qxE 'idle|allocated|mixed|completing'; }  # maybe running jobs

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
      && command -v sbatch >/dev/null; then
    return
  fi
  [[ $(id -u) == 0 ]] || die "slurm-wlm and munge are not installed and installing them needs root."
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null
  apt-get install -y -qq slurm-wlm munge </dev/null >/dev/null
}

write_config() {
  local host cpus
  host=$(hostname -s)
  getent hosts "$host" >/dev/null || die "this host's name '$host' does not resolve (add it to /etc/hosts): \
slurmd and jax.distributed need it."
  cpus=$(nproc)
  mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/backup" /etc/slurm
  if [[ -f $CONF && ! -f $STATE/backup/slurm.conf && ! -f $STATE/conf_written ]]; then
    cp -p "$CONF" "$STATE/backup/slurm.conf"  # someone else's: `down` puts it back
  fi
  cat >"$CONF" <<EOF
# Written by focalnet_jax's scripts/slurm/local_cluster.sh (a one-node test cluster); \`down\` removes it.
ClusterName=focalnet-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.daemon.pid
SlurmdPidFile=$STATE/slurmd.daemon.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=30
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  touch "$STATE/conf_written"
  if [[ ! -f $KEY ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of="$KEY" bs=1024 count=1 status=none
    chown munge:munge "$KEY" 2>/dev/null || true
    chmod 400 "$KEY"
    touch "$STATE/key_written"
  fi
}

start() {  # start NAME ARGS...: runs the daemon in the foreground of its own session, logs to the state dir
  local name=$1
  shift
  if alive "$name"; then
    return
  fi
  setsid "$@" </dev/null >"$STATE/$name.out" 2>&1 &
  echo $! >"$STATE/$name.pid"
}

tails() {
  for f in "$STATE"/*.out "$STATE"/*.log; do
    [[ -f $f ]] && { echo "--- $f (last 20 lines)"; tail -n 20 "$f"; }
  done >&2
}

fail() {  # the daemons' logs, then stop what was started
  tails
  log "error: $1 (the daemons' logs are above); stopping what was started."
  down
  exit 1
}

up() {
  install_packages
  if alive slurmctld && alive slurmd && node_up; then
    log "already up: $(sinfo -h -o '%P %D %T %c CPUs' | head -1)"
    return
  fi
  write_config
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if alive munged || munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    :  # a munged that works already (ours, or the system's)
  elif id munge >/dev/null 2>&1; then
    start munged setpriv --reuid munge --regid munge --init-groups munged -F
  else
    start munged munged -F --force
  fi
  start slurmctld slurmctld -D -f "$CONF"
  start slurmd slurmd -D -f "$CONF"
  local waited=0
  until node_idle; do
    for d in "${DAEMONS[@]}"; do
      [[ $d == munged && ! -f $STATE/munged.pid ]] && continue  # the system's munged
      alive "$d" || fail "$d exited while starting"
    done
    if ((waited >= WAIT_S)); then
      sinfo >&2 || true
      fail "the node did not become idle within ${WAIT_S}s"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  log "up after ${waited}s: $(sinfo -h -o 'partition %P, %D node, %T, %c CPUs' | head -1)"
}

stop_one() {
  local name=$1 pidfile="$STATE/$1.pid" pid i
  if alive "$name"; then
    pid=$(<"$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do alive "$name" || break; sleep 0.2; done
    if alive "$name"; then
      log "$name ($pid) ignored SIGTERM for 10s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

down() {
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    stop_one "${DAEMONS[$i]}"
  done
  if [[ -f $STATE/conf_written ]]; then
    if [[ -f $STATE/backup/slurm.conf ]]; then
      cp -p "$STATE/backup/slurm.conf" "$CONF"
    else
      rm -f "$CONF"
    fi
  fi
  [[ -f $STATE/key_written ]] && rm -f "$KEY"
  rm -rf "$STATE"
  log "down"
}

status() {
  local d
  for d in "${DAEMONS[@]}"; do
    if alive "$d"; then echo "$d: running (pid $(<"$STATE/$d.pid"))"; else echo "$d: not running"; fi
  done
  sinfo 2>&1 || true
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
