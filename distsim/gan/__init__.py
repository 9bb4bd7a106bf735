"""SimGAN itself, for any images: the refiner and discriminator, their losses, Algorithm 1's
two updates, the history buffer, the refiner's weight average and its noise input.

Nothing here knows of eyes, hands, ranks or Accelerate: ranks, world size, seeds and devices
come in as arguments.
"""
