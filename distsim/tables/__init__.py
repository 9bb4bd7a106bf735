"""What the paper's tables share (Table 2, ``distsim.gaze.report``; Table 4,
``distsim.hands.report``): a report directory that resumes, and the SimGAN runs behind its
rows.
"""
