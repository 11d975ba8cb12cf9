"""Class labels for sampling and classifier-free guidance: the label cycle and the exact combination."""

import pytest
import torch

from diffsat.diffusion.guidance import LabelError, guided_prediction, sample_labels


def test_labels_cycle_every_class_by_default_and_the_requested_ones_otherwise() -> None:
    assert sample_labels(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert sample_labels(5, 10, [7]).tolist() == [7] * 5
    assert sample_labels(5, 10, [1, 7]).tolist() == [1, 7, 1, 7, 1]
    assert torch.bincount(sample_labels(500, 10)).tolist() == [50] * 10
    with pytest.raises(LabelError, match="class label 10 out of range: this model has classes 0..9"):
        sample_labels(3, 10, [2, 10])


class ClassOffsetNet(torch.nn.Module):
    """prediction = x * level + offset[label] (offset of the "no class" label 3 is -1); counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.tensor([1.0, 2.0, 5.0, -1.0])
        self.calls = 0

    def forward(self, x, level, labels):
        self.calls += 1
        return x * level.view(-1, 1, 1, 1) + self.offset[labels].view(-1, 1, 1, 1)


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_guidance_is_the_linear_combination_of_eq_6(scale: float) -> None:
    net, labels = ClassOffsetNet(), torch.tensor([0, 2])
    x, level = torch.randn(2, 1, 4, 4), torch.tensor([0.3, 0.7])
    out = guided_prediction(net, labels, scale, null_label=3)(x, level)
    base = x * level.view(-1, 1, 1, 1)
    conditional = net.offset[labels].view(-1, 1, 1, 1)
    expected = base + (-1.0 + scale * (conditional - (-1.0)))  # u + s (c - u), u and c differing by offsets
    assert torch.allclose(out, expected, atol=1e-6)
    assert net.calls == 1  # conditional and unconditional in one call (a doubled batch when scale != 1)
