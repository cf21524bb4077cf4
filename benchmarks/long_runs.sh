#!/usr/bin/env bash
# The project's long runs, in two background lanes, every step resumable (run it again after an interruption:
# finished steps are read, unfinished ones continue from their checkpoints).
#
#   setsid nohup benchmarks/long_runs.sh > runs/long_runs.log 2>&1 &     # from the repo root, after `make install`
#
# Lane 1: the HalfCheetahDir backbone x method comparison (a Tune sweep, two trials at a time).
# Lane 2, one process at a time: trial memory on Navigation2D (5 M env steps), the HalfCheetahDir ablation
#   (19 variants x 2 seeds x 5 M env steps: it picks the MuJoCo default of the >= 30 M run), then trial memory on
#   HalfCheetahDir (10 M).
# Each step's own log is under runs/; results land in docs/results/ (then `metarl report` / the BENCHMARKS tables).
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p runs/sweeps runs/trial-memory

resume_flag() {  # --resume once the sweep's experiment folder exists
    [ -d "runs/sweeps/$1" ] && echo --resume
}

lane1() {
    .venv/bin/metarl sweep --size desktop --backbones mlp,gru,lru,ssm --tasks halfcheetah-dir \
        --methods maml,multitask --seeds 2 --num-cpus 2 --storage runs/sweeps --name hcdir-5M \
        $(resume_flag hcdir-5M) >> runs/hcdir-5M.log 2>&1
}

lane2() {
    $PY benchmarks/trial_memory_bench.py --task navigation-2d --budget 5000000 \
        >> runs/trial-memory/navigation-2d.log 2>&1
    $PY benchmarks/ablate_hcdir.py --train-args "--num-env-runners 0" >> runs/hcdir-ablation.log 2>&1
    $PY benchmarks/trial_memory_bench.py --task halfcheetah-dir --budget 10000000 --eval-tasks 2 --eval-episodes 20 \
        >> runs/trial-memory/halfcheetah-dir.log 2>&1
}

lane1 &
lane2 &
wait
