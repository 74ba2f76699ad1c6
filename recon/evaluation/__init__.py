"""Scoring results against a truth or the data, and reporting them.

Modules
-------
metrics
    Volume metrics (NRMSE, PSNR, SSIM), totals, organ and lesion quantification.
projection_metrics
    How well a result's expected counts fit the measured counts (Poisson deviance, PSNR).
expected_counts
    The one forward model of a study's counts for scoring and ``spect project``.
evaluate_result
    One result against its study (``spect eval``).
scoring, report_figures, report_writer, report
    ``spect compare``: the comparison, its figures and its page (a jinja2 template in
    ``templates/``); `report` re-exports their public names.
figures
    PNG figures of projections and volumes (``spect show``).
"""
