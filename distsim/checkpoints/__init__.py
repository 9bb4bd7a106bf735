"""A run's checkpoints on disk, the label-free realism score that picks among them, and
refining a shard set with one.
"""
