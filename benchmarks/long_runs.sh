#!/usr/bin/env bash
# The project's long runs, in three background lanes, every step resumable (run it again after an interruption:
# finished steps are read, unfinished ones continue from their checkpoints).
#
#   setsid nohup benchmarks/long_runs.sh > runs/long_runs.log 2>&1 &     # from the repo root, after `make install`
#
# Lane 1: the HalfCheetahDir backbone x method comparison (a Tune sweep, two trials at a time; Ray runs its trials
#   at niceness 15, so the other lanes run at 15 too: without it the sweep got ~5% of a core).
# Lane 2, one process at a time: the HalfCheetahDir ablation (22 variants x 2 seeds x 5 M env steps, each variant
#   one knob of the table's defaults: --preset default), then trial memory on HalfCheetahDir (10 M).
# Lane 3: HalfCheetahDir to 30 M env steps with the MuJoCo default (--preset auto), 2 seeds; then a second process
#   on the trial-memory plan (a run that the other process trains is skipped: run_one checks its lock).
# Each step's own log is under runs/; results land in docs/results/ (then `metarl report` / the BENCHMARKS tables).
set -u
cd "$(dirname "$0")/.."
PY="nice -n 15 .venv/bin/python"  # the niceness Ray gives the sweep's trials: every lane gets an equal share
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
    $PY benchmarks/ablate_hcdir.py --train-args "--num-env-runners 0" >> runs/hcdir-ablation.log 2>&1
    $PY benchmarks/trial_memory_bench.py --task halfcheetah-dir --budget 10000000 --eval-tasks 2 --eval-episodes 20 \
        >> runs/trial-memory/halfcheetah-dir.log 2>&1
}

lane3() {  # then a second process on lane 2's trial-memory plan (each skips the run the other is training)
    $PY benchmarks/hcdir_long.py >> runs/hcdir-long.log 2>&1
    $PY benchmarks/trial_memory_bench.py --task halfcheetah-dir --budget 10000000 --eval-tasks 2 --eval-episodes 20 \
        >> runs/trial-memory/halfcheetah-dir-2.log 2>&1
}

lane1 &
lane2 &
lane3 &
wait
