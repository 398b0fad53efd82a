"""The toy model: its pretraining recipe runs, its folder loads through the Janus backend, it
keeps training, and the understanding benchmark runs."""

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from evaluators.understanding import evaluate_understanding
from modalities.image.shapes import IMAGE_SIZE
from unirl.engine.checkpoint import save_checkpoint
from unirl.models import TOY_MODEL_DIR, load_model
from unirl.recipes.pretrain_toy import PretrainToyConfig, pretrain_toy
from unirl.specs import normalize_answer

SMALL = PretrainToyConfig(hidden=32, layers=2, heads=4, vision_hidden=32, vision_layers=1, vq_steps=2,
                          vq_batch=2, vision_steps=2, vision_batch=2, lm_steps=2, guidance_prompts=2,
                          guidance_candidates=(1.5, 5.0), gen_batch=2, und_batch=2, warmup=1)


def test_pretrain_toy_runs_and_loads(tmp_path):
    out = pretrain_toy(tmp_path / "toy", SMALL)
    assert (out / "model.safetensors").is_file() and (out / "pretrain.json").is_file()
    stages = {json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"vq", "vision", "lm", "guidance"}
    model = load_model(str(out), device="cpu")
    assert model.default_guidance in SMALL.guidance_candidates  # chosen on train prompts, stored with the model
    r = model.generate_images(["a photo of a red circle"], num_per_prompt=2, seed=0)
    assert r.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    # The VQ codes are stored unit-norm (to float16 precision), so transformers' own encode and
    # decode agree with training.
    codes = model.module.model.vqmodel.quantize.embedding.weight
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(len(codes)), atol=2e-3, rtol=0)
    # Seeded: a second run, its VQ-VAE again in a thread beside the other stages, gives the same weights.
    again = pretrain_toy(tmp_path / "again", SMALL)
    first, second = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_normalize_answer():
    assert normalize_answer(" The Red. ") == "red" and normalize_answer("left of") == "left of"


def test_understanding_benchmark_runs(tiny_janus):
    summary = evaluate_understanding(tiny_janus, split="heldout", scenes=6, seed=0)
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["questions"] >= 6
    assert set(summary["per_type"]) <= {"what", "count", "color", "where", "yes_no"}
    assert summary["recipe"]["split"] == "heldout"


@pytest.mark.skipif(not TOY_MODEL_DIR.is_dir(), reason="toy model not shipped")
def test_shipped_toy_loads_fast_generates_and_keeps_training(tmp_path):
    load_model("janus-tiny")  # imports warm
    start = time.perf_counter()
    toy = load_model("toy", device="cpu")
    assert time.perf_counter() - start < 5.0
    r = toy.generate_images(["a photo of a red circle"], num_per_prompt=2, seed=0)
    assert r.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)

    optimizer = torch.optim.AdamW([p for p in toy.module.parameters() if p.requires_grad], lr=1e-4)
    loss = -toy.image_token_logprobs(r.prompts, r.tokens, guidance=1.0).mean()
    loss.backward()
    optimizer.step()
    path = save_checkpoint(tmp_path, 1, toy, optimizer)
    again = load_model(str(path), device="cpu")
    assert torch.equal(again.generate_images(["a photo of a red circle"], seed=1).tokens,
                       toy.generate_images(["a photo of a red circle"], seed=1).tokens)


def test_word_grounding_names_the_right_objects_and_is_learnable():
    from modalities.image.shapes import Scene, SceneObject, render
    from unirl.recipes.pretrain_toy import WherePointer, WordGrounding, build_toy

    model = build_toy(PretrainToyConfig(hidden=32, layers=2, heads=4, vision_hidden=32, vision_layers=1))
    grounding, pointer = WordGrounding(model, layer=0), WherePointer(model, layer=1)
    # A red star in cell (0, 1) and a blue heart in cell (2, 3) of the 6x6 table.
    scene = Scene({}, [SceneObject("star", "red", 24.0, 8.0, 7.0), SceneObject("heart", "blue", 56.0, 40.0, 7.0)])
    conversation = [("What color is the star?", "red"), ("Is there a green heart?", "no"),
                    ("Where is the heart relative to the star?", "below")]
    inputs, _, answer_at = model.conversation_batch(render([scene]), [conversation])
    ids = inputs["input_ids"]
    image_at = (ids[0] == model.module.config.image_token_id).nonzero().squeeze(1).tolist()
    tokens = model.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    named = {}
    for _, t, objects in grounding.named_objects(ids, [scene]):
        named.setdefault(tokens[t], []).append(objects)
    # "green" names nothing here; "star" and the answer "red" name the star; "heart" the heart.
    star, heart = [image_at[1]], [image_at[2 * 6 + 3]]
    assert named == {"Ġstar": [star, star], "Ġred": [star], "Ġheart": [heart, heart]}
    # The "where" answer is decided at its turn's last prompt token, from the heart (A) and the star (B).
    to_subject, to_reference = pointer.queries(ids, [conversation], answer_at)
    (_, at, (a,)), (_, _, (b,)) = to_subject[0], to_reference[0]
    assert len(to_subject) == len(to_reference) == 1
    assert (at, tokens[a], tokens[b]) == (answer_at[0][2], "Ġheart", "Ġstar")
    assert max(image_at) < a < b < at  # the question's words, not the first turn's

    params = [*model.module.model.language_model.parameters(), *grounding.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(30):
        model.target_logprobs(inputs, torch.zeros_like(inputs["attention_mask"], dtype=torch.bool))
        terms = torch.stack([grounding.loss(ids, inputs["attention_mask"], [scene]),
                             *grounding.probe_losses(ids, [scene]), pointer.loss(inputs, [conversation], answer_at)])
        optimizer.zero_grad()
        terms.sum().backward()
        optimizer.step()
        losses.append(terms.detach())
    assert (losses[-1] < 0.2 * losses[0]).all(), (losses[0], losses[-1])
    grounding.remove()
    pointer.remove()


def test_object_code_loss_asks_colour_only_where_the_prompt_names_it():
    from unirl.recipes.pretrain_toy import TOY_CODES, code_parts, object_code_loss

    shape, color, size = code_parts()
    right = 1 + 5  # an object code; its neighbour in colour:
    wrong_color = 1 + int(((shape == shape[5]) & (size == size[5]) & (color != color[5])).nonzero()[0])
    codes = torch.zeros(1, 36, dtype=torch.long)
    codes[0, 7] = right
    logprobs = torch.full((1, 36, TOY_CODES), -30.0)
    logprobs[..., 0] = 0.0  # the empty code everywhere: the loss must not care
    logprobs[0, 7, wrong_color] = 0.0  # all object mass on the right shape and size, wrong colour
    named = object_code_loss(logprobs, codes, torch.tensor([True]))
    unnamed = object_code_loss(logprobs, codes, torch.tensor([False]))
    assert named > 10 and unnamed < 1e-3
    logprobs[0, 7, right] = 0.0
    logprobs[0, 7, wrong_color] = -30.0
    assert object_code_loss(logprobs, codes, torch.tensor([True])) < 1e-3
    assert object_code_loss(logprobs, torch.zeros_like(codes), torch.tensor([True])) == 0


def test_presence_loss_scores_only_whether_each_cell_holds_an_object():
    from unirl.recipes.pretrain_toy import TOY_CODES, presence_loss

    codes = torch.zeros(1, 36, dtype=torch.long)
    codes[0, 3] = 9
    logprobs = torch.full((1, 36, TOY_CODES), -30.0)
    logprobs[..., 0] = 0.0
    logprobs[0, 3, 0], logprobs[0, 3, 20] = -30.0, 0.0  # an object at cell 3, though not the true code
    assert presence_loss(logprobs, codes) < 1e-3
    logprobs[0, 5, 0], logprobs[0, 5, 9] = -30.0, 0.0  # an object drawn where the scene has none
    assert abs(presence_loss(logprobs, codes) - 30 / 36) < 1e-3
