#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try hydra/launcher=slurm on a laptop or in CI:
#   scripts/slurm_local.sh up      # installs Debian's slurm + munge if missing, starts the daemons
#   export SLURM_CONF=...          # the line `up` prints: sbatch, squeue and submitit find the cluster
#   python -m shakegpt.train -m model.n_layer=1,2 hydra/launcher=slurm hydra.launcher.partition=local ...
#   scripts/slurm_local.sh down    # stops the daemons by their pid files and removes the cluster's folder
# The cluster (configuration, munge key and socket, state, logs, jobcomp.log: every finished job's final
# state) lives in $SLURM_LOCAL_DIR (default /tmp/shakegpt-slurm). It needs root: slurmd runs jobs as their
# user, and there is no systemd to start the daemons as services; they are started by hand here.
set -euo pipefail
dir=${SLURM_LOCAL_DIR:-/tmp/shakegpt-slurm}
partition=local

stop_daemon() {  # pid file, name
    [[ -f $1 ]] || return 0
    local pid
    pid=$(cat "$1")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null && echo "slurm_local: $2 did not stop in 10 s; killed" >&2
    fi
    rm -f "$1"
}

down() {
    stop_daemon "$dir/slurmd.pid" slurmd
    stop_daemon "$dir/slurmctld.pid" slurmctld
    stop_daemon "$dir/munge/munged.pid" munged
    rm -rf "$dir"
}

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null &&
        command -v munged >/dev/null && return 0
    if [[ $(id -u) != 0 ]]; then
        echo "slurm_local: SLURM is not installed; as root: apt-get install --no-install-recommends" \
            "slurmctld slurmd slurm-client munge" >&2
        exit 1
    fi
    echo "slurm_local: installing slurmctld slurmd slurm-client munge" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
}

up() {
    if [[ -f $dir/slurmctld.pid ]] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
        echo "slurm_local: a cluster is up already in $dir; 'scripts/slurm_local.sh down' first" >&2
        exit 1
    fi
    if [[ $(id -u) != 0 ]]; then
        echo "slurm_local: run as root (slurmd starts jobs as their users)" >&2
        exit 1
    fi
    install_packages
    down  # what a cluster killed without 'down' left
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    # munged refuses a key or socket in a folder others can write to.
    chmod 755 "$dir" "$dir/munge"
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"

    local host memory_mb
    host=$(hostname)
    memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat >"$dir/slurm.conf" <<EOF
ClusterName=shakegpt
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job waits this long before it starts again (120 s by default).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=5
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# A job that becomes eligible (a requeued one) starts within a second or two, not 30-60 s.
SchedulerParameters=bf_interval=1,sched_interval=2
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$memory_mb State=UNKNOWN
PartitionName=$partition Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$dir/slurm.conf
    slurmctld
    slurmd
    for _ in $(seq 100); do
        if sinfo --noheader --states=idle --format=%n 2>/dev/null | grep -q .; then
            echo "slurm_local: one node ($host, $(nproc) CPUs), partition '$partition'; now:" >&2
            echo "export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.2
    done
    echo "slurm_local: the node did not come up in 20 s; see $dir/slurmctld.log and $dir/slurmd.log" >&2
    exit 1
}

case ${1:-} in
up) up ;;
down) down ;;
*)
    echo "usage: scripts/slurm_local.sh up|down" >&2
    exit 2
    ;;
esac
