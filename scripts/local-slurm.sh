#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for tests and for trying `dslib submit`.
#   scripts/local-slurm.sh install   # Debian packages (slurmctld slurmd slurm-client munge), as root
#   scripts/local-slurm.sh start     # configure + start munged, slurmctld, slurmd; prints SLURM_CONF
#   scripts/local-slurm.sh stop      # stop the daemons started by `start`
#   scripts/local-slurm.sh status
# No systemd and no cgroups: proctrack/linuxproc, task/none. State lives in $DSLIB_SLURM_DIR
# (default /tmp/dslib-slurm). Use it with: export SLURM_CONF=$DSLIB_SLURM_DIR/slurm.conf
set -euo pipefail
DIR=${DSLIB_SLURM_DIR:-/tmp/dslib-slurm}
CONF=$DIR/slurm.conf
PACKAGES="slurmctld slurmd slurm-client munge"

installed() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
              && command -v munged >/dev/null && command -v mungekey >/dev/null; }

install() {
  installed && return 0
  [ "$(id -u)" = 0 ] || { echo "local-slurm: installing $PACKAGES needs root" >&2; return 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends $PACKAGES >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends $PACKAGES >/dev/null; }
}

write_conf() {
  mkdir -p "$DIR"/{state,spool,log,munge}
  chmod 755 "$DIR" "$DIR/munge"
  local mem cpus
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)  # below what slurmd detects
  cpus=$(nproc)
  cat >"$CONF" <<CONF
ClusterName=dslib-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=${DSLIB_SLURMCTLD_PORT:-6817}
SlurmdPort=${DSLIB_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
EnforcePartLimits=ALL
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  install
  if status >/dev/null 2>&1; then echo "export SLURM_CONF=$CONF"; return 0; fi
  write_conf
  [ -f "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null
  chmod 700 "$DIR/munge"; chmod 755 "$DIR/munge"  # socket dir must be world-searchable
  chmod 400 "$DIR/munge/munge.key"
  munged --force --socket="$DIR/munge/munge.socket.2" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed"
  export SLURM_CONF=$CONF
  slurmctld -c -f "$CONF"
  slurmd -N localhost -f "$CONF"
  for _ in $(seq 100); do
    [ "$(sinfo -h -o %T 2>/dev/null | head -1)" = idle ] && { echo "export SLURM_CONF=$CONF"; return 0; }
    sleep 0.2
  done
  echo "local-slurm: the node did not become idle; logs in $DIR/log" >&2
  return 1
}

stop() {
  for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

status() {
  [ -f "$CONF" ] && [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null || return 1
  SLURM_CONF=$CONF sinfo -o "%P %T %C"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
