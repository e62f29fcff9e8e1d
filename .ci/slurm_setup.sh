#!/usr/bin/env bash
# Bring up a single-node SLURM cluster (munge + slurmctld + slurmd) on this host, for the
# SLURM backend tests of QueueManager.py.  Idempotent; run as root.  No cgroups needed:
# proctrack/linuxproc + task/none, so it works inside containers.
#
# The node advertises 2 fake GPUs as a generic resource (backed by /dev/null aliases),
# so `sbatch --gres=gpu:N` (N <= 2) is accepted.  Exit 0 once `sinfo` shows the node idle.
set -u

die() { echo "slurm_setup: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

need_install=0
for b in slurmctld slurmd sbatch sinfo munged; do
    command -v "$b" >/dev/null 2>&1 || need_install=1
done
if [ "$need_install" = 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || die "apt-get update failed"
    # Debian/Ubuntu: slurm-wlm pulls slurmctld, slurmd and slurm-client.
    apt-get install -y -q slurm-wlm munge || die "apt-get install slurm-wlm munge failed"
fi
for b in slurmctld slurmd sbatch sinfo squeue scancel munged; do
    command -v "$b" >/dev/null 2>&1 || die "$b not found after installation"
done

HOST=$(hostname -s)
NCPU=$(nproc)
CONF_DIR=/etc/slurm
[ -d /etc/slurm-llnl ] && [ ! -d /etc/slurm ] && CONF_DIR=/etc/slurm-llnl
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm

# ---- munge -------------------------------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key || die "mungekey failed"
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none || die "cannot create munge key"
    fi
fi
MUNGE_USER=root
id munge >/dev/null 2>&1 && MUNGE_USER=munge
chown -R "$MUNGE_USER": /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ "$MUNGE_USER" = munge ]; then
        runuser -u munge -- /usr/sbin/munged || die "munged did not start"
    else
        /usr/sbin/munged --force || die "munged did not start"
    fi
    for _ in $(seq 1 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
fi
munge -n | unmunge >/dev/null 2>&1 || die "munge does not work (munge -n | unmunge failed)"

# ---- slurm.conf ----------------------------------------------------------------------------
CONF="$CONF_DIR/slurm.conf"
NEW_CONF=$(cat <<CONF
# written by .ci/slurm_setup.sh: single-node test cluster without cgroups
ClusterName=queuetest
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again after cred_expire s (default 120): short, for the requeue test
AuthInfo=cred_expire=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# schedule every few seconds (a requeued job waits for the next pass after its BeginTime)
SchedulerParameters=sched_interval=2,bf_interval=2
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MpiDefault=none
GresTypes=gpu
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${NCPU} Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
)
# Two fake GPUs: slurmd only accepts GPUs backed by device files, so make two aliases of
# /dev/null (char 1:3).  Slurm sets CUDA_VISIBLE_DEVICES for jobs that ask for --gres=gpu:N.
FAKE=/var/lib/slurm-fakegpu
mkdir -p "$FAKE"
for i in 0 1; do
    if [ ! -c "$FAKE/gpu$i" ]; then
        rm -f "$FAKE/gpu$i"
        mknod "$FAKE/gpu$i" c 1 3 2>/dev/null || touch "$FAKE/gpu$i"   # plain file: warns, still counts
    fi
done
NEW_GRES="NodeName=${HOST} Name=gpu File=${FAKE}/gpu[0-1]"
changed=0
if [ "$(cat "$CONF" 2>/dev/null)" != "$NEW_CONF" ]; then
    printf '%s\n' "$NEW_CONF" > "$CONF"; changed=1
fi
if [ "$(cat "$CONF_DIR/gres.conf" 2>/dev/null)" != "$NEW_GRES" ]; then
    printf '%s\n' "$NEW_GRES" > "$CONF_DIR/gres.conf"; changed=1
fi
# no cgroup plugin is configured (proctrack/linuxproc, task/none); remove a cgroup.conf that
# an earlier version of this script wrote
if [ "$(cat "$CONF_DIR/cgroup.conf" 2>/dev/null)" = "CgroupPlugin=disabled" ]; then
    rm -f "$CONF_DIR/cgroup.conf"; changed=1
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "$changed" = 1 ]; then
    running /run/slurm/slurmd.pid && kill "$(cat /run/slurm/slurmd.pid)" 2>/dev/null
    running /run/slurm/slurmctld.pid && kill "$(cat /run/slurm/slurmctld.pid)" 2>/dev/null
    sleep 1
fi
if ! running /run/slurm/slurmctld.pid; then
    slurmctld || die "slurmctld failed to start; see /var/log/slurm/slurmctld.log: $(tail -5 /var/log/slurm/slurmctld.log 2>/dev/null)"
fi
if ! running /run/slurm/slurmd.pid; then
    slurmd || die "slurmd failed to start; see /var/log/slurm/slurmd.log: $(tail -5 /var/log/slurm/slurmd.log 2>/dev/null)"
fi

# ---- wait for the node ---------------------------------------------------------------------
state=""
for _ in $(seq 1 60); do
    state=$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -1)
    case "$state" in
        idle|mixed|allocated) echo "slurm_setup: node $HOST is $state"; sinfo; exit 0 ;;
        down*|drain*|fail*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 ;;
    esac
    sleep 1
done
echo "slurm_setup: node $HOST never became idle (last state: '${state}')" >&2
tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 2>/dev/null
exit 1
