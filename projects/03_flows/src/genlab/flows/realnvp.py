"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP"), Sec. 3.6 and 4.1.

Each scale but the last: three checkerboard couplings, a squeeze, three channel-wise couplings, then half of
the channels factored out. The last scale: four checkerboard couplings. Masks alternate so every value is
transformed. The scale is bounded, log s = λ tanh(·); each coupling is followed by batch normalisation as a
flow layer (Sec. 3.7), or by actnorm; the data first go through the logit pre-processing (Sec. 4.1), whose
Jacobian is part of the density. Every prior is N(0, I).
"""

from __future__ import annotations

from genlab.flows.layers import (
    ActNorm,
    AffineCoupling,
    BatchNormFlow,
    FlowLayer,
    FlowSequence,
    LogitTransform,
    ResNetCouplingNet,
    Squeeze,
)
from genlab.flows.multiscale import MultiScaleFlow
from genlab.flows.priors import SplitPrior, TopPrior


def check_divisible(image_shape: tuple[int, int, int], squeezes: int) -> None:
    _, height, width = image_shape
    if height % 2**squeezes or width % 2**squeezes:
        raise ValueError(f"{squeezes} squeezes need H and W divisible by {2**squeezes}; the image is {height}x{width}")


def build_realnvp(
    image_shape: tuple[int, int, int],
    num_scales: int = 3,
    hidden_channels: int = 64,
    num_blocks: int = 4,
    normalisation: str = "batchnorm",
    logit_alpha: float = 0.05,
) -> MultiScaleFlow:
    check_divisible(image_shape, num_scales - 1)
    norm_class = {"batchnorm": BatchNormFlow, "actnorm": ActNorm}[normalisation]
    c, h, w = image_shape

    def coupling(mask: str, parity: int) -> list[FlowLayer]:
        conditioner_channels = c if mask == "checkerboard" else c // 2
        transformed = c if mask == "checkerboard" else c - c // 2
        net = ResNetCouplingNet(conditioner_channels, 2 * transformed, hidden_channels, num_blocks)
        return [AffineCoupling(c, h, w, mask, parity, "tanh", net), norm_class(c)]

    levels, latent_shapes = [], []
    for scale in range(num_scales):
        final = scale == num_scales - 1
        layers: list[FlowLayer] = []
        for k in range(4 if final else 3):
            layers += coupling("checkerboard", k % 2)
        if not final:
            layers.append(Squeeze())
            c, h, w = 4 * c, h // 2, w // 2
            for k in range(3):
                layers += coupling("channel", k % 2)
            c //= 2  # half the channels are factored out
        latent_shapes.append((c, h, w))
        levels.append(FlowSequence(layers))
    split_priors = [SplitPrior(shape[0], shape[0], learned=False) for shape in latent_shapes[:-1]]
    top_prior = TopPrior(latent_shapes[-1], learned=False)
    return MultiScaleFlow(LogitTransform(logit_alpha), levels, split_priors, top_prior, latent_shapes)
