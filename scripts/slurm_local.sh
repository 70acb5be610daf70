#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, to try `--executor slurm` on a workstation
# and to test it. Debian/Ubuntu, as root, no systemd needed: every daemon is started by hand.
#
#   sudo bash scripts/slurm_local.sh start     # installs slurm-wlm + munge (+ slurmdbd, mariadb) if missing
#   bash scripts/slurm_local.sh status
#   sudo bash scripts/slurm_local.sh stop      # cancels jobs, stops only the daemons it started
#
# Accounting (MariaDB on 127.0.0.1 + slurmdbd) is on by default: submitit asks `sacct` for the
# state of jobs that wrote no result (cancelled, killed, timed out); without it, waiting on such
# a job never returns. SLURM_LOCAL_ACCOUNTING=0 skips it.
# Knobs: SLURM_LOCAL_DIR (default /tmp/sab-slurm), SLURM_LOCAL_DB_PORT (13306), SLURM_LOCAL_PARTITION (debug).
# Findings behind the choices: docs/slurm_local.md (Slurm 22.05: no cgroup.conf at all,
# proctrack/linuxproc + task/none; slurmdbd.conf mode 600; zombies count as dead).
set -euo pipefail

DIR="${SLURM_LOCAL_DIR:-/tmp/sab-slurm}"
ACCOUNTING="${SLURM_LOCAL_ACCOUNTING:-1}"
DB_PORT="${SLURM_LOCAL_DB_PORT:-13306}"
PARTITION="${SLURM_LOCAL_PARTITION:-debug}"
CLUSTER="sablocal"
DB_PASS="sablocal"   # throwaway; the database listens on 127.0.0.1 only

log() { echo "[slurm_local] $*" >&2; }
alive() { [[ -s "$1" ]] || return 1; local p; p="$(cat "$1")"; kill -0 "$p" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]]; }
retry() { local n="$1" i; shift; for ((i = 0; i < n; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done; return 1; }
stop_pid() {
  local file="$1" name="$2" p i
  [[ -s "$file" ]] || return 0
  p="$(cat "$file")"
  if alive "$file"; then
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do alive "$file" || break; sleep 0.5; done
    alive "$file" && { log "$name ignored TERM, killing"; kill -KILL "$p" 2>/dev/null || true; }
  fi
  rm -f "$file"
}

install() {
  local pkgs=(slurm-wlm munge)
  [[ "$ACCOUNTING" == 1 ]] && pkgs+=(slurmdbd mariadb-server)
  dpkg -s "${pkgs[@]}" >/dev/null 2>&1 && return 0
  log "installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null; }
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi   # someone else's munged: reuse, do not own
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  [[ -s /etc/munge/munge.key ]] || /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key && chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged   # as the key's owner (root would need --force)
  retry 20 bash -c 'munge -n | unmunge' || { log "munged did not start"; return 1; }
  cp /run/munge/munged.pid "$DIR/munged.pid"
}

start_database() {
  alive "$DIR/mysql/mysqld.pid" && return 0
  mkdir -p "$DIR/mysql"
  [[ -d "$DIR/mysql/data/mysql" ]] || mariadb-install-db --no-defaults --datadir="$DIR/mysql/data" --user=root \
    --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1
  mariadbd --no-defaults --user=root --datadir="$DIR/mysql/data" --socket="$DIR/mysql/mysqld.sock" \
    --pid-file="$DIR/mysql/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$DIR/log/mariadb.err" \
    --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
  retry 60 mariadb --no-defaults -S "$DIR/mysql/mysqld.sock" -u root -e 'select 1' || { log "mariadbd did not start"; return 1; }
  mariadb --no-defaults -S "$DIR/mysql/mysqld.sock" -u root <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
}

write_config() {
  local node="$1" hw mem accounting
  hw="$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=[0-9]*//')"
  mem=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 9 / 10 ))   # above what slurmd sees drains the node
  if [[ "$ACCOUNTING" == 1 ]]; then
    accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
  else
    accounting="AccountingStorageType=accounting_storage/none"
  fi
  mkdir -p /etc/slurm
  rm -f /etc/slurm/cgroup.conf
  cat >/etc/slurm/slurm.conf <<CONF
# Written by sab-bench scripts/slurm_local.sh; removed by its 'stop'.
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
$accounting
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SchedulerType=sched/backfill
MinJobAge=300
KillWait=5
InactiveLimit=0
NodeName=$node NodeAddr=127.0.0.1 $hw RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  if [[ "$ACCOUNTING" == 1 ]]; then
    cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
    chmod 600 /etc/slurm/slurmdbd.conf
  fi
}

start() {
  local node t0
  t0=$(date +%s)
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then log "already running"; return 0; fi
  install
  mkdir -p "$DIR"/{ctld,spool,log}
  node="$(hostname -s)"
  getent hosts "$node" >/dev/null || echo "127.0.0.1 $node" >>/etc/hosts
  start_munge
  write_config "$node"
  if [[ "$ACCOUNTING" == 1 ]]; then
    start_database
    alive "$DIR/slurmdbd.pid" || slurmdbd
    retry 60 sacctmgr -n show cluster || { log "slurmdbd not answering ($DIR/log/slurmdbd.log)"; return 1; }
    sacctmgr -n show cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  alive "$DIR/slurmctld.pid" || slurmctld -c -i
  retry 60 scontrol ping || { log "slurmctld not answering ($DIR/log/slurmctld.log)"; return 1; }
  alive "$DIR/slurmd.pid" || slurmd -N "$node"
  retry 60 bash -c "sinfo -h -n '$node' -o %T | grep -qE '^(idle|mixed|allocated)'" || { log "node not idle"; sinfo -N -l >&2; return 1; }
  log "up in $(( $(date +%s) - t0 ))s, partition $PARTITION, state in $DIR"
}

stop() {
  local i
  if alive "$DIR/slurmctld.pid"; then
    scancel --partition="$PARTITION" 2>/dev/null || true   # job steps outlive slurmd: end them first
    for ((i = 0; i < 30; i++)); do [[ -z "$(squeue -h 2>/dev/null)" ]] && break; sleep 0.5; done
  fi
  stop_pid "$DIR/slurmd.pid" slurmd
  stop_pid "$DIR/slurmctld.pid" slurmctld
  stop_pid "$DIR/slurmdbd.pid" slurmdbd
  stop_pid "$DIR/mysql/mysqld.pid" mariadbd
  if [[ -s "$DIR/munged.pid" ]]; then stop_pid "$DIR/munged.pid" munged; rm -f /run/munge/munged.pid; fi
  rm -f /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf
  rm -rf "$DIR"
  log "stopped"
}

status() {
  local f
  for f in munged.pid mysql/mysqld.pid slurmdbd.pid slurmctld.pid slurmd.pid; do
    if alive "$DIR/$f"; then echo "$f: running"; else echo "$f: not running"; fi
  done
  sinfo 2>/dev/null || true
}

case "${1:-}" in
  start) [[ $EUID -eq 0 ]] || { echo "start needs root" >&2; exit 1; }; start ;;
  stop) [[ $EUID -eq 0 ]] || { echo "stop needs root" >&2; exit 1; }; stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
