"""Glow (Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1x1 Convolutions"), Sec. 3, Fig. 2.

L levels; each squeezes, then runs K steps of flow

    actnorm (Sec. 3.1) -> invertible 1x1 convolution (Sec. 3.2) -> affine coupling (Sec. 3.3)

and every level but the last factors out half of its channels with a learned prior conditioned on the other
half. The coupling's network ends in a zero-initialised convolution, so each step starts as the identity; the
scale is sigmoid(· + 2). The top prior is learned and, optionally, class-conditional. Data are centred on 0.
"""

from __future__ import annotations

from genlab.flows.layers import (
    ActNorm,
    AffineCoupling,
    FlowLayer,
    FlowSequence,
    GlowCouplingNet,
    InvertibleConv1x1,
    Shift,
    Squeeze,
)
from genlab.flows.multiscale import MultiScaleFlow
from genlab.flows.priors import SplitPrior, TopPrior
from genlab.flows.realnvp import check_divisible


def build_glow(
    image_shape: tuple[int, int, int],
    num_levels: int = 3,
    steps_per_level: int = 32,
    hidden_channels: int = 512,
    lu_decomposed: bool = True,
    learn_top: bool = True,
    num_classes: int = 0,
) -> MultiScaleFlow:
    check_divisible(image_shape, num_levels)
    c, h, w = image_shape
    levels, latent_shapes = [], []
    for level in range(num_levels):
        c, h, w = 4 * c, h // 2, w // 2
        layers: list[FlowLayer] = [Squeeze()]
        for _ in range(steps_per_level):
            net = GlowCouplingNet(c // 2, 2 * (c - c // 2), hidden_channels)
            layers += [
                ActNorm(c),
                InvertibleConv1x1(c, lu_decomposed),
                AffineCoupling(c, h, w, "channel", 0, "sigmoid", net),
            ]
        if level < num_levels - 1:
            c //= 2
        latent_shapes.append((c, h, w))
        levels.append(FlowSequence(layers))
    split_priors = [SplitPrior(shape[0], shape[0], learned=True) for shape in latent_shapes[:-1]]
    top_prior = TopPrior(latent_shapes[-1], learned=learn_top, num_classes=num_classes)
    return MultiScaleFlow(Shift(-0.5), levels, split_priors, top_prior, latent_shapes)
