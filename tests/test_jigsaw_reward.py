import pytest

from unirl.rewards import jigsaw_reward, parse_order

TRUTH = [5, 1, 3, 2, 4]


@pytest.mark.parametrize("text", [
    "5, 1, 3, 2, 4", "5 1 3 2 4", "[5,1,3,2,4]", "[5, 1, 3, 2, 4]", "5,1,3,2,4.",
    "The order is \\boxed{5, 1, 3, 2, 4}", "<answer>5 1 3 2 4</answer>",
    "<think>tile 5 has the top edge</think><answer>[5,1,3,2,4]</answer>",
    "first <answer>1 2 3 4 5</answer> then <answer>5, 1, 3, 2, 4</answer>",  # the last answer counts
])
def test_exact_permutation_in_every_accepted_form(text):
    assert parse_order(text) == TRUTH
    assert jigsaw_reward(text, TRUTH) == 1.0


def test_valid_wrong_permutation_gets_gamma_times_positions_right():
    assert jigsaw_reward("5, 1, 2, 3, 4", TRUTH) == pytest.approx(0.2 * 3 / 5)  # 5, 1 and 4 right
    assert jigsaw_reward("1, 2, 3, 4, 5", TRUTH) == pytest.approx(0.2 * 1 / 5)  # only the 3
    assert jigsaw_reward("4, 5, 1, 3, 2", TRUTH) == 0.0  # a valid permutation with nothing right
    assert jigsaw_reward("5, 1, 2, 3, 4", TRUTH, partial_weight=0.5) == pytest.approx(0.5 * 3 / 5)


@pytest.mark.parametrize("text", [
    "5, 1, 3, 2",            # too short
    "5, 1, 3, 2, 4, 6",      # too long
    "5, 1, 3, 3, 4",         # a repeat
    "5, 1, 3, 2, 6",         # out of range
    "0, 1, 3, 2, 4",         # labels are 1-based
    "",                      # no answer
    "I cannot tell",
    "tile five then tile one",
    "5, 1, 3, 2, 4 because tile 5 is the sky",  # labels must stand alone
    "<answer></answer>",
])
def test_anything_else_scores_zero(text):
    assert jigsaw_reward(text, TRUTH) == 0.0


def test_format_reward_and_repetition_penalty():
    assert jigsaw_reward("<answer>5, 1, 3, 2, 4</answer>", TRUTH, format_weight=0.1) == pytest.approx(1.1)
    assert jigsaw_reward("5, 1, 3, 2, 4", TRUTH, format_weight=0.1) == 1.0  # no tags, no format reward
    assert jigsaw_reward("1, 1, 1, 1, 1", TRUTH, repetition_penalty=0.5) == pytest.approx(-0.5 * 4 / 5)
    assert jigsaw_reward("5, 1, 3, 2, 4", TRUTH, repetition_penalty=0.5) == 1.0
    assert jigsaw_reward("I cannot tell", TRUTH, repetition_penalty=0.5) == -0.5  # no list: no escape
    assert jigsaw_reward("2", TRUTH, repetition_penalty=0.5) == pytest.approx(-0.5 * 4 / 5)  # nor one label
    assert jigsaw_reward("5, 1, 2, 3, 4", TRUTH, repetition_penalty=0.5) == pytest.approx(0.2 * 3 / 5)
    long = "1 2 3 4 5 1 2 3 4 5"  # every label, twice: no escape by listing everything
    assert jigsaw_reward(long, TRUTH, repetition_penalty=0.5) == pytest.approx(-0.5 * (1 - 5 / 10))
