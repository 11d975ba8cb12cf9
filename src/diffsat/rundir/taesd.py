"""Reading a TAESD-family autoencoder's published weights: ``<name>_encoder.pth`` and ``<name>_decoder.pth``
(or ``.safetensors``), read weights-only; the variant recognised from their keys and shapes, or named."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.taesd import PUBLISHED_AT, VARIANTS, TaesdAutoencoder, variant_of
from .reading import read_checkpoint

SUFFIXES = (".pth", ".safetensors")


def taesd_files(path: str | Path) -> tuple[Path, Path, str]:
    """``(encoder file, decoder file, name)`` of ``path``: a folder holding one ``<name>_encoder`` /
    ``<name>_decoder`` pair, or the common prefix ``folder/<name>``."""
    path = Path(path).expanduser()
    folder, name = (path, None) if path.is_dir() else (path.parent, path.name)
    found = sorted(p for p in folder.glob("*_encoder.*") if p.suffix in SUFFIXES) if folder.is_dir() else []
    if name is not None:
        found = [p for p in found if p.name.startswith(f"{name}_encoder.")]
    names = sorted({p.name[: -len("_encoder" + p.suffix)] for p in found})
    if len(names) != 1:
        what = f"several ({', '.join(names)}): name one as {folder}/<name>" if names else "none"
        raise CheckpointError(f"{path}: TAESD-family weights <name>_encoder.pth and <name>_decoder.pth: {what}; "
                              f"the family's weights are published at {PUBLISHED_AT}")
    encoder = found[0]
    decoder = encoder.with_name(f"{names[0]}_decoder{encoder.suffix}")
    if not decoder.is_file():
        raise CheckpointError(f"{decoder}: missing beside {encoder.name}; download both halves from {PUBLISHED_AT}")
    return encoder, decoder, names[0]


def load_taesd(path: str | Path, variant: str | None = None) -> TaesdAutoencoder:
    """The frozen (eval, no gradients) float32 autoencoder of ``path`` (see :func:`taesd_files`); ``variant``
    (a key of :data:`~diffsat.models.taesd.VARIANTS`) is checked against the files when given."""
    enc_path, dec_path, name = taesd_files(path)
    encoder, decoder = read_checkpoint(enc_path), read_checkpoint(dec_path)
    channels, mixer = variant_of(encoder, decoder)
    if channels < 0:
        raise CheckpointError(f"{enc_path} and {dec_path}: not the two halves of one TAESD-family autoencoder "
                              f"(their latent channels differ or a key is missing); download both from {PUBLISHED_AT}")
    if variant is not None:
        if variant not in VARIANTS:
            raise CheckpointError(f"TAESD variant '{variant}': unknown (one of {', '.join(VARIANTS)})")
        if VARIANTS[variant] != (channels, mixer):
            raise CheckpointError(f"{enc_path}: {channels} latent channels{' with' if mixer else ', no'} mixer, "
                                  f"which is not {variant}; name the right variant or give its files")
    model = TaesdAutoencoder(channels, mixer, variant or name)
    for part, state, source in ((model.encoder, encoder, enc_path), (model.decoder, decoder, dec_path)):
        try:
            part.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as err:
            detail = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
            raise CheckpointError(f"{source}: does not fit the TAESD shape ({detail}); download it again from "
                                  f"{PUBLISHED_AT}") from None
    return model.eval().requires_grad_(False)


def random_taesd(variant: str, seed: int = 0) -> TaesdAutoencoder:
    """A TAESD-family autoencoder of ``variant``'s shapes with random weights (tests, timings)."""
    torch.manual_seed(seed)
    return TaesdAutoencoder.of_variant(variant).eval().requires_grad_(False)
