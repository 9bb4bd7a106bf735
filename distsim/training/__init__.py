"""Training a refiner: Algorithm 1's loop (``loop``) and the run it drives (``run``), set up
from named parts: ``runtime``, ``streams``, ``models``, ``resume``, ``logs``,
``checkpointing`` and ``signals``. Only this package and the entry points talk to Accelerate.
"""
