#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for trying and testing hydra/launcher=slurm.
#
#   sudo scripts/slurm-local-cluster.sh start    # install (if missing), configure, start, wait for idle
#   scripts/slurm-local-cluster.sh status        # what runs, and sinfo
#   sudo scripts/slurm-local-cluster.sh stop     # stop the daemons this script started
#
# Installs Debian's slurm-wlm and munge with apt-get when they are missing, writes slurm.conf for
# this host (NodeName = hostname -s, the real CPUs and memory of `slurmd -C`, one partition
# `debug`, select/cons_tres so several 1-CPU jobs run side by side, no cgroups:
# proctrack/linuxproc + task/none, so it runs inside a container), and starts munged, slurmctld and
# slurmd bound to this host only. All state lives in $REGBENCH_SLURM_DIR
# (default /var/lib/regbench-slurm); /etc/slurm/slurm.conf is a link to the slurm.conf there, so
# sbatch/squeue/sinfo/scontrol work without SLURM_CONF. No accounting database (slurmdbd): sacct is
# unavailable, which submitit tolerates (it reads each job's result file).
set -euo pipefail

STATE_DIR="${REGBENCH_SLURM_DIR:-/var/lib/regbench-slurm}"
CONF="$STATE_DIR/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
MUNGE_PID="$STATE_DIR/munged.pid"
MUNGE_SOCKET=/run/munge/munge.socket.2
CTLD_PID="$STATE_DIR/slurmctld.pid"
SLURMD_PID="$STATE_DIR/slurmd.pid"
START_TIMEOUT_S="${REGBENCH_SLURM_START_TIMEOUT_S:-60}"

die() { echo "slurm-local-cluster: $*" >&2; exit 1; }
say() { echo "slurm-local-cluster: $*"; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "needs root (it installs packages and starts the SLURM daemons): run it with sudo"
}

running() {  # running PIDFILE: the process named in PIDFILE is alive
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    ((${#missing[@]} == 0)) && return 0
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >"$STATE_DIR/apt.log" 2>&1 \
        || { apt-get update -q >>"$STATE_DIR/apt.log" 2>&1 \
             && apt-get install -y -q "${missing[@]}" >>"$STATE_DIR/apt.log" 2>&1; } \
        || die "apt-get install ${missing[*]} failed; see $STATE_DIR/apt.log"
}

write_config() {
    local host cpus memory
    host=$(hostname -s)
    # slurmd -C: the node's real CPUs/sockets/cores/threads and RealMemory (MB).
    local hardware
    hardware=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //')
    cpus=$(nproc)
    memory=$(free -m | awk '/^Mem:/ {print $2}')
    [[ "$hardware" == *RealMemory=* ]] || hardware="CPUs=$cpus RealMemory=$memory"
    mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/slurmd" "$STATE_DIR/log"
    cat >"$CONF.new" <<EOF
# Written by regbench's scripts/slurm-local-cluster.sh: a one-node cluster on $host.
ClusterName=regbench-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again cred_expire seconds after it was requeued (default 120).
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (containers): track processes through /proc, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
# Cores and memory are consumable: several 1-CPU jobs run side by side.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
SchedulerType=sched/backfill
# Look at pending (e.g. requeued) jobs every 2 s instead of every 30-60 s.
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
# A pre-empted/requeued job: SIGTERM, then SIGKILL KillWait seconds later.
KillWait=30
JobRequeue=1
# Keep finished jobs visible to squeue/scontrol for 5 minutes.
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv "$CONF.new" "$CONF"
    mkdir -p /etc/slurm
    if [[ -L "$ETC_CONF" || ! -e "$ETC_CONF" ]]; then
        ln -sfn "$CONF" "$ETC_CONF"
    elif ! grep -q "regbench's scripts/slurm-local-cluster.sh" "$ETC_CONF"; then
        die "$ETC_CONF exists and is not ours: this machine has a SLURM configuration already; not touching it"
    fi
}

start_munge() {
    if running "$MUNGE_PID"; then return 0; fi
    if [[ -S "$MUNGE_SOCKET" ]] && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "using the munged that already runs on this machine"
        return 0
    fi
    [[ -s /etc/munge/munge.key ]] || { /usr/sbin/mungekey --create 2>/dev/null || create-munge-key -f; }
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge && chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    rm -f "$MUNGE_PID"
    touch "$MUNGE_PID" && chown munge:munge "$MUNGE_PID"
    runuser -u munge -- /usr/sbin/munged --force --pid-file="$MUNGE_PID"
    for _ in $(seq 50); do running "$MUNGE_PID" && munge -n | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "munged did not start"
}

start_daemon() {  # start_daemon NAME PIDFILE
    local name=$1 pidfile=$2
    running "$pidfile" && return 0
    "/usr/sbin/$name" -f "$CONF" >>"$STATE_DIR/log/$name.out" 2>&1 \
        || die "$name did not start; see $STATE_DIR/log/$name.log and $STATE_DIR/log/$name.out"
}

node_state() { sinfo -h -N -n "$(hostname -s)" -o '%t' 2>/dev/null | head -1; }

start() {
    need_root
    mkdir -p "$STATE_DIR"
    install_packages
    if ! running "$CTLD_PID" && [[ -e "$ETC_CONF" ]] && timeout 10 scontrol ping 2>/dev/null | grep -q UP; then
        die "a slurmctld that this script did not start (state folder $STATE_DIR) already runs here; stop it first"
    fi
    write_config
    start_munge
    start_daemon slurmctld "$CTLD_PID"
    start_daemon slurmd "$SLURMD_PID"
    local deadline=$((SECONDS + START_TIMEOUT_S)) state=""
    while ((SECONDS < deadline)); do
        state=$(node_state)
        case "$state" in
            idle|mix|alloc) say "up: node $(hostname -s) is $state in partition debug ($CONF)"; return 0 ;;
            down*|drain*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "node $(hostname -s) is not idle after ${START_TIMEOUT_S}s (state: ${state:-unknown}); see $STATE_DIR/log/"
}

stop_one() {  # stop_one NAME PIDFILE
    local name=$1 pidfile=$2 pid
    running "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$pidfile"
    say "stopped $name ($pid)"
}

stop() {
    need_root
    stop_one slurmd "$SLURMD_PID"
    stop_one slurmctld "$CTLD_PID"
    stop_one munged "$MUNGE_PID"
}

status() {
    local name pidfile any=1
    for name in munged slurmctld slurmd; do
        pidfile="$STATE_DIR/$name.pid"
        if running "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; any=0
        else echo "$name: not running"; fi
    done
    if ((any == 0)) && command -v sinfo >/dev/null; then sinfo -N -l 2>/dev/null || true; squeue 2>/dev/null || true; fi
    return $any
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
