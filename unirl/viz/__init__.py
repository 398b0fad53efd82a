"""Looking at runs. Every view is a `View`: it renders inline in Jupyter and `.save(path)` writes
a self-contained HTML page. `write_report(run_dir)` is `unirl report`."""

from unirl.viz.html import View, image_uri
from unirl.viz.plots import metric_plots
from unirl.viz.report import write_report
from unirl.viz.views import geneval_view, jigsaw_view, rollout_grid, samples_grid

__all__ = ["View", "geneval_view", "image_uri", "jigsaw_view", "metric_plots", "rollout_grid", "samples_grid",
           "write_report"]
