#!/bin/bash
# balm-tune on a Slurm allocation, Ray's documented pattern (docs.ray.io, "Deploying on Slurm"): the Ray
# head on the first node, one worker per other node by srun, then the search with --address.
#
#   . .venv/bin/activate                     # the project installed (make); sbatch passes the environment on
#   ray get-auth-token --generate            # once: ~/.ray/auth_token, read by every node (shared $HOME)
#   sbatch deploy/slurm.sh --space search_spaces/paper_etth1.yaml --gpus-per-trial 0.25 --name etth1
#   deploy/slurm.sh --print ...              # print the commands instead of running them
#
# Storage: BALM_STORAGE (default: runs/ in the submit directory; it must be on a filesystem every node
# mounts, which the search checks, or an s3:// URI). Arguments are passed to python -m balm_tune.search.
#SBATCH --job-name=balm-tune
#SBATCH --nodes=2
#SBATCH --exclusive
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --gpus-per-task=1
set -euo pipefail

print=0
if [[ ${1:-} == --print ]]; then
    print=1
    shift
fi

quoted() {  # the command as one shell-quoted line
    local line
    line=$(printf '%q ' "$@")
    echo "${line% }"
}

run() {  # run a command, or print it with --print
    if ((print)); then
        quoted "$@"
    else
        "$@"
    fi
}

background() {  # run a command in the background (a Ray node that lives as long as the job), or print it
    if ((print)); then
        echo "$(quoted "$@") &"
    else
        "$@" &
    fi
}

export RAY_AUTH_MODE=token  # token authentication on every node (srun passes the environment on)
port=6379
cpus=${SLURM_CPUS_PER_TASK:-1}
gpus=${SLURM_GPUS_PER_TASK:-0}
storage=${BALM_STORAGE:-${SLURM_SUBMIT_DIR:-$PWD}/runs}
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes[0]}

if ((print)); then
    run srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address
    head_ip=HEAD_IP
else
    head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk '{print $1}')
fi

background srun --nodes=1 --ntasks=1 -w "$head_node" \
    ray start --head --node-ip-address="$head_ip" --port="$port" \
    --num-cpus="$cpus" --num-gpus="$gpus" --block
run sleep 10
for node in "${nodes[@]:1}"; do
    background srun --nodes=1 --ntasks=1 -w "$node" \
        ray start --address="$head_ip:$port" --num-cpus="$cpus" --num-gpus="$gpus" --block
    run sleep 5
done

run python -m balm_tune.search --address "$head_ip:$port" --storage "$storage" "$@"
