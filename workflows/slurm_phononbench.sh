#!/bin/bash
# A Ray cluster across SLURM nodes, then the benchmark on it. Submit: sbatch workflows/slurm_phononbench.sh
# Re-submitting the same script after pre-emption or a crash resumes the run (same --out, same settings).
#SBATCH --job-name=phononbench
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=08:00:00
#SBATCH --output=phononbench-%j.log

set -euo pipefail
INPUTS=${INPUTS:-$PWD/inputs}          # one sub-folder (or zip / table) per generator
OUT=${OUT:-$PWD/runs/full}            # on a shared filesystem: every node writes parts here
# GPU workers: by default each GPU is shared by as many workers (1 CPU each) as its node has CPUs for, at most 8
# (32 CPUs / 4 GPUs: 7 a GPU); set GPUS_PER_WORKER (e.g. 1) to choose
GPU_SHARE=${GPUS_PER_WORKER:+--gpus-per-worker $GPUS_PER_WORKER}
source ${VENV:-$HOME/pb}/bin/activate

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
port=6379
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')

srun --nodes=1 --ntasks=1 -w "$head" \
  ray start --head --node-ip-address="$head_ip" --port=$port \
  --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="$SLURM_GPUS_PER_NODE" --block &
sleep 20
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" \
    ray start --address="$head_ip:$port" \
    --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="$SLURM_GPUS_PER_NODE" --block &
done
sleep 20

phononbench run "$INPUTS" --out "$OUT" --ray-address "$head_ip:$port" --device cuda \
  --engine torchsim $GPU_SHARE --timeout-per-structure 900 --max-retries 2
phononbench summarize "$OUT"
