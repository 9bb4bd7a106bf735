"""Hand-pose estimation on depth, the paper's hand workload: the stacked hourglass, its
augmentation, metrics, the `evaluate hands` task and the Table 4 report.
"""
