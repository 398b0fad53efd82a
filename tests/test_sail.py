import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from modalities.image.shapes import Scene, SceneObject, render
from modalities.robot.tabletop import CELL_INDEX, HELDOUT, TableTop, place_cells, tabletop_tasks
from unirl.cli import main
from unirl.errors import UnirlError
from unirl.models import TOY_PLANNER_DIR, load_model
from unirl.models.inverse_dynamics import InverseDynamics, InverseDynamicsConfig, fit
from unirl.recipes.sail import (
    Config,
    Experience,
    JudgeSet,
    changed_mask,
    hint_in,
    hinted,
    moved_words,
    moves_to_end,
    planner_texts,
    relabel_hints,
    run_episodes,
    scripted_policy,
    task_balanced_weights,
    where_answers,
    where_rows,
)


# ----------------------------------------------------------------------------- the table-top toy
def run_scripted(seed: int, noise: float, actions_seed: int = 0):
    env = TableTop()
    frames = [env.reset(tabletop_tasks("heldout") * 3, seed=seed)]
    rng = np.random.default_rng(actions_seed)
    for _ in range(env.horizon):
        step = env.step(env.expert_actions(rng, noise))
        frames.append(step.observation)
    return torch.stack(frames), step.info["success"]


def test_tabletop_is_deterministic_from_its_seed():
    frames, success = run_scripted(seed=3, noise=0.5)
    again, success_again = run_scripted(seed=3, noise=0.5)
    assert torch.equal(frames, again) and torch.equal(success, success_again)
    other, _ = run_scripted(seed=4, noise=0.5)
    assert not torch.equal(frames[0], other[0])  # another seed, other layouts


def test_tabletop_expert_succeeds_and_random_commands_mostly_do_not():
    _, expert = run_scripted(seed=0, noise=0.0)
    _, random = run_scripted(seed=0, noise=1.0)
    assert expert.float().mean() >= 0.9
    assert random.float().mean() <= 0.5


def test_tabletop_moves_blocks_and_ends_on_touch():
    env = TableTop(distractors=(1, 1))
    env.reset(tabletop_tasks("train")[:1], seed=0)
    env.robot[0], env.objects[0] = np.array([0, 0]), np.array([[3, 0], [0, 5]])  # target 3 cells right
    step = env.step(torch.tensor([[0.9, 0.2]]))  # x moves a cell, y (|0.2| < 0.5) does not
    assert env.robot[0].tolist() == [1, 0] and not step.terminated[0]
    step = env.step(torch.tensor([[-1.0, -1.0]]))  # the table's edge stops it
    assert env.robot[0].tolist() == [0, 0]
    env.step(torch.tensor([[1.0, 0.0]]))
    step = env.step(torch.tensor([[1.0, 0.0]]))  # now next to the target
    assert step.terminated[0] and step.info["success"][0] and step.reward[0] == 1.0
    step = env.step(torch.tensor([[1.0, 0.0]]))  # an ended episode ignores actions
    assert env.robot[0].tolist() == [2, 0] and step.reward[0] == 0.0


def test_goal_relations_follow_the_frame_and_stop_with_the_episode():
    env = TableTop(distractors=(1, 1))
    env.reset(tabletop_tasks("train")[:4], seed=0)
    targets = [[4, 1], [0, 2], [2, 5], [5, 5]]  # robot at (2, 2): right and up, left, below, diagonal
    for i, target in enumerate(targets):
        env.robot[i], env.objects[i] = np.array([2, 2]), np.array([target, [5, 0] if i != 1 else [0, 5]])
    assert env.goal_relations() == [{"right of"}, {"left of"}, {"below"}, {"right of", "below"}]
    env.step(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))  # the first two touch their targets
    assert env.goal_relations() == [{"below"}, {"right of", "below"}]


def test_tabletop_splits_are_disjoint_and_distractors_differ_from_the_target():
    train, heldout = tabletop_tasks("train"), tabletop_tasks("heldout")
    assert len(train) == 63 and len(heldout) == 9 and not {t.text for t in train} & {t.text for t in heldout}
    env = TableTop()
    env.reset(train * 4, seed=1)
    assert not any(v[0] in HELDOUT for v in env.variants)  # a training episode's goal is never held out
    assert all(v[0] not in v[1:] and len(set(v)) == len(v) for v in env.variants)
    with pytest.raises(UnirlError, match="split"):
        tabletop_tasks("test")


def test_corner_tasks_succeed_in_the_corner_and_fail_on_a_touch():
    corners = tabletop_tasks("corners")
    assert [t.text for t in corners][0] == "move the robot to the top left corner" and len(corners) == 4
    env = TableTop(distractors=(1, 1))
    env.reset(corners * 25, seed=0)
    assert all(not place_cells(p)[CELL_INDEX[tuple(r.tolist())]] for p, r in zip(env.places, env.robot))
    env.reset(corners[:2], seed=0)  # top left, top right
    env.robot[0], env.objects[0] = np.array([3, 3]), np.array([[5, 0]])
    env.robot[1], env.objects[1] = np.array([4, 4]), np.array([[2, 5]])
    assert env.goal_relations() == [{"left of", "above"}, {"above"}]  # each side all the corner's cells lie on
    step = env.step(torch.tensor([[-1.0, -1.0], [-1.0, 1.0]]))  # into the top left corner; next to the object
    assert step.info["success"].tolist() == [True, False] and step.terminated.tolist() == [True, True]


def test_halves_succeed_in_the_half_and_splits_join_with_commas():
    halves = tabletop_tasks("halves")
    assert [t.text for t in halves] == [f"move the robot to the {h} half" for h in ("top", "bottom", "left", "right")]
    assert len(tabletop_tasks("train,halves")) == 67 and tabletop_tasks("halves,corners")[4].name == "top_left_corner"
    with pytest.raises(UnirlError, match="'side'"):
        tabletop_tasks("train,side")
    env = TableTop()
    env.reset(halves * 50, seed=0)
    inside = [place_cells(p)[CELL_INDEX[tuple(r.tolist())]] for p, r in zip(env.places, env.robot)]
    assert not any(inside)  # the robot starts outside its half; the objects may stand in it
    assert any(place_cells(p)[[CELL_INDEX[tuple(c)] for c in o.tolist()]].any()
               for p, o in zip(env.places, env.objects))
    env.reset(halves[:2], seed=0)  # top, bottom
    env.robot[0], env.objects[0] = np.array([3, 3]), np.array([[0, 5]])
    env.robot[1], env.objects[1] = np.array([3, 2]), np.array([[5, 5]])
    assert env.goal_relations() == [{"above"}, {"below"}]
    step = env.step(torch.tensor([[0.0, -1.0], [0.0, 1.0]]))  # each one cell into its half
    assert step.info["success"].tolist() == [True, True]


def test_corner_expert_succeeds_and_random_commands_mostly_do_not():
    env = TableTop()
    for noise, bound in ((0.0, 0.9), (1.0, 0.3)):
        env.reset(tabletop_tasks("corners") * 25, seed=5)
        rng = np.random.default_rng(0)
        for _ in range(env.horizon):
            step = env.step(env.expert_actions(rng, noise))
        rate = step.info["success"].float().mean()
        assert rate >= bound if noise == 0 else rate <= bound


def test_retarget_keeps_the_frame_and_gives_another_seen_object_as_the_goal():
    train = tabletop_tasks("train")
    env = TableTop()
    first = env.reset(train, seed=2)
    variants = [list(v) for v in env.variants]
    tasks = env.retarget(train)
    assert torch.equal(env.observation(), first)  # nothing moved: only which object is the goal
    names = {t.name for t in train}
    changed = 0
    for before, after in zip(variants, env.variants):
        assert sorted(before) == sorted(after) and "_".join(after[0]) in names  # a seen task, on the table
        changed += after[0] != before[0]
    assert changed >= len(train) // 2 and [t.name for t in tasks] == ["_".join(v[0]) for v in env.variants]
    rng = np.random.default_rng(0)
    for _ in range(env.horizon):  # the expert now reaches the new goal
        step = env.step(env.expert_actions(rng))
    assert step.info["success"].float().mean() >= 0.9
    with pytest.raises(UnirlError, match="right after reset"):
        env.retarget(train)


# ----------------------------------------------------------------------------- inverse dynamics
def test_inverse_dynamics_recovers_a_known_linear_action_map():
    """Frames of a robot at p and at p + M a (continuous pixels): the network learns to read a."""
    M = torch.tensor([[9.0, 3.0], [-2.0, 7.0]])  # px per unit command, axes mixed

    def pairs(n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        actions = torch.rand(n, 2, generator=g) * 2 - 1
        start = 24 + torch.rand(n, 2, generator=g) * 48
        end = start + actions @ M.T
        scenes = [[Scene({}, [SceneObject("circle", "black", float(x), float(y), 6.7)]) for x, y in p.tolist()]
                  for p in (start, end)]
        return render(scenes[0]), render(scenes[1]), actions

    torch.manual_seed(0)
    idm = InverseDynamics(InverseDynamicsConfig())
    fit(idm, *pairs(1024, 0), steps=300, seed=0)
    frames, next_frames, actions = pairs(128, 1)
    with torch.no_grad():
        error = (idm(frames, next_frames) - actions).abs().mean().item()
    assert error < 0.1 < actions.abs().mean().item()  # predicting 0 would be off by 0.5


# ----------------------------------------------------------------------------- the planner's interface
def test_next_frame_logprobs_match_generation_and_depend_on_the_context(tiny_janus):
    codes = tiny_janus.module.config.vq_config.num_embeddings
    context = torch.randint(codes, (2, tiny_janus.num_image_tokens), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(context[0], context[1])
    tasks = ["move the robot to the red star", "move the robot to the blue heart"]
    rollout = tiny_janus.generate_images(tasks, guidance=2.0, seed=0, context_tokens=context)
    again = tiny_janus.image_token_logprobs(tasks, rollout.tokens, guidance=2.0, context_tokens=context)
    assert torch.allclose(again, rollout.logprobs, atol=1e-4)
    swapped = tiny_janus.image_token_logprobs(tasks, rollout.tokens, guidance=2.0, context_tokens=context.flip(0))
    # A random-init model's context moves log-probs by little, but far beyond the numerical noise.
    noise = (again - rollout.logprobs).abs().max().item()
    assert (swapped - again).abs().max().item() > 100 * noise + 1e-5
    with pytest.raises(UnirlError, match="context_tokens"):
        tiny_janus.generate_images(tasks, context_tokens=context[:1])

    # The same image's pixels, shown to the vision tower too: generation and teacher forcing still
    # agree (with CFG's uncond rows), and the pixels change what is planned.
    pixels = tiny_janus.decode_tokens(context)
    seen = tiny_janus.generate_images(tasks, guidance=2.0, seed=0, context_tokens=context, context_images=pixels)
    forced = tiny_janus.image_token_logprobs(tasks, seen.tokens, guidance=2.0, context_tokens=context,
                                             context_images=pixels)
    assert torch.allclose(forced, seen.logprobs, atol=1e-4)
    other = tiny_janus.image_token_logprobs(tasks, seen.tokens, guidance=2.0, context_tokens=context,
                                            context_images=pixels.flip(0))
    assert (other - forced).abs().max().item() > 100 * (forced - seen.logprobs).abs().max().item() + 1e-5
    with pytest.raises(UnirlError, match="context_images"):
        tiny_janus.generate_images(tasks, context_images=pixels)


def test_moved_words_name_the_larger_axis_of_a_move():
    actions = torch.tensor([[-0.9, 0.2], [0.3, 0.8], [0.6, -0.7], [0.1, 0.2], [0.9, 0.9]])
    assert moved_words(actions) == ["left of", "below", "above", None, "right of"]
    env = TableTop(distractors=(1, 1))  # the words mean what the table does: y grows downwards
    env.reset(tabletop_tasks("train")[:1], seed=0)
    env.robot[0], env.objects[0] = np.array([2, 2]), np.array([[2, 5], [5, 0]])
    assert env.goal_relations() == [{"below"}]
    action = torch.tensor([[0.0, 1.0]])
    env.step(action)
    assert moved_words(action) == ["below"] and env.robot[0].tolist() == [2, 3]  # one cell towards the goal


def test_moves_to_end_sum_each_episodes_remaining_moves():
    actions = torch.tensor([[-0.9, -0.8], [0.2, -0.7], [0.9, 0.1], [-0.7, 0.0]])  # episodes 0, 1, 0, 0 in step order
    total = moves_to_end(actions, torch.tensor([0, 1, 0, 0]))
    assert total.tolist() == [[-1, -1], [0, -1], [0, 0], [-1, 0]]
    assert moved_words(total) == ["left of", "above", None, "left of"]


def test_changed_mask_covers_the_cells_around_a_move():
    tokens = torch.zeros(1, 36, dtype=torch.long)
    next_tokens = tokens.clone()
    next_tokens[0, CELL_INDEX[(2, 2)]], next_tokens[0, CELL_INDEX[(3, 3)]] = 1, 2  # robot left (2,2) for (3,3)
    assert changed_mask(tokens, next_tokens).sum() == 2
    near = changed_mask(tokens, next_tokens, radius=1).view(6, 6)  # [y, x]
    assert near[1:4, 1:4].all() and near[2:5, 2:5].all() and near.sum() == 9 + 9 - 4  # two 3x3 squares overlapping


def test_task_balanced_weights_draw_every_task_equally_whatever_its_hint():
    texts = [hinted("move the robot to the top left corner", "above")] * 3 + ["move the robot to the top left corner",
                                                                            "move the robot to the bottom left corner"]
    weights = task_balanced_weights(texts)
    assert weights[:4].sum() == pytest.approx(1.0) and weights[4] == pytest.approx(1.0)
    draws = torch.multinomial(weights, 4000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert abs((draws == 4).float().mean().item() - 0.5) < 0.03
    assert task_balanced_weights(["the arm: push, then lift", "the arm: push"]).tolist() == [1.0, 1.0]  # no hint cut


def test_true_hints_point_where_the_expert_goes_and_kept_episodes_become_where_rows(tiny_janus):
    env = TableTop(image_size=tiny_janus.generation_image_size)
    tasks = tabletop_tasks("heldout") * 4
    describe = planner_texts(tiny_janus, Config(where_hint=True), truth=env)
    episodes = run_episodes(env, tiny_janus, tasks, 0, scripted_policy(env, 0, 0.0), describe=describe)
    first = episodes.experience.select(torch.arange(len(tasks)))  # step 0 of every episode, in order
    hints = [hint_in(text, task.text) for text, task in zip(first.task, tasks)]
    axis = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
    along = [np.sign(action[axis[h][0]].item()) == axis[h][1] for h, action in zip(hints, first.actions)]
    assert np.mean(along) >= 0.8  # the expert's first move goes the hinted way (detours around distractors aside)

    kept = torch.arange(len(tasks)) % 2 == 0
    rows = where_rows(episodes, kept)
    mine = kept[episodes.episode]
    assert len(rows) == int(mine.sum()) and torch.equal(rows.frames, episodes.experience.frames[mine])
    assert rows.questions == [tasks[e].locate for e in episodes.episode[mine].tolist()]
    assert rows.answers == [hint_in(x, tasks[e].text) for x, e in
                            zip(episodes.experience.task, episodes.episode.tolist()) if kept[e]]
    # In hindsight, to the episode's end: a kept transition's hint is where the robot went from there.
    episodes.keep(kept)
    relabel_hints(episodes, to_end=True)
    went = moved_words(moves_to_end(episodes.experience.actions, episodes.episode))
    assert [hint_in(x, tasks[e].text) for x, e, w in zip(episodes.experience.task, episodes.episode.tolist(), went)
            if kept[e] and w is not None] == [w for w, e in zip(went, episodes.episode.tolist()) if kept[e] and w]


def test_sampled_hints_are_seeded_and_explore_beyond_the_greedy_answer(tiny_janus):
    env = TableTop(image_size=tiny_janus.generation_image_size)
    tasks = tabletop_tasks("heldout") * 2
    frames = env.reset(tasks, 0)
    config = Config(where_hint=True)
    greedy = planner_texts(tiny_janus, config)(frames, tasks)
    assert greedy == planner_texts(tiny_janus, config)(frames, tasks)
    sampled = planner_texts(tiny_janus, config, temperature=1.0, seed=3)
    first, second = sampled(frames, tasks), sampled(frames, tasks)  # a new seed on every call
    assert first != greedy and first != second
    assert first == planner_texts(tiny_janus, config, temperature=1.0, seed=3)(frames, tasks)


@pytest.mark.skipif(not TOY_PLANNER_DIR.is_dir(), reason="the pretrained planner is not shipped")
def test_the_shipped_planner_knows_where_unseen_goals_are_and_follows_its_hint():
    planner = load_model("toy-planner", device="cpu", dtype="float32")
    env = TableTop(image_size=planner.generation_image_size)
    tasks = tabletop_tasks("heldout") * 8  # 72 layouts of tasks its pretraining never had as goals
    frames = env.reset(tasks, 7)
    truth = env.goal_relations()
    answers = where_answers(planner, frames, tasks, Config(where_hint=True))
    right = np.mean([a in r for a, r in zip(answers, truth)])
    assert right >= 0.5, right  # one of four words: about 0.3 by chance
    # The expert's next frames are likelier under the true hint than under the opposite one.
    tokens = planner.encode_images(frames)
    next_tokens = planner.encode_images(env.step(env.expert_actions(np.random.default_rng(0))).observation)
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    hints = [min(r) for r in truth]
    with torch.no_grad():
        true, flipped = (planner.image_token_logprobs([hinted(t.text, h) for t, h in zip(tasks, words)], next_tokens,
                                                      guidance=1.0, context_tokens=tokens).sum(-1)
                         for words in (hints, [opposite[h] for h in hints]))
    assert (true > flipped).float().mean() >= 0.8, (true - flipped)


# ----------------------------------------------------------------------------- the loop
TINY = ["model=janus-tiny", "demo_episodes=12", "explore_episodes=6", "planner_warmup_steps=2", "finetune_steps=2",
        "rollouts_per_task=1", "idm_warmup_steps=2", "idm_steps=2", "batch_size=4", "judge_batch_size=2"]


def test_one_tiny_sail_iteration_writes_summary_and_resumes(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "configs/sail/toy.yaml", "--out", str(run), "iterations=1", "filter=self", *TINY]) == 0
    summary = json.loads((run / "sail_summary.json").read_text())
    assert len(summary["success_by_iteration"]) == 2 and summary["filter"] == "self"
    assert set(summary["success_by_task"][0]) == {t.name for t in tabletop_tasks("halves")}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert {"success/unseen", "judge/accuracy", "kept", "rollout/success", "planner/loss", "idm/loss"} <= set(rows[1])
    assert len(summary["kept_by_iteration"]) == 1  # measured twice (same layouts), learned from once
    assert (run / "samples" / "step-1" / "samples.jsonl").is_file()
    recipe = json.loads((run / "recipe.json").read_text())  # toy.yaml's own options, beside the overrides
    assert recipe["changed_radius"] == 1 and recipe["balance_tasks"] and recipe["finetune_steps"] == 2
    load_model(str(run / "checkpoints" / "final"))  # the planner loads as a plain model

    # One more iteration from the saved state: the first two measurements are kept as they were.
    assert main(["train", "configs/sail/toy.yaml", "--out", str(run), "--resume", "iterations=2", "filter=self",
                 *TINY]) == 0
    resumed = json.loads((run / "sail_summary.json").read_text())
    assert resumed["success_by_iteration"][:2] == summary["success_by_iteration"]
    assert len(resumed["success_by_iteration"]) == 3
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]

    # The options that make the planner read its task: the warm-up's twin demonstrations, the
    # model's own "where is the goal" answers in the planner's text and kept in the judge's rows.
    hinted = tmp_path / "hinted"
    assert main(["train", "configs/sail/toy.yaml", "--out", str(hinted), "iterations=1", *TINY,
                 "counterfactual_demos=true", "where_hint=true", "vision_context=true"]) == 0
    demos = Experience.load(hinted / "experience" / "demos.safetensors")
    plain = Experience.load(run / "experience" / "demos.safetensors")
    assert len(demos) > len(plain) and all(t.endswith(" the robot") and ", " in t for t in demos.task)
    judges = JudgeSet.load(hinted / "experience" / "judge.safetensors")
    assert any(q.startswith("Where is the") for q in judges.questions)
    # Labelled by the environment instead: every hint is a true relation; the loop still reads
    # the model's own answers, measures them, and keeps the kept episodes' answers as where rows.
    labelled = tmp_path / "labelled"
    assert main(["train", "configs/sail/toy.yaml", "--out", str(labelled), "iterations=1", *TINY,
                 "where_hint=true", "where_labels=truth", "filter=self", "hindsight_hints=true",
                 "hindsight_demos=true"]) == 0
    demos = Experience.load(labelled / "experience" / "demos.safetensors")
    assert {hint_in(x, x.split(",")[0]) for x in demos.task} <= {"left of", "right of", "above", "below"}
    # hindsight_demos: what the planner learns from a successful demonstration reads the way it moved.
    hints = [(hint_in(x, x.split(",")[0]), w) for x, w, k in zip(demos.task, moved_words(demos.actions),
                                                                   demos.kept.tolist()) if k and w is not None]
    assert hints and all(h == w for h, w in hints)
    summary = json.loads((labelled / "sail_summary.json").read_text())
    assert len(summary["where_accuracy_by_iteration"]) == 2
    kept = Experience.load(labelled / "experience" / "iteration-1.safetensors")
    where = JudgeSet.load(labelled / "experience" / "where-1.safetensors")
    assert len(where) == int(kept.kept.sum())
    # In hindsight, a kept transition's hint is the way it moved, in its text and its where row.
    moved = [w for w, k in zip(moved_words(kept.actions), kept.kept.tolist()) if k]
    assert [a for a, w in zip(where.answers, moved) if w is not None] == [w for w in moved if w is not None]

    # The loop's ceiling on the same warm-up (step 0 is reused, not rerun): the scripted expert
    # plays the learning episodes and its successes are kept (drawn evenly over tasks, the cells
    # around each move weighted).
    other = tmp_path / "other"
    assert main(["train", "configs/sail/toy.yaml", "--out", str(other), "iterations=1", *TINY,
                 f"warmup_from={run}", "filter=expert", "balance_tasks=true", "changed_radius=1"]) == 0
    first, learned = [json.loads(line) for line in (other / "metrics.jsonl").read_text().splitlines()[:2]]
    assert first["warmup_from"] == str(run) and first["demo/success"] == rows[0]["demo/success"]
    assert json.loads((other / "sail_summary.json").read_text())["filter"] == "expert"
    assert learned["rollout/success"] >= 0.6 > rows[1]["rollout/success"]  # the expert's, not the tiny planner's
    assert learned["kept"] == round(learned["rollout/success"] * len(tabletop_tasks("halves")))
    for name in ("demos", "explore", "judge"):
        assert (other / "experience" / f"{name}.safetensors").read_bytes() == \
            (run / "experience" / f"{name}.safetensors").read_bytes()


def test_a_warm_up_alone_pretrains_a_planner_that_another_run_starts_from(tmp_path):
    # iterations=0: the warm-up, one measurement, a checkpoint; its LR decays to warmup_lr_end.
    planner = tmp_path / "planner"
    assert main(["train", "configs/sail/planner.yaml", "--out", str(planner), *TINY, "planner_warmup_steps=3"]) == 0
    assert len(json.loads((planner / "sail_summary.json").read_text())["success_by_iteration"]) == 1
    state = torch.load(planner / "checkpoints" / "final" / "optimizer.pt", weights_only=True)
    assert [g["lr"] for g in state["param_groups"]] == [pytest.approx(1e-4)]
    # Exported as a plain float16 model folder (how assets/toy-sail-planner is made)...
    shipped = tmp_path / "shipped"
    assert main(["export", str(planner / "checkpoints" / "final"), "--out", str(shipped)]) == 0
    assert not (shipped / "optimizer.pt").exists() and (shipped / "train_config.yaml").is_file()
    with safe_open(str(shipped / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    # ...a run from it with planner_warmup_steps=0 collects demonstrations and trains its inverse
    # dynamics model, and leaves the planner as loaded.
    run = tmp_path / "run"
    start = str(shipped)
    assert main(["train", "configs/sail/toy.yaml", "--out", str(run), "iterations=1", *TINY, f"model={start}",
                 "planner_warmup_steps=0"]) == 0
    before, after = load_model(start), load_model(str(run / "checkpoints" / "step-0"))
    assert all(torch.equal(a, b) for a, b in zip(before.module.state_dict().values(),
                                                   after.module.state_dict().values()))
    assert (run / "inverse_dynamics" / "step-0").is_dir() and (run / "experience" / "demos.safetensors").is_file()


def test_sail_bad_input_is_one_clear_error(tmp_path, capsys):
    assert main(["train", "configs/sail/toy.yaml", "--out", str(tmp_path / "a"), "filter=vlm", *TINY]) == 2
    assert "filter: expected one of ['ground_truth', 'self', 'expert'], got 'vlm'" in capsys.readouterr().err
    assert main(["train", "configs/sail/toy.yaml", "--out", str(tmp_path / "r"), "changed_radius=-1", *TINY]) == 2
    assert "changed_radius: expected 0 or more grid cells, got -1" in capsys.readouterr().err
    assert main(["train", "configs/sail/toy.yaml", "--out", str(tmp_path / "b"), *TINY, "model=showo-tiny"]) == 2
    assert "cannot generate an image from an image" in capsys.readouterr().err
    assert main(["train", "configs/sail/toy.yaml", "--out", str(tmp_path / "c"), *TINY, "where_hint=true",
                 "where_labels=oracle"]) == 2
    assert "where_labels: expected one of ['self', 'truth'], got 'oracle'" in capsys.readouterr().err
    assert not (tmp_path / "c" / "checkpoints").exists()
