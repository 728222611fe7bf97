"""Training pipeline: config loading, exact resume after a kill, seeded determinism, and that Dice improves."""

from __future__ import annotations

import pytest
import torch

from rlreg.pipelines.train import load_config, train
from rlreg.sac import load_checkpoint

TINY = [
    "agent.network.widths=[4, 8]", "agent.network.plan_dim=6", "agent.network.critic_widths=[4, 8]",
    "agent.network.critic_hidden=16", "agent.task.num_labels=1", "agent.task.aux_dice=0.0",
    "loop.device=cpu", "loop.num_envs=4", "loop.warmup_steps=1", "loop.batch_size=4", "loop.eval_pairs=8",
    "loop.eval_steps=2", "loop.eval_every=3", "loop.checkpoint_every=3", "loop.total_steps=6",
]


class KilledError(Exception):
    pass


def test_load_config_overrides_and_errors(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loop:\n  total_steps: 10\nagent:\n  sac:\n    gamma: 0.5\n")
    config = load_config(recipe, ["loop.total_steps=7", "agent.network.widths=[8, 16]"])
    assert config.loop.total_steps == 7 and config.agent.sac.gamma == 0.5
    assert config.agent.network.widths == (8, 16)
    with pytest.raises(ValueError, match=r"unknown config keys \['loop.nope'\]"):
        load_config(recipe, ["loop.nope=1"])
    with pytest.raises(ValueError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match=r"section\.key=value"):
        load_config(None, ["loop.total_steps"])


def test_the_recipe_names_the_task_and_registration_is_the_default() -> None:
    from rlreg.tasks import RegistrationConfig

    config = load_config(None, ["agent.task.max_steps=3"])
    assert config.agent.task_name == "registration" and config.agent.task == RegistrationConfig(max_steps=3)
    with pytest.raises(ValueError, match=r"unknown task 'nope'; registered tasks: .*registration"):
        load_config(None, ["agent.task_name=nope"])
    with pytest.raises(ValueError, match=r"dataset 'nope' is unknown; use one of digits, .*synth"):
        train(load_config(None, ["data.dataset=nope", "loop.device=cpu"]))


def test_shipped_recipe_loads() -> None:
    from pathlib import Path

    import rlreg.pipelines

    recipe = Path(rlreg.pipelines.__file__).parent / "recipes" / "digits.yaml"
    config = load_config(recipe)
    assert config.agent.network.ndim == 2 and config.data.dataset == "digits"


def _weights(path) -> torch.Tensor:
    agent, _ = load_checkpoint(path)
    return torch.cat([p.detach().flatten() for p in agent.parameters()])


def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path) -> None:
    straight = load_config(None, [*TINY, f"loop.output={tmp_path / 'a'}"])
    train(straight)

    interrupted = load_config(None, [*TINY, f"loop.output={tmp_path / 'b'}"])

    def kill_after_four(step: int, total: int, metrics: dict) -> None:
        if step == 4:
            raise KilledError

    with pytest.raises(KilledError):
        train(interrupted, progress=kill_after_four)
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=True)["step"] == 3
    summary = train(interrupted, resume=True)
    assert summary.history[-1]["step"] == 6
    assert torch.equal(_weights(tmp_path / "a" / "model.pt"), _weights(tmp_path / "b" / "model.pt"))
    a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert a == b
    assert (tmp_path / "b" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the curve, redrawn


def test_best_checkpoint_is_the_evaluation_with_the_highest_held_out_dice(tmp_path, monkeypatch) -> None:
    """``best.pt`` follows the highest held-out Dice (the later evaluation on a tie); ``model.pt`` the latest."""
    from rlreg.pipelines import train as train_module

    scores = iter([0.3, 0.5, 0.4, 0.5, 0.2, 0.1])
    monkeypatch.setattr(train_module, "evaluate",
                        lambda *args, **kwargs: train_module.EvalResult([0.1, next(scores)],
                                                                        {"folding_percent": [0.0, 0.0]}, "dice"))
    train(load_config(None, [*TINY, "loop.total_steps=12", "loop.eval_every=2", f"loop.output={tmp_path}"]))
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    latest = torch.load(tmp_path / "model.pt", weights_only=True)
    assert best["step"] == 8 and best["eval"]["score_per_step"] == [0.1, 0.5]
    assert latest["eval"]["score_per_step"] == [0.1, 0.1]
    agent, _ = load_checkpoint(tmp_path / "best.pt")  # a checkpoint like model.pt: exportable as it is
    assert sum(p.numel() for p in agent.parameters()) > 0


def test_seeded_runs_are_identical_and_seeds_matter(tmp_path) -> None:
    runs = []
    for name, seed in (("x", 0), ("y", 0), ("z", 1)):
        config = load_config(None, [*TINY, "loop.total_steps=3", f"loop.seed={seed}", f"loop.output={tmp_path / name}"])
        train(config)
        runs.append(_weights(tmp_path / name / "model.pt"))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.slow
def test_digits_agent_learns_to_register(tmp_path) -> None:
    """A short CPU run of the shipped digits recipe: Dice on held-out pairs rises well above the unregistered one."""
    from pathlib import Path

    import rlreg.pipelines

    recipe = Path(rlreg.pipelines.__file__).parent / "recipes" / "digits.yaml"
    config = load_config(recipe, ["loop.device=cpu", "loop.total_steps=150", "loop.eval_every=150",
                                  "loop.eval_pairs=100", "loop.eval_steps=20", f"loop.output={tmp_path}"])
    summary = train(config)
    record = summary.history[-1]
    assert record["dice_best"] > record["dice0"] + 0.15, record


def test_init_from_starts_from_the_given_weights_and_checks_the_config(tmp_path) -> None:
    """Fine-tuning: with no update yet (warm-up longer than the run) the saved model is the one it started from,
    critics and temperature included; without ``init_from`` it is not; another agent config is refused."""
    first = load_config(None, [*TINY, "loop.total_steps=3", f"loop.output={tmp_path / 'first'}"])
    train(first)
    source = tmp_path / "first" / "model.pt"
    idle = [*TINY, "loop.total_steps=2", "loop.warmup_steps=50", "loop.seed=7"]
    train(load_config(None, [*idle, f"loop.init_from={source}", f"loop.output={tmp_path / 'tuned'}"]))
    train(load_config(None, [*idle, f"loop.output={tmp_path / 'fresh'}"]))
    tuned = torch.load(tmp_path / "tuned" / "model.pt", weights_only=True)["state_dicts"]
    saved = torch.load(source, weights_only=True)["state_dicts"]
    for part in ("planner", "actor", "critic", "critic_target"):
        for key, value in saved[part].items():
            assert torch.equal(tuned[part][key], value), (part, key)
    assert torch.equal(tuned["log_alpha"], saved["log_alpha"])
    assert not torch.equal(_weights(tmp_path / "fresh" / "model.pt"), _weights(source))
    other = load_config(None, [*idle, "agent.network.plan_dim=5", f"loop.init_from={source}",
                               f"loop.output={tmp_path / 'other'}"])
    with pytest.raises(ValueError, match="another agent config"):
        train(other)
    with pytest.raises(ValueError, match="not a readable rlreg checkpoint"):
        train(load_config(None, [*idle, f"loop.init_from={tmp_path / 'none.pt'}", f"loop.output={tmp_path / 'x'}"]))


def test_resume_refuses_another_agent_config(tmp_path) -> None:
    config = load_config(None, [*TINY, "loop.total_steps=3", f"loop.output={tmp_path}"])
    train(config)
    other = load_config(None, [*TINY, "loop.total_steps=6", "agent.sac.gamma=0.5", f"loop.output={tmp_path}"])
    with pytest.raises(ValueError, match="another agent config"):
        train(other, resume=True)


SYNTH = [
    "data.dataset=synth", "data.synth.kind=shapes", "data.synth.ndim=2", "data.synth.shape=[24, 20]",
    "data.synth.num_labels=4", "agent.task.num_labels=4", "agent.task.aux_dice=1.0",
]


def test_synthetic_training_runs_resumes_exactly_and_saves_the_recipe(tmp_path) -> None:
    straight = load_config(None, [*TINY, *SYNTH, f"loop.output={tmp_path / 'a'}"])
    summary = train(straight)
    assert summary.history[-1]["step"] == 6 and summary.world_size == 1
    interrupted = load_config(None, [*TINY, *SYNTH, f"loop.output={tmp_path / 'b'}"])

    def kill_after_four(step: int, total: int, metrics: dict) -> None:
        if step == 4:
            raise KilledError

    with pytest.raises(KilledError):
        train(interrupted, progress=kill_after_four)
    train(interrupted, resume=True)
    assert torch.equal(_weights(tmp_path / "a" / "model.pt"), _weights(tmp_path / "b" / "model.pt"))
    _, data = load_checkpoint(tmp_path / "a" / "model.pt")
    assert tuple(data["train_config"]["data"]["synth"]["shape"]) == (24, 20)


def test_bf16_autocast_trains_on_cpu(tmp_path) -> None:
    config = load_config(None, [*TINY, *SYNTH, "loop.amp=bf16", f"loop.output={tmp_path}"])
    summary = train(config)
    assert all(torch.isfinite(torch.tensor(r["dice_final"])) for r in summary.history)
    with pytest.raises(ValueError, match=r"loop\.amp"):
        train(load_config(None, [*TINY, *SYNTH, "loop.amp=fp8", f"loop.output={tmp_path / 'x'}"]))


def test_torchrun_data_parallel_keeps_ranks_identical(tmp_path) -> None:
    """Two gloo processes under torchrun: each draws its own pairs, gradients are averaged, weights stay equal."""
    import os
    import subprocess
    import sys

    recipe = tmp_path / "r.yaml"
    recipe.write_text("loop:\n  device: cpu\n")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "rlreg.pipelines.train", str(recipe), *TINY, *SYNTH, f"loop.output={out}"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [torch.load(out / f"state.rank{r}.pt", weights_only=True) for r in (0, 1)]
    weights = [torch.cat([v.flatten().float() for v in s["agent"]["state_dicts"]["planner"].values()]) for s in ranks]
    assert torch.equal(weights[0], weights[1])
    # the ranks saw different pairs (their own data streams)
    assert not torch.equal(ranks[0]["task"]["fixed"], ranks[1]["task"]["fixed"])
    # and training moved the weights away from the initialisation both started from
    first = load_config(None, [*TINY, *SYNTH, "loop.total_steps=1", "loop.warmup_steps=5",
                               f"loop.output={tmp_path / 'init'}"])
    train(first)
    init = torch.load(tmp_path / "init" / "state.pt", weights_only=True)
    assert not torch.equal(weights[0], torch.cat([v.flatten().float()
                                                  for v in init["agent"]["state_dicts"]["planner"].values()]))
    assert (out / "model.pt").exists() and not (out / "state.pt").exists()


GRU = ["agent.network.memory=gru", "agent.task.max_steps=2", "loop.min_store_score=-1.0",
       "loop.buffer_capacity=100"]


def test_gru_transitions_store_the_carried_memory_zeroed_at_each_episode_start(tmp_path) -> None:
    """Episodes of two steps, every transition stored in step order (4 environments per step): a transition's
    memory is zero at an episode's first step and its previous step's ``next_memory`` at the second."""
    train(load_config(None, [*TINY, *GRU, "loop.warmup_steps=100", f"loop.output={tmp_path}"]))
    storage = torch.load(tmp_path / "state.pt", weights_only=True)["buffer"]["storage"]
    memory, next_memory = storage["memory"], storage["next_memory"]
    assert memory.shape[0] == next_memory.shape[0] == 6 * 4 and memory.shape == next_memory.shape
    for step in range(6):
        rows = slice(4 * step, 4 * step + 4)
        assert next_memory[rows].abs().amax(dim=tuple(range(1, memory.ndim))).gt(0).all()
        if step % 2 == 0:  # the first step of an episode (at the start and right after every reset)
            assert torch.equal(memory[rows], torch.zeros_like(memory[rows]))
        else:
            assert memory[rows].abs().amax(dim=tuple(range(1, memory.ndim))).gt(0).all()
            assert torch.equal(memory[rows], next_memory[4 * step - 4:4 * step])


def test_gru_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path) -> None:
    straight = load_config(None, [*TINY, *GRU, "agent.task.max_steps=4", f"loop.output={tmp_path / 'a'}"])
    train(straight)
    interrupted = load_config(None, [*TINY, *GRU, "agent.task.max_steps=4", f"loop.output={tmp_path / 'b'}"])

    def kill_after_four(step: int, total: int, metrics: dict) -> None:
        if step == 4:
            raise KilledError

    with pytest.raises(KilledError):
        train(interrupted, progress=kill_after_four)
    saved = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert saved["step"] == 3 and saved["memory"].abs().sum() > 0  # mid-episode: a carried, non-zero memory
    train(interrupted, resume=True)
    assert torch.equal(_weights(tmp_path / "a" / "model.pt"), _weights(tmp_path / "b" / "model.pt"))
    a, b = (torch.load(tmp_path / name / "state.pt", weights_only=True) for name in ("a", "b"))
    assert torch.equal(a["memory"], b["memory"])
    for field in a["buffer"]["storage"]:
        assert torch.equal(a["buffer"]["storage"][field], b["buffer"]["storage"][field]), field
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
    # a state file whose buffer holds no memories (written before they were stored) is refused in one line
    for name in ("memory", "next_memory"):
        del b["buffer"]["storage"][name]
    torch.save(b, tmp_path / "b" / "state.pt")
    with pytest.raises(ValueError, match="holds no planner memories"):
        train(interrupted, resume=True)


def test_memoryless_state_file_has_no_memory_fields(tmp_path) -> None:
    train(load_config(None, [*TINY, "loop.total_steps=2", f"loop.output={tmp_path}"]))
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    assert "memory" not in saved
    assert not {"memory", "next_memory"} & set(saved["buffer"]["storage"])
