"""Progress bars redirected to a log: whole lines, not carriage-return redraws, and not one per update."""

from unirl.progress import progress


def test_redirected_progress_writes_few_whole_lines(capsys):
    bar = progress(range(200), desc="lm")
    for step in bar:
        bar.set_postfix(loss=f"{step:.3f}")  # each would redraw a terminal bar
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert 1 <= len(lines) <= 3  # the start, the end: updates wait for the next timed line
    assert lines[-1].startswith("lm: 100%") and "200/200" in lines[-1] and "loss=199.000" in lines[-1]
