"""Meta-World families: the goal sets are Meta-World's own, the task API round trip, two envs (as two runners) give
the same episodes, horizons above 500 are refused, success recorded by the sampler = a hand count on replayed
infos, and one tiny MAML iteration on metaworld-ml1-reach with a GRU."""

from __future__ import annotations

import pickle

import gymnasium as gym
import metaworld
import numpy as np
import pytest
import torch
from metaworld.env_dict import ML10_V3

import metarl.tasks as T
from metarl.tasks import check_task_distribution
from metarl.tasks.metaworld import MAX_HORIZON, MetaWorldTask

ML1 = {"metaworld-ml1-reach": "reach-v3", "metaworld-ml1-push": "push-v3", "metaworld-ml1-pick-place": "pick-place-v3"}


def rand_vecs(mw_tasks):
    return [tuple(pickle.loads(t.data)["rand_vec"]) for t in mw_tasks]


# ---- construction: the goal sets are Meta-World's ----------------------------------------------------------------
@pytest.mark.parametrize("name", list(ML1))
def test_ml1_family_holds_metaworlds_train_and_held_out_goals(name):
    env = T.make(name, task_seed=0)
    family = env.unwrapped
    assert env.spec.max_episode_steps == T.horizon(name) == MAX_HORIZON
    assert family.observation_space.shape == (39,)
    assert family.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    bench = metaworld.ML1(ML1[name], seed=0)  # the oracle: Meta-World's benchmark with the same seed
    train = family.sample_tasks(2000, seed=0)
    assert {t.rand_vec for t in train} == set(rand_vecs(bench.train_tasks))  # all 50, nothing else
    test = family.test_tasks(50)
    assert [t.rand_vec for t in sorted(test, key=lambda t: t.rand_vec)] == sorted(rand_vecs(bench.test_tasks))
    assert {t.env for t in train + test} == {0.0} and family.env_names == (ML1[name],)


def test_check_task_distribution_passes_on_ml1_reach():  # every family: tests/test_tasks.py
    check_task_distribution(T.make("metaworld-ml1-reach"))


def test_ml10_trains_on_ten_classes_and_holds_out_five():
    family = T.make("metaworld-ml10", task_seed=0).unwrapped
    train_names, test_names = list(ML10_V3["train"]), list(ML10_V3["test"])  # (not a second ~10 s ML10 build)
    assert family.env_names == tuple(train_names + test_names) and len(train_names) == 10 and len(test_names) == 5
    batch = family.sample_tasks(20, seed=3)
    counts = np.bincount([int(t.env) for t in batch], minlength=15)
    np.testing.assert_array_equal(counts, [2] * 10 + [0] * 5)  # balanced over the training classes
    held_out = family.test_tasks(250)
    assert {family.env_names[int(t.env)] for t in held_out} == set(test_names)
    assert len(set(held_out)) == 250 and not set(held_out) & set(family.sample_tasks(1000, seed=0))
    assert [int(t.env) for t in family.test_tasks(10)] == [10, 11, 12, 13, 14] * 2  # classes interleaved


# ---- the task API ----------------------------------------------------------------------------------------------------
def test_task_api_round_trip_pickle_and_arrays():
    env = T.make("metaworld-ml1-push", task_seed=0)
    family = env.unwrapped
    task = family.test_tasks(3)[2]
    family.set_task(task)
    assert family.get_task() == task == family.task
    array = task.as_array()
    assert array.dtype == np.float64 and array.shape == (7,) and array[0] == 0.0
    np.testing.assert_array_equal(array[1:], task.rand_vec)
    assert MetaWorldTask.from_array(array) == task and pickle.loads(pickle.dumps(task)) == task
    _, info = env.reset(seed=0)
    np.testing.assert_array_equal(info["task"], array)
    _, _, _, _, info = env.step(np.zeros(4, np.float32))
    np.testing.assert_array_equal(info["task"], array)
    assert info["success"] in (0.0, 1.0)
    clone = pickle.loads(pickle.dumps(family))
    assert clone.get_task() == task and type(clone).__name__ == "MetaWorldML1Env"
    clone.close()


def test_bad_tasks_are_refused_with_the_field_and_what_is_allowed():
    family = T.make("metaworld-ml1-reach", task_seed=0).unwrapped
    before = family.task
    good = family.sample_tasks(1, seed=0)[0]
    moved = MetaWorldTask(0, (good.rand_vec[0] + 0.01, *good.rand_vec[1:]))  # a goal not in the benchmark's sets
    with pytest.raises(ValueError, match=r"MetaWorldTask.rand_vec = .* not allowed for reach-v3.*benchmark_seed 0"):
        family.set_task(moved)
    with pytest.raises(ValueError, match=r"MetaWorldTask.env = 3.0 is not allowed; allowed: 0..0"):
        family.set_task(MetaWorldTask(3, good.rand_vec))
    with pytest.raises(ValueError, match="MetaWorldTask.env must be an integer"):
        MetaWorldTask(0.5, good.rand_vec)
    with pytest.raises(ValueError, match="must be a MetaWorldTask"):
        family.set_task(T.GoalTask((0.0, 0.0)))
    assert family.task == before
    with pytest.raises(ValueError, match="env_name = 'reach-v9' is not a Meta-World v3 env"):
        T.make("metaworld-ml1-reach", env_name="reach-v9")
    with pytest.raises(ValueError, match="benchmark_seed must be an int >= 0"):
        T.make("metaworld-ml1-reach", benchmark_seed=-1)


# ---- determinism: two envs, as two runners given the same task job ------------------------------------------------
def episode(env, task, actions, seed):
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=seed)
    out = [np.concatenate([obs, [0.0, 0.0, 0.0, 0.0]])]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out.append(np.concatenate([obs, [reward, info["success"], terminated, truncated]]))
    return np.array(out)


@pytest.mark.parametrize("name", ["metaworld-ml1-pick-place", "metaworld-ml10"])
def test_two_envs_given_the_same_task_and_seed_produce_the_same_episode(name):
    a, b = T.make(name, task_seed=0, horizon=30), T.make(name, task_seed=1, horizon=30)
    tasks = a.unwrapped.sample_tasks(10, seed=5)
    task, other = tasks[0], next(t for t in tasks if t.env != tasks[0].env or t != tasks[0])
    actions = np.random.default_rng(0).uniform(-1, 1, size=(30, 4)).astype(np.float32)
    episode(b, other, actions[::-1], seed=9)  # runner b ran another task (ML10: another class) before this job
    first = episode(a, task, actions, seed=3)
    second = episode(b, task, actions, seed=3)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, episode(b, other, actions, seed=3))  # and the task matters


# ---- the horizon -----------------------------------------------------------------------------------------------------
def test_horizon_above_500_is_refused():
    with pytest.raises(ValueError, match=r"horizon \(max_episode_steps\) = 501 is not allowed for metaworld-ml1-reach"
                                         r".*allowed: 1..500"):
        T.make("metaworld-ml1-reach", horizon=501)
    with pytest.raises(ValueError, match="allowed: 1..500"):
        T.make("metaworld-ml10", max_episode_steps=1000)
    with pytest.raises(ValueError, match="allowed: 1..500"):
        T.check_horizon("metarl/MetaWorldML1Push-v0", 600)
    T.check_horizon("metaworld-ml1-push", 500)
    T.check_horizon("halfcheetah-vel", 1000)  # other families have no such limit
    # made around metarl.tasks.make: Meta-World truncates at 500 and the family refuses the 501st step
    env = gym.make("metarl/MetaWorldML1Reach-v0", max_episode_steps=600)
    env.reset(seed=0)
    for _ in range(MAX_HORIZON):
        _, _, terminated, truncated, _ = env.step(np.zeros(4, np.float32))
    assert (terminated, truncated) == (False, True)
    with pytest.raises(ValueError, match="at most 500 steps"):
        env.step(np.zeros(4, np.float32))


# ---- success: what the sampler records = a hand count on the infos of the same episodes, replayed -----------------
def aiming_params(net, direction, *, log_std):
    """An mlp PolicyNet whose mean action is ``direction`` everywhere (zero weights, last bias) with σ = e^log_std."""
    params = {k: torch.zeros_like(p) for k, p in net.named_parameters()}
    last_bias = [k for k, p in params.items() if k.endswith("bias") and p.shape == (4,)][-1]
    params[last_bias] = torch.as_tensor(direction, dtype=torch.float32)
    params["log_std"] = torch.full((4,), float(log_std))
    return params


def replayed_success(env, task, actions, mask):
    """Hand count: replay each episode's actions (clipped as the sampler clips them) on a fresh env; an episode
    succeeds if ``info["success"]`` is 1 at any step."""
    out = []
    for ep_actions, ep_mask in zip(actions, mask):
        env.unwrapped.set_task(task)
        env.reset(seed=0)
        infos = [env.step(np.clip(a, -1.0, 1.0))[4] for a in ep_actions[: int(ep_mask.sum())]]
        out.append(float(any(info["success"] == 1.0 for info in infos)))
    return np.array(out)


def test_recorded_success_equals_a_hand_count_on_replayed_infos():
    from metarl.policy_net import PolicyNet
    from metarl.sampler import sample_episodes

    horizon = 40
    envs = [T.make("metaworld-ml1-reach", task_seed=0, horizon=horizon) for _ in range(2)]
    net = PolicyNet.for_spaces(envs[0].observation_space, envs[0].action_space, backbone="mlp", width=8)
    task = envs[0].unwrapped.test_tasks(1)[0]
    for env in envs:
        env.unwrapped.set_task(task)
    hand = envs[0].reset(seed=0)[0][:3]
    goal = np.array(task.rand_vec[3:])  # reach-v3: rand_vec = object xyz, goal xyz
    aim = np.append((goal - hand) / np.abs(goal - hand).max(), 0.0)  # straight at the goal, 1 cm per step at most
    counts = []
    for log_std in (-1.5, 0.0):  # small noise: mostly successes; large noise: mostly failures
        batch = sample_episodes(envs, net, aiming_params(net, aim, log_std=log_std), num_episodes=8, seed=1)
        assert batch.success is not None and batch.success.shape == (8,)
        hand_count = replayed_success(envs[0], task, batch.actions, batch.mask)
        np.testing.assert_array_equal(batch.success, hand_count)
        counts.append(int(hand_count.sum()))
    assert counts[0] > counts[1] and 0 < sum(counts) < 16, counts  # both outcomes occur: the count is not vacuous


# ---- one tiny MAML iteration on metaworld-ml1-reach with a recurrent backbone --------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    import ray
    from conftest import init_ray_with_tests_on_path

    init_ray_with_tests_on_path()
    yield
    ray.shutdown()


def test_one_maml_iteration_on_ml1_reach_with_a_gru(ray_session):
    from rllib_ext.config import MAMLConfig
    from rllib_ext.rllib_internals import local_learner

    cfg = (MAMLConfig()
           .meta(task="metaworld-ml1-reach", backbone="gru", width=8, horizon=20, meta_batch_size=2,
                 episodes_per_task=2, outer_steps=1)
           .env_runners(num_env_runners=0, num_envs_per_env_runner=2)
           .debugging(seed=0))
    algo = cfg.build_algo()
    try:
        policy = local_learner(algo.learner_group).policy
        before = [p.detach().clone() for p in policy.parameters()]
        result = algo.train()
        adapt = result["adapt"]
        assert result["env_steps"]["this_iter"] == 2 * (2 + 2) * 20  # tasks x (support + query episodes) x horizon
        assert np.isfinite(adapt["return_step_0"]) and np.isfinite(adapt["return_step_1"])
        for k in (0, 1):  # fractions of 2 tasks x 2 episodes
            assert adapt[f"success_step_{k}"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert all(t.env == 0.0 for t in algo.last_tasks)
        assert any(not torch.equal(a, b) for a, b in zip(policy.parameters(), before)), "θ must move"
    finally:
        algo.stop()


# ---- success in `metarl evaluate` and `metarl report`: rates = hand counts of successful episodes -------------------
def test_evaluate_and_report_success_rates_are_hand_counts():
    from metarl.apps.evaluate import format_table, success_summary
    from metarl.apps.report import Trial, markdown_table, summarize

    per_task = [{"success": [[0, 0, 1, 0], [1, 1, 1, 0]]}, {"success": [[0, 0, 0, 0], [1, 0, 1, 0]]},
                {"success": [[1, 0, 0, 0], [1, 1, 1, 1]]}]
    before, after = success_summary(per_task, 0), success_summary(per_task, 1)
    assert before["success_rate"] == pytest.approx(2 / 12) and after["success_rate"] == pytest.approx(9 / 12)
    rates = np.array([2, 3, 4]) / 4  # per task after one step; sem over tasks by hand
    assert after["success_sem_tasks"] == pytest.approx(np.std(rates, ddof=1) / np.sqrt(3))
    assert success_summary([{"success": None}], 0) == {}  # families without success: no columns
    steps = [{"k": k, "return_mean": 1.0, "return_sem_tasks": 0.0, "return_std_tasks": 0.0,
              "return_std_episodes": 0.0, "env_steps": 8, "env_steps_cumulative": 8 * (k + 1), **s}
             for k, s in enumerate((before, after))]
    table = format_table({"task": "metaworld-ml1-reach", "num_tasks": 3, "episodes": 4, "inner_lr": 0.1,
                          "checkpoint": "c", "steps": steps})
    assert "success ± sem" in table and "16.7%" in table and "75.0%" in table

    def trial(name, seed, s0, s1):
        params = {"task": "metaworld-ml1-reach", "backbone": "gru", "inner_steps": 1, "seed": seed}
        return Trial(name, params, [{"adapt/return_step_0": 0.0, "adapt/return_step_1": 1.0,
                                     "adapt/success_step_0": s0, "adapt/success_step_1": s1}])

    cells = summarize([trial("a", 0, 0.1, 0.5), trial("b", 1, 0.3, 0.7)])
    assert cells[0]["success_step_1"] == pytest.approx((0.6, np.std([0.5, 0.7], ddof=1)))
    assert "20.0 ± 14.1% → 60.0 ± 14.1%" in markdown_table(cells)
