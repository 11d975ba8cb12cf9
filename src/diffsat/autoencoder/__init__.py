"""The autoencoder stage of latent diffusion: its loss (:mod:`.losses`), its trainer (:mod:`.trainer`) and
its reconstruction quality beside a bicubic baseline (:mod:`.quality`). The network is
:class:`diffsat.models.autoencoder.Autoencoder`; a latent diffusion run names a trained autoencoder run in its
``latent.autoencoder`` key (:class:`diffsat.config.LatentConfig`)."""
