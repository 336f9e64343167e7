#!/usr/bin/env bash
# One-node SLURM test cluster on 127.0.0.1 (munge + mariadb + slurmdbd + slurmctld + slurmd).
#   launchers/local_slurm.sh up       install packages if missing, write configs, start daemons (idempotent)
#   launchers/local_slurm.sh down     stop only the daemons started here (by pid file), wipe cluster state
#   launchers/local_slurm.sh status   say which daemons run, show sinfo; exit 0 when fully up, 3 otherwise
#   launchers/local_slurm.sh env      print the exports a client needs: eval "$(launchers/local_slurm.sh env)"
# Everything lives under ${LOCAL_SLURM_DIR:-/tmp/lowrank_lab_slurm}; /etc is left alone, no systemd needed.
# Runs as root (SlurmUser=root). See launchers/README.md.
set -euo pipefail
umask 022

DIR=${LOCAL_SLURM_DIR:-/tmp/lowrank_lab_slurm}
ETC=$DIR/etc RUN=$DIR/run LOG=$DIR/log
CLUSTER=${LOCAL_SLURM_CLUSTER:-lowrank}
NODE=localhost
export SLURM_CONF=$ETC/slurm.conf          # slurmdbd reads slurmdbd.conf from this same folder
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order; stopped in reverse

log() { echo "[local_slurm] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- helpers ---------------------------------------------------------------------------------
pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }
# running PID NAME: PID is a live (not zombie) process whose command is NAME (guards against pid reuse).
# Zombies count as dead: a container's pid 1 may take seconds to reap our exited daemons.
running() {
  [[ -n $1 && -r /proc/$1/stat ]] && [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2"* ]] \
    && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}
alive() { running "$(pid_of "$1")" "$1"; }
all_alive() { local d; for d in "${DAEMONS[@]}"; do alive "$d" || return 1; done; }
wait_for() {  # wait_for SECONDS CMD...: poll CMD every 0.2 s
  local n=$(( $1 * 5 )); shift
  until "$@" >/dev/null 2>&1; do (( n-- > 0 )) || return 1; sleep 0.2; done
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# pick_port VAR BASE: set VAR to the first port >= BASE nobody listens on and not picked already
# (no $(...) here: a subshell would lose PICKED)
PICKED=" "
pick_port() {
  local p=$2
  while port_busy "$p" || [[ $PICKED == *" $p "* ]]; do p=$((p + 1)); done
  PICKED+="$p "; printf -v "$1" %s "$p"
}

# ---- step 0: packages (Debian 12: slurm-wlm 22.05, munge 0.5, mariadb 10.11) ----------------
install_packages() {
  local b missing=0
  for b in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacctmgr; do
    command -v "$b" >/dev/null || missing=1
  done
  (( missing )) || return 0
  [[ $EUID -eq 0 ]] || die "packages missing and not root; install slurmctld slurmd slurmdbd slurm-client munge mariadb-server"
  log "installing slurm, munge, mariadb (apt-get)"
  # keep the packages' init scripts from starting system-wide daemons (ports 6817-6819/3306, /etc configs)
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; made_policy=1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurmdbd slurm-client munge mariadb-server mariadb-client >"$DIR/apt.log" 2>&1 \
    || { (( made_policy )) && rm -f "$policy"; tail -20 "$DIR/apt.log"; die "apt-get install failed"; }
  (( made_policy )) && rm -f "$policy"; return 0
}

# ---- step 1: configs (written once per cluster life; `down` removes them) --------------------
write_configs() {
  [[ -s $ETC/slurm.conf ]] && return 0
  mkdir -p "$ETC" "$RUN" "$LOG" "$DIR/spool" "$DIR/state" "$DIR/db"
  local ctld dbd slurmd mysql ncpu mem pw
  pick_port ctld "${LOCAL_SLURM_CTLD_PORT:-6817}"
  pick_port slurmd "${LOCAL_SLURM_SLURMD_PORT:-6818}"
  pick_port dbd "${LOCAL_SLURM_DBD_PORT:-6819}"
  pick_port mysql "${LOCAL_SLURM_MYSQL_PORT:-6830}"
  ncpu=$(nproc)
  mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo)   # MB, a bit below MemTotal
  pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  log "ports: slurmctld=$ctld slurmd=$slurmd slurmdbd=$dbd mariadb=$mysql; node: ${ncpu} cpus, ${mem} MB"

  # munge: a private key and socket, so we never touch /etc/munge or a system munged
  head -c 1024 /dev/urandom >"$ETC/munge.key"; chmod 400 "$ETC/munge.key"

  # mariadb: own datadir/socket/pid, TCP only on 127.0.0.1 (slurmdbd connects over TCP)
  cat >"$ETC/my.cnf" <<EOF
[client]
socket=$RUN/mysqld.sock
[mariadbd]
user=root
datadir=$DIR/db
socket=$RUN/mysqld.sock
pid-file=$RUN/mariadbd.pid
log-error=$LOG/mariadbd.log
port=$mysql
bind-address=127.0.0.1
skip-name-resolve
skip-log-bin
innodb_buffer_pool_size=128M
innodb_lock_wait_timeout=900
innodb_flush_log_at_trx_commit=2
EOF

  # slurmdbd.conf: must be mode 600 and owned by SlurmUser, next to slurm.conf
  cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$RUN/munge.sock
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$mysql
StorageUser=slurm
StoragePass=$pw
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$ETC/slurmdbd.conf"

  # slurm.conf: one node, one partition, no cgroups, accounting through slurmdbd.
  # cred_expire=10: a requeued job waits cred_expire(+1) s before it may start again (default 120 s);
  # sched_interval/bf_interval=2: a job whose BeginTime passed starts within 2 s (defaults 60/30 s).
  cat >"$ETC/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$ctld
SlurmdPort=$slurmd
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$RUN/munge.sock,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$(( mem / ncpu ))
KillWait=5
SchedulerParameters=sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$NODE
AccountingStoragePort=$dbd
AccountingStoragePass=$RUN/munge.sock
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$ncpu RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# ---- step 2..6: start each daemon unless it already runs --------------------------------------
start_munged() {
  munged --socket="$RUN/munge.sock" --key-file="$ETC/munge.key" --pid-file="$RUN/munged.pid" \
    --seed-file="$RUN/munged.seed" --log-file="$LOG/munged.log" --force </dev/null >>"$LOG/munged.out" 2>&1
  wait_for 10 munge --socket="$RUN/munge.sock" -n || die "munged did not start (see $LOG/munged.log)"
}

start_mariadbd() {
  if [[ ! -d $DIR/db/mysql ]]; then   # first start: create the system tables
    mariadb-install-db --defaults-file="$ETC/my.cnf" --skip-test-db --auth-root-authentication-method=socket \
      >"$LOG/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $LOG/mariadb-install.log)"
  fi
  setsid mariadbd --defaults-file="$ETC/my.cnf" </dev/null >>"$LOG/mariadbd.out" 2>&1 &
  wait_for 30 mariadb-admin --defaults-file="$ETC/my.cnf" -uroot ping || die "mariadbd did not start (see $LOG/mariadbd.log)"
  local pw; pw=$(sed -n 's/^StoragePass=//p' "$ETC/slurmdbd.conf")
  mariadb --defaults-file="$ETC/my.cnf" -uroot -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
       CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurmdbd() {  # daemonizes; reads slurmdbd.conf from SLURM_CONF's folder
  slurmdbd </dev/null >>"$LOG/slurmdbd.out" 2>&1
  wait_for 30 sacctmgr -n show cluster || die "slurmdbd did not answer (see $LOG/slurmdbd.log)"
  # register cluster, account and root before slurmctld starts, or it may refuse jobs
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
  sacctmgr -i -Q add account lowrank Cluster="$CLUSTER" Description=lowrank_lab Organization=lowrank_lab >/dev/null 2>&1 || true
  sacctmgr -i -Q add user root Account=lowrank Cluster="$CLUSTER" >/dev/null 2>&1 || true
  sacctmgr -n -P show assoc cluster="$CLUSTER" user=root format=user | grep -q root || die "could not register root in accounting"
}

start_slurmctld() {
  slurmctld -f "$SLURM_CONF" </dev/null >>"$LOG/slurmctld.out" 2>&1
  wait_for 30 scontrol ping || die "slurmctld did not answer (see $LOG/slurmctld.log)"
}

# -N: the node is "localhost" whatever the machine's hostname
start_slurmd() { slurmd -f "$SLURM_CONF" -N "$NODE" </dev/null >>"$LOG/slurmd.out" 2>&1; }

no_jobs() { [[ -z $(squeue -h -o %i 2>/dev/null) ]]; }
node_ready() { [[ $(sinfo -h -n "$NODE" -o %T 2>/dev/null) =~ ^(idle|mixed|allocated|completing) ]]; }

cmd_up() {
  [[ $EUID -eq 0 ]] || die "run as root (SlurmUser=root)"
  if [[ -d $RUN ]] && all_alive && node_ready; then log "already up ($DIR)"; return 0; fi
  mkdir -p "$DIR"; install_packages; write_configs
  local d t0=$SECONDS
  for d in "${DAEMONS[@]}"; do
    if alive "$d"; then log "$d already running (pid $(pid_of "$d"))"; else log "starting $d"; "start_$d"; fi
  done
  wait_for 30 node_ready || die "node $NODE not idle: $(sinfo -h -N -o '%N %T %E' 2>&1) (see $LOG/slurmd.log)"
  log "up in $((SECONDS - t0)) s; clients: eval \"\$($0 env)\""
}

stop() {  # stop NAME: TERM by pid, wait, then KILL
  local pid; pid=$(pid_of "$1")
  alive "$1" || { rm -f "$RUN/$1.pid"; return 0; }
  log "stopping $1 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  wait_for 20 eval "! running $pid $1" || { log "$1 ignored TERM; KILL"; kill -KILL "$pid" 2>/dev/null || true; }
  rm -f "$RUN/$1.pid"
}

cmd_down() {
  if alive slurmctld; then   # cancel leftover jobs so that no job step outlives the cluster
    scancel --partition=debug 2>/dev/null || true
    wait_for 15 no_jobs || log "jobs still listed; stopping anyway"
  fi
  local i
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop "${DAEMONS[i]}"; done
  # fresh cluster next time: configs, state, spool and accounting db go; logs stay for post-mortems
  rm -rf "$ETC" "$RUN" "$DIR/spool" "$DIR/state" "$DIR/db"
  log "down"
}

cmd_status() {
  local d up=0
  for d in "${DAEMONS[@]}"; do
    if alive "$d"; then echo "$d: running (pid $(pid_of "$d"))"; else echo "$d: stopped"; up=3; fi
  done
  if alive slurmctld; then sinfo || true; fi
  if ((up == 0)) && node_ready; then echo "cluster $CLUSTER: up ($DIR)"; return 0; fi
  echo "cluster $CLUSTER: not up"; return 3
}

# everything a client (sbatch, squeue, sacct, submitit) needs; munge socket and ports are in slurm.conf
cmd_env() { printf 'export SLURM_CONF=%s\nexport LOCAL_SLURM_DIR=%s\n' "$SLURM_CONF" "$DIR"; }

case "${1:-}" in
  up | down | status | env) "cmd_$1" ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
