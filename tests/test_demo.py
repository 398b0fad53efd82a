from unirl.demo import start_fresh_unless_same


def test_demo_reuses_finished_parts_only_for_the_same_experiment(tmp_path):
    key = {"model": "toy", "weights_sha256": "abc", "config": {"max_steps": 60}, "seed": 0, "samples": 16}
    start_fresh_unless_same(tmp_path, key)
    (tmp_path / "before").mkdir()
    (tmp_path / "demo.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    start_fresh_unless_same(tmp_path, dict(key))
    assert (tmp_path / "before").is_dir()  # same model, config and seed: resumed
    (tmp_path / "run").mkdir()
    start_fresh_unless_same(tmp_path, key | {"config": {"max_steps": 90}})  # another config: "before" stays
    assert (tmp_path / "before").is_dir() and not (tmp_path / "run").exists()
    start_fresh_unless_same(tmp_path, key | {"weights_sha256": "def"})  # new weights: stale numbers go
    assert not (tmp_path / "before").exists() and not (tmp_path / "demo.json").exists()
    (tmp_path / "before").mkdir()
    start_fresh_unless_same(tmp_path, key | {"weights_sha256": "def", "samples": 4})  # fewer samples: another "before"
    assert not (tmp_path / "before").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"  # nothing else is touched
