"""``--num-env-runners auto`` / ``--num-learners auto``: the layout picked from the cores (metarl.apps.layout)."""

from __future__ import annotations

import pytest

from metarl.apps.layout import Layout, pick_layout, resolve


@pytest.mark.parametrize("cores, batch, runners, learners", [
    (1, 20, 0, 0),  # one core: everything in the driver
    (2, 20, 2, 2),
    (3, 20, 3, 2),  # Learners shard the tasks: the largest divisor of 20 that is <= 3
    (16, 20, 16, 10),
    (2, 7, 2, 0),  # a prime meta-batch above the cores: no sharding, the Learner stays in the driver
    (8, 1, 8, 0),
])
def test_pick_layout(cores, batch, runners, learners):
    layout = pick_layout(cores, meta_batch_size=batch)
    assert (layout.num_env_runners, layout.num_learners) == (runners, learners)
    assert batch % max(layout.num_learners, 1) == 0
    assert layout.ray_cpus == 1 + runners + learners


def test_resolve_replaces_only_auto():
    assert resolve(3, 0, cores=2, meta_batch_size=20) == (3, 0, None)
    assert resolve("auto", 0, cores=2, meta_batch_size=20) == (2, 0, Layout(2, 2, 0))
    assert resolve(1, "auto", cores=2, meta_batch_size=20) == (1, 2, Layout(2, 1, 2))
    runners, learners, layout = resolve("auto", "auto", cores=4, meta_batch_size=20)
    assert (runners, learners) == (4, 4) and "4 remote EnvRunners, 4 remote Learners" in layout.describe()


@pytest.mark.parametrize("cores", [0, -1, 1.5, "2"])
def test_bad_core_counts_are_refused(cores):
    with pytest.raises(ValueError, match="cores"):
        pick_layout(cores, meta_batch_size=20)
