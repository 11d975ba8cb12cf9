"""Super-resolution (SR3's own task): the degradation that makes training pairs, outputs of a run for
low-resolution tiles, upscaling inputs of any size window by window, and scoring against the truth."""
