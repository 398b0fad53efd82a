import numpy as np
import pytest

from unirl.errors import UnirlError
from unirl.specs import draw_tag_balanced, read_prompt_file, validate_spec


def test_reads_jsonl_and_text(tmp_path):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"tag": "single_object", "include": [{"class": "cat", "count": 1}], '
                     '"prompt": "a photo of a cat"}\n'
                     '\n{"tag": "position", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, '
                     '"position": ["left of", 0]}], "prompt": "a photo of a cat left of a dog"}\n')
    specs = read_prompt_file(jsonl)
    assert [s["tag"] for s in specs] == ["single_object", "position"]
    text = tmp_path / "p.txt"
    text.write_text("a red circle\n\n  two stars  \n")
    assert [s["prompt"] for s in read_prompt_file(text)] == ["a red circle", "two stars"]


@pytest.mark.parametrize("content,message", [
    ("", "prompt file is empty"),
    ("\n  \n", "prompt file is empty"),
    ('{"prompt": "x", "include": [{"class": "cat"}]}\n', r"m.jsonl:1.include\[0\].count: expected a positive integer"),
    ('{"prompt": "x"}\n{"prompt": 3}\n', r"m.jsonl:2.prompt: expected a non-empty string"),
    ('{"prompt": "x"}\n{bad json\n', r"m.jsonl:2: expected a JSON object"),
    ('{"prompt": "x", "include": [{"class": "a", "count": 1, "position": ["near", 0]}]}\n', "position: expected"),
])
def test_bad_prompt_files(tmp_path, content, message):
    path = tmp_path / "m.jsonl"
    path.write_text(content)
    with pytest.raises(UnirlError, match=message) as e:
        read_prompt_file(path)
    assert "\n" not in str(e.value)


def test_missing_and_binary_prompt_file(tmp_path):
    with pytest.raises(UnirlError, match="prompt file not found"):
        read_prompt_file(tmp_path / "none.txt")
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(UnirlError, match="UTF-8"):
        read_prompt_file(binary)


def test_validate_spec_ok():
    spec = {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}],
            "prompt": "a photo of two cats"}
    assert validate_spec(spec) is spec


def test_draw_tag_balanced_evens_out_an_unbalanced_suite():
    specs = [{"tag": "common", "include": [], "prompt": f"p{i}"} for i in range(95)]
    specs += [{"tag": "rare", "include": [], "prompt": f"r{i}"} for i in range(5)]
    drawn = draw_tag_balanced(specs, 2000, np.random.default_rng(0))
    rare = sum(s["tag"] == "rare" for s in drawn) / len(drawn)
    assert 0.45 < rare < 0.55  # drawn by spec it would be 0.05
    assert {s["prompt"] for s in drawn if s["tag"] == "rare"} == {f"r{i}" for i in range(5)}
    # Weighted by tag: "rare" three times as often as "common", whatever the tags' sizes.
    weighted = draw_tag_balanced(specs, 2000, np.random.default_rng(0), tag_weights={"rare": 3})
    assert 0.70 < sum(s["tag"] == "rare" for s in weighted) / len(weighted) < 0.80
    assert {s["tag"] for s in draw_tag_balanced(specs, 50, np.random.default_rng(0), {"common": 0})} == {"rare"}
    with pytest.raises(ValueError, match="tag_weights"):
        draw_tag_balanced(specs, 5, np.random.default_rng(0), tag_weights={"rare": -1})


def test_distinct_tag_balanced_takes_one_of_each_tag_before_repeating_and_never_a_spec_twice():
    import numpy as np

    from unirl.specs import distinct_tag_balanced

    specs = [{"tag": tag, "prompt": f"{tag} {i}"} for tag, n in (("a", 1), ("b", 2), ("c", 5)) for i in range(n)]
    drawn = distinct_tag_balanced(specs, 6, np.random.default_rng(0))
    assert len({s["prompt"] for s in drawn}) == 6
    assert {s["tag"] for s in drawn[:3]} == {"a", "b", "c"} and {s["tag"] for s in drawn[3:5]} == {"b", "c"}
    assert len(distinct_tag_balanced(specs, 20, np.random.default_rng(0))) == 8
