"""``--preset`` of ``metarl train``: the config a preset produces, flags given explicitly win, what it prints, bad names.

No Ray: the flags are parsed and turned into a ``MAMLConfig`` (``metarl.apps.flags.config_from_args``).
"""

from __future__ import annotations

import argparse

import pytest

from metarl import tasks
from metarl.apps import flags
from rllib_ext.config import MAMLConfig
from rllib_ext.fields import BY_NAME, FIELDS

#: the published anchors, written out (not read from PRESETS): MAML / ProMP on HalfCheetahDir
PAPER = dict(meta_batch_size=40, episodes_per_task=20, inner_steps=1, inner_lr=0.1, first_order=False, backbone="mlp",
             width=100, backbone_kwargs={"num_layers": 2, "activation": "tanh"}, inner_objective="lvc",
             outer_steps=5, lr=1e-3, clip_param=0.3, gamma=0.99, normalize_advantages=True, outer_kl_coeff=0.0,
             outer_target_kl=None)


def parse(*argv: str) -> argparse.Namespace:
    return flags.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_paper_preset_gives_the_published_configuration(capsys):
    cfg = flags.config_from_args(parse("--preset", "paper"))
    assert {k: getattr(cfg, k) for k in PAPER} == PAPER
    untouched = [f.name for f in FIELDS if f.name not in PAPER]
    assert all(getattr(cfg, k) == getattr(MAMLConfig(), k) for k in untouched)  # nothing else moves
    out = capsys.readouterr().out
    assert out.startswith("--preset paper set meta_batch_size=40, episodes_per_task=20") and "width=100" in out
    cfg.validate_meta()  # backbone kwargs, size estimate: a config that builds


def test_flags_given_explicitly_win_over_the_preset_even_at_the_tables_default(capsys):
    args = parse("--preset", "paper", "--meta-batch-size", "20", "--first-order", "--outer-lr", "0.001",
                 "--width", "64")
    cfg = flags.config_from_args(args)
    assert (cfg.meta_batch_size, cfg.first_order, cfg.lr, cfg.width) == (20, True, 1e-3, 64)  # 20, 64: the defaults
    assert (cfg.episodes_per_task, cfg.backbone_kwargs, cfg.inner_objective) == (20, PAPER["backbone_kwargs"], "lvc")
    out = capsys.readouterr().out
    assert "meta_batch_size" not in out.split(" (given")[0] and "width=" not in out
    assert "(given flags kept: --first-order, --meta-batch-size, --outer-lr, --width)" in out


def test_default_preset_is_the_table(capsys):
    for argv in (("--preset", "default"), ("--task", "navigation-2d"), ("--task", "navigation-2d", "--preset", "auto")):
        cfg = flags.config_from_args(parse(*argv))
        assert all(getattr(cfg, f.name) == f.default for f in FIELDS if f.name != "task"), argv
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("task", tasks.LOCOMOTION)
def test_auto_preset_gives_the_mujoco_families_the_mujoco_preset(task, capsys):
    mujoco = flags.PRESETS["mujoco"]
    assert mujoco and all(mujoco[k] != BY_NAME[k].default for k in mujoco)  # it changes something, and says what
    for argv in (("--task", task), ("--task", task, "--preset", "auto")):
        cfg = flags.config_from_args(parse(*argv))
        assert {k: getattr(cfg, k) for k in mujoco} == mujoco
        assert all(getattr(cfg, f.name) == f.default for f in FIELDS if f.name not in mujoco and f.name != "task")
        out = capsys.readouterr().out
        assert out.startswith(f"--preset auto (mujoco: task {task}) set ") and "first_order_until=9000000" in out


def test_the_preset_is_applied_before_the_layout_reads_the_meta_batch():
    args = parse("--preset", "paper", "--num-env-runners", "auto", "--num-cpus", "8")
    flags.resolve_layout(args)
    assert args.meta_batch_size == 40 and args.layout is not None


def test_bad_preset_names_the_flag_the_value_and_the_presets(capsys):
    with pytest.raises(SystemExit) as e:
        parse("--preset", "papr")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--preset" in err and "'papr'" in err and "'auto', 'default', 'mujoco', 'paper'" in err
    args = parse()
    args.preset = "papr"  # a Namespace built in Python, not by the parser
    with pytest.raises(ValueError, match=r"--preset = 'papr' is invalid: one of \['auto', 'default', 'mujoco', 'paper'\]"):
        flags.config_from_args(args)


def test_preset_values_are_checked_by_the_field_table(monkeypatch):
    monkeypatch.setitem(flags.PRESETS, "broken", {"inner_lr": -0.1})
    args = parse()
    args.preset = "broken"
    with pytest.raises(ValueError, match=r"MAMLConfig.inner_lr = -0.1 \(flag --inner-lr\) is invalid"):
        flags.config_from_args(args)
