import json
import math

import pytest
import torch
from safetensors.torch import load_file

from unirl.algorithms.grpo import group_advantages, grpo_loss, k3_kl
from unirl.config import from_dict
from unirl.engine.run import prepare_run_dir
from unirl.models import load_model
from unirl.recipes import get_recipe
from unirl.recipes.unirl import Config, distinct_fraction, train
from unirl.rewards.self_judges import SelfQAReward, SelfVQAReward, WeightedSum
from unirl.specs import normalize_answer, open_questions


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 4.0])
    adv = group_advantages(rewards, 2, scale_std=False)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, 0.0, 0.0, -1.0, 1.0]))
    scaled = group_advantages(rewards, 2, eps=0.0 + 1e-12)
    assert torch.allclose(scaled, torch.tensor([1.0, -1.0, 0.0, 0.0, -1.0, 1.0]))  # std of (a, b) = |a-b|/2
    with pytest.raises(ValueError, match="groups"):
        group_advantages(rewards, 4)


def test_grpo_loss_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]], requires_grad=True)
    old = torch.tensor([[-1.2, -1.0], [-0.5, -1.0]])
    ref = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    adv = torch.tensor([1.0, -2.0])
    loss, stats = grpo_loss(logprobs, old, adv, ref_logprobs=ref, beta=0.1, eps_low=0.2, eps_high=0.28)
    expected = 0.0
    clipped_tokens = 0
    for i in range(2):
        for t in range(2):
            ratio = math.exp(logprobs[i, t].item() - old[i, t].item())
            a = adv[i].item()
            surrogate = min(ratio * a, min(max(ratio, 0.8), 1.28) * a)
            r = ref[i, t].item() - logprobs[i, t].item()
            expected += -surrogate + 0.1 * (math.exp(r) - r - 1)
            clipped_tokens += (ratio < 0.8 and a < 0) or (ratio > 1.28 and a > 0)
    assert loss.item() == pytest.approx(expected / 4, rel=1e-6)
    assert stats["clip_ratio/region_mean"] == pytest.approx(clipped_tokens / 4)
    loss.backward()
    assert torch.isfinite(logprobs.grad).all()


def test_equal_rewards_teach_nothing():
    rewards = torch.full((8,), 0.7)
    adv = group_advantages(rewards, 4)
    assert torch.equal(adv, torch.zeros(8))
    logprobs = torch.randn(8, 5, requires_grad=True)
    loss, _ = grpo_loss(logprobs, logprobs.detach(), adv)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logprobs.grad, torch.zeros(8, 5))


def test_k3_is_zero_at_the_reference_and_positive_elsewhere():
    lp = torch.tensor([-1.0, -2.0])
    assert torch.equal(k3_kl(lp, lp), torch.zeros(2))
    assert (k3_kl(lp, lp + torch.tensor([0.3, -0.3])) > 0).all()


def test_distinct_fraction():
    tokens = torch.tensor([[1, 2], [1, 2], [3, 4], [5, 6]])
    assert distinct_fraction(tokens, 2) == pytest.approx((0.5 + 1.0) / 2)


SPECS = [
    {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
     "prompt": "a photo of a red circle"},
    {"tag": "counting", "include": [{"class": "star", "count": 2}], "exclude": [{"class": "star", "count": 3}],
     "prompt": "a photo of two stars"},
]


def test_open_question_per_tag():
    assert open_questions(SPECS[0], "shape") == [("What color is the circle?", "red")]
    assert open_questions(SPECS[1]) == [("How many stars are there?", "two")]
    both = {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"},
                                             {"class": "star", "count": 1, "color": "blue"}]}
    assert open_questions(both) == [("What color is the circle?", "red"), ("What color is the star?", "blue")]
    assert open_questions(both, counts=True)[2:] == [("How many circles are there?", "one"),
                                                     ("How many stars are there?", "one")]
    assert open_questions(SPECS[1], counts=True) == [("How many stars are there?", "two")]  # not asked twice


def test_self_judges_batched(tiny_janus):
    images = torch.rand(2, 3, 32, 32)
    vqa, info = SelfVQAReward(tiny_janus)(images, SPECS)
    # By hand: the mean margin of each image's own questions, asked one at a time.
    for i, spec_questions in enumerate(info["questions"]):
        p_yes, p_no = tiny_janus.yes_no(images[[i] * len(spec_questions)], [q["question"] for q in spec_questions])
        assert vqa[i].item() == pytest.approx((p_yes - p_no).mean().item(), abs=1e-5)
    verdict, _ = SelfVQAReward(tiny_janus, mode="verdict")(images, SPECS)
    assert set(verdict.tolist()) <= {0.0, 0.5, 1.0}
    qa, qa_info = SelfQAReward(tiny_janus)(images, SPECS)
    assert [[q["question"] for q in qs] for qs in qa_info["questions"]] == [["What color is the circle?"],
                                                                          ["How many stars are there?"]]
    for i, (item,) in enumerate(qa_info["questions"]):  # one question each: 0/1 by normalised match
        assert qa[i].item() == float(normalize_answer(item["answer"]) == normalize_answer(item["expected"]))
    judge = WeightedSum({"self_vqa": (SelfVQAReward(tiny_janus), 2.0), "self_qa": (SelfQAReward(tiny_janus), 1.0)})
    total, combined = judge(images, SPECS)
    assert torch.allclose(total, 2 * vqa + qa, atol=1e-5) and set(combined["per_judge"]) == {"self_vqa", "self_qa"}
    # Counting prompts judged by self-VQA alone (weight 3); colour prompts keep the global weights.
    by_tag = WeightedSum({"self_vqa": (SelfVQAReward(tiny_janus), 2.0), "self_qa": (SelfQAReward(tiny_janus), 1.0)},
                         tag_weights={"counting": {"self_vqa": 3.0}})
    total, routed = by_tag(images, SPECS)
    assert total[0].item() == pytest.approx(2 * vqa[0].item() + qa[0].item(), abs=1e-5)
    assert total[1].item() == pytest.approx(3 * vqa[1].item(), abs=1e-5)
    assert routed["per_judge"]["self_qa"][1].isnan() and routed["self_qa"]["questions"][1] is None
    assert routed["self_qa"]["questions"][0] == qa_info["questions"][0]
    with pytest.raises(ValueError, match="geneval"):
        WeightedSum({"self_qa": (SelfQAReward(tiny_janus), 1.0)}, tag_weights={"colors": {"geneval": 1.0}})


def write_prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in SPECS))
    return str(path)


def tiny_config(tmp_path, model: str, **overrides) -> Config:
    data = dict(recipe="unirl", model=model, prompts=write_prompts(tmp_path), prompts_per_step=2, group_size=2,
                max_steps=3, save_every=2, sample_every=2, learning_rate=1e-3, beta=0.05, num_iterations=2,
                und_sft_weight=0.5, gen_sft_weight=0.5, accept_threshold=-1.0, device="cpu", dtype="float32")
    return from_dict(Config, data | overrides)


@pytest.mark.parametrize("backend", ["janus-tiny", "showo-tiny"])
def test_three_steps_on_each_backend(tmp_path, backend):
    config = tiny_config(tmp_path, backend)
    run = tmp_path / "run"
    prepare_run_dir(run, config, resume=False)
    final = train(config, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("reward", "reward_std", "frac_reward_zero_std", "kl", "clip_ratio/region_mean", "entropy",
                "distinct_fraction", "loss/grpo", "loss/und_sft", "loss/gen_sft", "learning_rate",
                "rewards/self_vqa/mean", "time/rollout", "time/judge", "time/learn", "images_per_second"):
        assert key in rows[-1], key
    assert all(math.isfinite(r["loss"]) for r in rows)
    samples = [json.loads(line) for line in (run / "samples" / "step-2" / "samples.jsonl").read_text().splitlines()]
    tracked = [r for r in samples if r.get("tracked")]
    assert len(samples) - len(tracked) == 4 and (run / "samples" / "step-2" / "000.png").is_file()
    # the test suite's two tags, one prompt of each
    assert len({r["prompt"] for r in tracked}) == len(tracked) == 2
    reloaded = load_model(str(final), device="cpu", dtype="float32")
    assert reloaded.generate_images(["a photo of a red circle"], 1, seed=0).images.shape[0] == 1
    # Training changed the weights.
    start = load_model(backend, device="cpu", dtype="float32", seed=0)
    before = dict(start.trainable_parameters())
    assert any(not torch.equal(before[n], p) for n, p in reloaded.trainable_parameters())


def test_bf16_autocast_steps_are_finite(tmp_path):
    config = tiny_config(tmp_path, "janus-tiny", max_steps=2, sample_every=0, bf16=True)
    run = tmp_path / "run"
    prepare_run_dir(run, config, resume=False)
    train(config, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and r["skipped"] == 0 for r in rows)


def test_resume_ends_with_the_same_weights(tmp_path):
    whole = tmp_path / "whole"
    config = tiny_config(tmp_path, "janus-tiny", max_steps=4, save_every=2, sample_every=0)
    prepare_run_dir(whole, config, resume=False)
    train(config, whole)

    parted = tmp_path / "parted"
    first = tiny_config(tmp_path, "janus-tiny", max_steps=2, save_every=2, sample_every=0)
    prepare_run_dir(parted, first, resume=False)
    train(first, parted)  # "interrupted" after step 2
    resume_from = prepare_run_dir(parted, config, resume=True)
    assert resume_from.name == "step-2"
    train(config, parted, resume_from)

    a = load_file(whole / "checkpoints" / "final" / "model.safetensors")
    b = load_file(parted / "checkpoints" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (parted / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_recipe_is_found_and_bad_config_is_named(tmp_path):
    assert get_recipe("unirl").Config is Config
    config = tiny_config(tmp_path, "janus-tiny", reward_self_vqa=0.0)
    with pytest.raises(Exception, match="reward_"):
        train(config, tmp_path / "run")


def test_rerunning_the_same_config_continues_and_another_config_is_refused(tmp_path):
    run = tmp_path / "run"
    config = tiny_config(tmp_path, "janus-tiny", max_steps=2, sample_every=0)
    assert prepare_run_dir(run, config, resume=False) is None
    train(config, run)
    assert prepare_run_dir(run, config, resume=False).name == "step-2"
    with pytest.raises(Exception, match="another config"):
        prepare_run_dir(run, tiny_config(tmp_path, "janus-tiny", max_steps=5), resume=False)


def test_evaluator_as_reward_and_self_qa_are_logged(tmp_path):
    config = tiny_config(tmp_path, "janus-tiny", max_steps=1, sample_every=1, beta=0.0, reward_geneval=1.0,
                         reward_self_qa=0.5)
    run = tmp_path / "run"
    prepare_run_dir(run, config, resume=False)
    train(config, run)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"rewards/geneval/mean", "rewards/self_qa/mean", "rewards/self_vqa/mean"} <= set(row)
    sample = json.loads((run / "samples" / "step-1" / "samples.jsonl").read_text().splitlines()[0])
    assert set(sample["rewards"]) == {"self_vqa", "self_qa", "geneval"} and "answer" in sample["self_qa"][0]


def test_per_tag_judges_and_prompt_weights(tmp_path):
    # Colour prompts only (weight 0 for counting), and those judged by self-QA alone: self-VQA never runs.
    config = tiny_config(tmp_path, "janus-tiny", max_steps=2, sample_every=1, beta=0.0, reward_self_vqa=0.0,
                         reward_tag_weights={"colors": {"self_qa": 1.0}}, prompt_tag_weights={"counting": 0.0})
    run = tmp_path / "run"
    prepare_run_dir(run, config, resume=False)
    train(config, run)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert "rewards/self_qa/mean" in row and "rewards/self_vqa/mean" not in row
    assert row["rewards/tag/colors"] == row["reward"] and "rewards/tag/counting" not in row
    samples = [json.loads(line) for line in (run / "samples" / "step-2" / "samples.jsonl").read_text().splitlines()]
    assert {s["prompt"] for s in samples if "tracked" not in s} == {"a photo of a red circle"}
    with pytest.raises(Exception, match="reward_tag_weights: tags countin"):
        train(tiny_config(tmp_path, "janus-tiny", reward_tag_weights={"countin": {"self_qa": 1.0}}), tmp_path / "r2")
    with pytest.raises(Exception, match="reward_tag_weights.colors: expected judges"):
        train(tiny_config(tmp_path, "janus-tiny", reward_tag_weights={"colors": {"vqa": 1.0}}), tmp_path / "r3")


def test_lora_merge_for_saving_and_disabled_reference(tmp_path):
    from unirl.engine.lora import adapters_disabled, add_lora, merged_weights

    model = load_model("janus-tiny", device="cpu", dtype="float32", seed=0)
    tokens = model.generate_images(["a photo of a red circle"], 2, seed=0).tokens
    base_lp = model.image_token_logprobs(["a photo of a red circle"] * 2, tokens).detach()
    plain_keys = set(model.module.state_dict())
    params = add_lora(model.module, 4, 8.0, ["q_proj", "v_proj"], skip_prefixes=model.frozen_prefixes)
    assert params and all("language_model" in n for n, _ in params)
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.module.named_parameters())
    with torch.no_grad():
        for _, p in params:
            p.normal_(0, 0.05)  # B starts at 0; make the adapters matter
    lora_lp = model.image_token_logprobs(["a photo of a red circle"] * 2, tokens).detach()
    assert not torch.allclose(lora_lp, base_lp)
    with adapters_disabled(model.module):
        assert torch.allclose(model.image_token_logprobs(["a photo of a red circle"] * 2, tokens), base_lp, atol=1e-6)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with merged_weights(model.module):
        assert set(model.module.state_dict()) == plain_keys
        model.save_pretrained(tmp_path / "merged")
    after = model.module.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    merged = load_model(str(tmp_path / "merged"), device="cpu", dtype="float32")
    assert torch.allclose(merged.image_token_logprobs(["a photo of a red circle"] * 2, tokens), lora_lp, atol=1e-4)


@pytest.mark.parametrize("backend", ["janus-tiny", "showo-tiny"])
def test_lora_run_resumes_with_the_same_weights(tmp_path, backend):
    lora = dict(lora_rank=4, lora_alpha=8.0, sample_every=0, save_every=2)
    whole = tmp_path / "whole"
    config = tiny_config(tmp_path, backend, max_steps=4, **lora)
    prepare_run_dir(whole, config, resume=False)
    train(config, whole)
    parted = tmp_path / "parted"
    first = tiny_config(tmp_path, backend, max_steps=2, **lora)
    prepare_run_dir(parted, first, resume=False)
    train(first, parted)
    train(config, parted, prepare_run_dir(parted, config, resume=True))
    a = load_file(whole / "checkpoints" / "final" / "adapter.safetensors")
    b = load_file(parted / "checkpoints" / "final" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = dict(load_model(backend, device="cpu", dtype="float32", seed=0).trainable_parameters())
    final = load_model(str(whole / "checkpoints" / "final"), device="cpu", dtype="float32")
    changed = [n for n, p in final.trainable_parameters() if not torch.equal(start[n], p)]
    assert changed and all(n.endswith("weight") for n in changed)  # only adapted layers, merged in
