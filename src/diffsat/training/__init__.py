"""Training: one :class:`~diffsat.training.trainer.Trainer` runs a declared :class:`~diffsat.training.task.Task`.

Modules, lowest first: ``ema``, ``distributed``, ``tensorboard``, ``throughput``, ``batches`` (pixel batches;
a latent run's cached latents), ``task`` (the protocol), ``trainer`` (the loop), ``diffusion``
(:class:`~diffsat.training.diffusion.DiffusionTask`), ``autoencoder``
(:class:`~diffsat.training.autoencoder.AutoencoderTask`), ``runs`` (a config's task; ``train``). The
change-detection head's task lives in :mod:`diffsat.cd.train` and uses ``task`` and ``trainer`` only.
"""
