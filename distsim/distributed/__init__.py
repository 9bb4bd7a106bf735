"""Running on several processes: the launch (Accelerate, DDP, the control group) and the
guards that keep ranks honest. Rank and world size reach everything else as arguments.
"""
