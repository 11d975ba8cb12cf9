"""diffsat: SR3-type denoising diffusion for satellite imagery and handwritten digits."""

__version__ = "0.1.0"
