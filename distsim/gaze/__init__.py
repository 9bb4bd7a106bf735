"""Gaze estimation, the paper's eye workload: its estimator, metrics, the pupil-shift
measure of label preservation, the `evaluate gaze` task and the Table 2 report.
"""
