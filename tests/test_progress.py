"""The sweep's progress line: training columns always, the held-out columns once the trial has evaluated."""

from tune_configs.progress import HEADER, result_line

CONFIG = {"task": "navigation-2d", "backbone": "gru", "method": "maml", "seed": 0}
TRAIN = {"training_iteration": 3, "adapt": {"return_step_0": -10.0, "return_post": -7.5},
         "env_steps": {"lifetime": 1200}, "time_total_s": 4.0}


def test_training_columns_only_before_any_evaluation():
    line = result_line(CONFIG, TRAIN)
    assert line.split()[:6] == ["navigation-2d/gru/maml/s0", "3", "-10.00", "-7.50", "+2.50", "1,200"]
    assert line.endswith("4.0s")


def test_held_out_columns_show_the_last_evaluation_and_mark_a_fresh_one():
    fresh = result_line(CONFIG, {**TRAIN, "eval": {"return_step_0": -20.25, "return_post": -12.5, "fresh": 1.0}})
    carried = result_line(CONFIG, {**TRAIN, "eval/return_step_0": -20.25, "eval/return_post": -12.5,
                                   "eval/fresh": 0.0})
    assert fresh.split()[-2:] == ["-20.25", "-12.50*"]
    assert carried.split()[-2:] == ["-20.25", "-12.50"]
    assert len(fresh) == len(carried) <= len(HEADER) + 1
