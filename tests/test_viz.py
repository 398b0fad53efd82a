import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_unirl import tiny_config
from unirl.cli import main
from unirl.engine.run import prepare_run_dir
from unirl.viz import geneval_view, jigsaw_view, metric_plots, rollout_grid, samples_grid, write_report

ROOT = Path(__file__).resolve().parents[1]
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def decoded_images(html: str) -> list[Image.Image]:
    images = []
    for payload in DATA_URI.findall(html):
        image = Image.open(io.BytesIO(base64.b64decode(payload)))
        image.load()  # raises on a truncated or corrupt PNG
        images.append(image)
    return images


def test_rollout_grid_inlines_every_image_and_colours_pass_and_fail(tmp_path):
    images = torch.rand(3, 3, 24, 32)
    view = rollout_grid(images, ["a photo of a star"] * 3, torch.tensor([0.9, 0.1, 0.6]),
                        answers=[[{"question": "Is there a star?", "margin": 0.8}], [], ["free text"]])
    html = view._repr_html_()
    assert [im.size for im in decoded_images(html)] == [(32, 24)] * 3
    assert html.count("ur-cell ur-pass") == 2 and html.count("ur-cell ur-fail") == 1
    assert "Is there a star? yes (+0.80)" in html and "free text" in html
    page = view.save(tmp_path / "grid.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page and len(decoded_images(page)) == 3
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        rollout_grid(images, ["a", "b"])


def test_jigsaw_view_lays_out_the_truth_and_outlines_misplaced_tiles():
    from modalities.image.jigsaw import image_jigsaw

    image = torch.rand(1, 3, 32, 32)
    puzzle = image_jigsaw(image, 2, 2, torch.Generator().manual_seed(0))
    truth = puzzle.answer[0].tolist()
    wrong = truth[1:2] + truth[:1] + truth[2:]  # two tiles swapped
    html = jigsaw_view(puzzle.tiles[0], truth, wrong, ", ".join(map(str, wrong)), grid=(2, 2)).body
    assert "Tile 4" in html
    # Pieces shown, then the model's grid, then the truth's: the truth's cells are the pieces
    # in the truth's order, and each piece's pixels are the tile at that original position.
    uris = re.findall(r'src="(data:[^"]+)"', html)
    pieces, model_grid, truth_grid = uris[:4], uris[4:8], uris[8:]
    assert truth_grid == [pieces[t - 1] for t in truth] and model_grid == [pieces[t - 1] for t in wrong]
    tiles = [np.asarray(im) for im in decoded_images(html)[8:]]
    original = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    expected = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(original, expected)
    assert html.count("2px solid #d03a2f") == 2  # the swapped pair, in the model's grid only
    assert html.count("&#10007;") == 2 and html.count("&#10003;") == 2
    assert "not a valid arrangement" in jigsaw_view(puzzle.tiles[0], truth, [1, 1, 2, 3], "1, 1, 2, 3",
                                                    grid=(2, 2)).body


def test_geneval_view_draws_the_detected_boxes_on_failures(tmp_path):
    image = np.full((96, 96, 3), 128, np.uint8)
    (tmp_path / "images" / "00000" / "samples").mkdir(parents=True)
    path = tmp_path / "images" / "00000" / "samples" / "0000.png"
    Image.fromarray(image).save(path)
    details = {"star": [[10.0, 20.0, 40.0, 50.0, 0.9]]}
    row = {"filename": "elsewhere/images/00000/samples/0000.png", "tag": "counting", "prompt": "a photo of two stars",
           "correct": False, "reason": "expected star==2, found 1", "metadata": "{}", "details": json.dumps(details)}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "summary.json").write_text(json.dumps({"per_tag": {"counting": 0.0}, "overall": 0.0}))
    html = geneval_view(tmp_path).body
    assert "expected star==2, found 1" in html and "failures (1 of 1)" in html
    [boxed] = decoded_images(html)
    boxed = np.asarray(boxed.convert("RGB"))
    assert boxed.shape == (288, 288, 3)  # enlarged 3x
    assert not np.array_equal(boxed[60, 60:120], np.full((60, 3), 128))  # the box's top edge (y = 20 x 3)
    assert np.array_equal(boxed[200, 200], [128, 128, 128])  # outside the box: untouched


def test_metric_plots_skip_a_line_still_being_written_and_gaps_at_nan(tmp_path):
    lines = [json.dumps({"step": 1, "time": 0, "reward": 0.1, "kl": 0.0}),
             json.dumps({"step": 2, "time": 0, "reward": float("nan"), "kl": 0.1}),
             json.dumps({"step": 3, "time": 0, "reward": 0.5, "kl": 0.2}), '{"step": 4, "rew']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    html = metric_plots(tmp_path).body
    assert html.count("<svg") == 2 and ">reward<" in html and ">kl<" in html and ">time<" not in html
    reward_points = re.search(r'reward<.*?points="([^"]+)"', html).group(1).split()
    assert len(reward_points) == 2  # the NaN step is a gap
    assert "no metrics logged yet" in metric_plots(tmp_path / "nothing").body


@pytest.fixture(scope="module")
def unirl_run(tmp_path_factory):
    """A two-step UniRL run on janus-tiny with samples at both steps, and make demo's layout
    around it (before/ and after/ evaluation summaries)."""
    from unirl.recipes.unirl import train

    root = tmp_path_factory.mktemp("demo")
    config = tiny_config(root, "janus-tiny", max_steps=2, save_every=2, sample_every=1, track_prompts=2)
    train(config, root / "run", prepare_run_dir(root / "run", config, resume=False))
    for column, overall in (("before", 0.25), ("after", 0.40)):
        (root / column / "geneval").mkdir(parents=True)
        (root / column / "geneval" / "summary.json").write_text(json.dumps(
            {"overall": overall, "per_tag": {"counting": overall}, "recipe": {"model": column}}))
    return root


def test_report_shows_recipe_metrics_tracked_prompts_samples_and_before_after(unirl_run):
    path = write_report(unirl_run)
    html = path.read_text()
    assert path == unirl_run / "report.html" and "finished: step 2 of 2" in html
    assert "prompts_sha256" in html and "group_size" in html and "<svg" in html
    tracked = html[html.index("Same prompts across steps"):html.index("Newest samples")]
    assert tracked.count("<th>step-") == 2 and tracked.count("<tr><th style=\"min-width:140px\">a photo") == 2
    assert "+0.150" in html  # after − before, in the evaluation table
    images = decoded_images(html)
    samples = len([r for r in (unirl_run / "run" / "samples" / "step-2" / "samples.jsonl").read_text().splitlines()])
    assert len(images) == 2 * 2 + (samples - 2)  # tracked at two steps, and the newest rollout
    assert samples_grid(unirl_run / "run" / "samples" / "step-2", tracked=True).body.count("<img") == 2


def test_report_on_a_run_still_going(unirl_run, tmp_path):
    run = tmp_path / "going"
    shutil.copytree(unirl_run / "run", run, symlinks=True)
    shutil.rmtree(run / "checkpoints" / "final", ignore_errors=True)
    (run / "checkpoints" / "final").unlink(missing_ok=True)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')  # a line being written
    html = write_report(run).read_text()
    assert "in progress (or stopped): step 2 of 2" in html and "Evaluations" not in html


def test_report_of_a_jigsaw_run_shows_the_puzzles(tmp_path):
    run = tmp_path / "jigsaw"
    main(["train", "configs/jigsaw/toy_image.yaml", "--out", str(run), "model=janus-tiny", "max_steps=1",
          "cold_start_steps=0", "puzzles_per_step=2", "group_size=2", "sample_every=1"])
    rows = [json.loads(line) for line in (run / "samples" / "step-1" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["pieces"]) == 4 and sorted(r["truth"]) == [1, 2, 3, 4] for r in rows)
    html = write_report(run).read_text()
    assert html.count("<h3>truth</h3>") == 2 and "Tile 4" in html
    valid = [r["order"] is not None and sorted(r["order"]) == [1, 2, 3, 4] for r in rows]
    assert len(decoded_images(html)) == sum(4 + 4 + 4 * v for v in valid)  # pieces, truth, model's grid


def test_report_command_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a run directory" in err and str(tmp_path) in err
    assert not (tmp_path / "report.html").exists()


def chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("UNIRL_REQUIRE_BROWSER"):
        pytest.fail("chromium not found, and UNIRL_REQUIRE_BROWSER is set (.ci/run installs Debian's chromium)")
    return found


def test_report_renders_in_headless_chromium(unirl_run, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (.ci/run installs it: apt-get install chromium)")
    report = write_report(unirl_run)
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1600"]
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", report.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert pixels.shape[:2] == (1600, 1200)
    assert (np.abs(pixels - 255).sum(-1) > 30).mean() > 0.02 and pixels.std() > 10  # not a blank page
    # Every <img> decoded: a copy of the page with a check that runs after load, read back from the DOM.
    checked = tmp_path / "checked.html"
    count = ("<script>addEventListener('load', () => { const all = [...document.images];"
             "document.title = 'decoded ' + all.filter(i => i.complete && i.naturalWidth > 0).length"
             " + ' of ' + all.length; });</script>")
    checked.write_text(report.read_text().replace("</body>", count + "</body>"))
    dom = subprocess.run([*flags, "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    decoded, total = map(int, re.search(r"<title>decoded (\d+) of (\d+)</title>", dom).groups())
    assert total == report.read_text().count("<img") and total > 0 and decoded == total


def test_quickstart_notebook_runs_top_to_bottom(tmp_path):
    import nbclient
    import nbformat

    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(html) >= 6 and all(decoded_images(h) or "<svg" in h for h in html)
    assert (tmp_path / "runs" / "quickstart" / "report.html").is_file()
