"""The autoencoder stage of latent diffusion: its loss (:mod:`.losses`) and its reconstruction quality beside
a bicubic baseline (:mod:`.quality`). The network is :class:`diffsat.models.autoencoder.Autoencoder`; it is
trained by :class:`diffsat.training.autoencoder.AutoencoderTask`, and a latent diffusion run names a trained
autoencoder run in its ``latent.autoencoder`` key (:class:`diffsat.config.LatentConfig`)."""
