"""VQGAN's pieces against what the paper says: the adaptive weight is the gradient-norm ratio at the decoder's last
layer; the discriminator does nothing before its start step; the commitment term carries beta on the encoder's
side; the perceptual distance is zero for identical images and grows with distortion; the patch discriminator
judges patches; tokens round-trip through the decoder."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import torch

from genlab.vqgan.discriminator import PatchGAN, PatchGANConfig
from genlab.vqgan.efficientnet import EfficientNetLite0, SameConv2d, load_efficientnet_lite0
from genlab.vqgan.model import VQGAN, VQGANConfig
from genlab.vqgan.objective import adaptive_weight, autoencoder_loss, discriminator_loss
from genlab.vqgan.perceptual import FeatureDistance

TINY = VQGANConfig(image_shape=(1, 16, 16), base_channels=16, channel_multipliers=(1, 2), z_channels=16,
                   num_codes=32, code_dim=8, head_channels=16, groups=8)  # fmt: skip
WEIGHTS = Path(os.environ.get("GENLAB_WEIGHTS", Path.home() / ".cache/genlab/weights")) / "efficientnet-lite0.pth"


def tiny_parts(seed: int = 0) -> tuple[VQGAN, PatchGAN, torch.Tensor]:
    torch.manual_seed(seed)
    return VQGAN(TINY), PatchGAN(PatchGANConfig(1, 8, 2)), torch.rand(4, 1, 16, 16) * 2 - 1


def test_the_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer() -> None:
    model, discriminator, x = tiny_parts()
    out = model(x)
    reconstruction = (x - out.reconstruction).abs().mean()
    generator = -discriminator(out.reconstruction).mean()
    weight = adaptive_weight(reconstruction, generator, model.last_layer)
    norms = []
    for loss in (reconstruction, generator):  # by hand: backward each loss alone, read the last layer's gradient
        model.zero_grad()
        loss.backward(retain_graph=True)
        norms.append(model.last_layer.grad.norm().item())
    assert weight.item() == pytest.approx(norms[0] / (norms[1] + 1e-6), rel=1e-5)
    assert not weight.requires_grad


def test_the_discriminator_has_no_effect_before_its_start_step() -> None:
    model, discriminator, x = tiny_parts()
    before, terms, _ = autoencoder_loss(model, x, discriminator, None, step=9, discriminator_start=10)
    alone, _, _ = autoencoder_loss(model, x, None, None, step=9, discriminator_start=10)
    assert torch.equal(before, alone) and "generator_loss" not in terms
    before.backward()
    assert all(p.grad is None for p in discriminator.parameters())
    d_loss = discriminator_loss(discriminator, x, x, step=9, discriminator_start=10)
    d_loss.backward()
    assert d_loss.item() == 0 and all(p.grad is None for p in discriminator.parameters())
    after, terms, out = autoencoder_loss(model, x, discriminator, None, step=10, discriminator_start=10)
    assert "adaptive_weight" in terms and not torch.equal(after, alone)
    d_loss = discriminator_loss(discriminator, x, out.reconstruction, step=10, discriminator_start=10)
    real, fake = discriminator(x), discriminator(out.reconstruction)
    hinge = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()  # E[max(0, 1 - D(x))] + E[max(0, 1 + D(x^))]
    assert d_loss.item() == pytest.approx(hinge.item())


def test_beta_weights_the_commitment_on_the_encoder_side_as_the_paper_writes() -> None:
    """The codebook receives the codebook term's gradient at weight 1; the encoder, beta times the commitment's."""
    model, _, x = tiny_parts()

    def grads(commitment_cost: float, term: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        loss, _, out = autoencoder_loss(model, x, None, None, 0, 0, commitment_cost=commitment_cost)
        chosen = loss if term is None else getattr(out.quantizer, term)
        chosen.backward()
        parameters = (model.quantizer.codebook, model.pre_quantize.weight)
        return tuple(torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in parameters)

    codebook_full, encoder_full = grads(0.25)
    codebook_only, _ = grads(0.25, "codebook_loss")
    assert torch.allclose(codebook_full, codebook_only, atol=1e-7)  # reconstruction and commitment skip the codebook
    _, encoder_without = grads(0.0)
    _, commitment = grads(0.25, "commitment_loss")
    assert torch.allclose(encoder_full - encoder_without, 0.25 * commitment, atol=1e-6)


def test_tokens_round_trip_through_the_decoder() -> None:
    model, _, x = tiny_parts()
    model.eval()
    with torch.no_grad():
        out = model(x)
        (tokens,) = model.encode(x)
        assert tokens.shape == (4, 8, 8) and torch.equal(tokens, out.quantizer.indices)
        # the forward pass decodes z + (q - z).detach(), equal to q only up to float rounding
        assert torch.allclose(model.decode_tokens([tokens]), out.reconstruction, atol=1e-5)
        assert torch.equal(model.encode(x)[0], tokens)


@pytest.mark.parametrize("layers", [2, 3])
def test_the_patch_discriminator_judges_patches(layers: int) -> None:
    """Each output logit sees a bounded patch: changing one corner of the image leaves the far corner's logits."""
    torch.manual_seed(0)
    discriminator = PatchGAN(PatchGANConfig(3, 8, layers)).eval()
    x = torch.randn(1, 3, 64, 64)
    changed = x.clone()
    changed[..., :4, :4] += 5.0
    with torch.no_grad():
        a, b = discriminator(x), discriminator(changed)
    assert a.shape[-1] > 1
    assert not torch.allclose(a[..., 0, 0], b[..., 0, 0])
    assert torch.equal(a[..., -1, -1], b[..., -1, -1])


def test_the_perceptual_distance_is_zero_for_identical_images_and_grows_with_distortion() -> None:
    torch.manual_seed(0)
    distance = FeatureDistance(EfficientNetLite0().eval())
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert torch.allclose(distance(x, x), torch.zeros(4), atol=1e-6)
    noise = torch.randn_like(x)
    values = [distance(x, (x + level * noise).clamp(-1, 1)).mean().item() for level in (0.05, 0.2, 0.5, 1.0)]
    assert all(a < b for a, b in itertools.pairwise(values)), values
    y = torch.rand(4, 1, 28, 28) * 2 - 1
    assert torch.allclose(distance(x, y), distance(y, x), atol=1e-5)
    # each layer compares unit vectors: it adds at most 2^2 = 4 whatever the images' scale, and unrelated images
    # differ at every layer, however small that layer's activations (these random-weight stages shrink 10x each)
    assert (distance(100 * x, -100 * y) <= 4 * 5 + 1e-4).all() and (distance(x, y) > 1).all()


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="efficientnet-lite0.pth is laid out by ../shared/tools/fetch-weights")
def test_the_imagenet_weights_load_into_the_lite0_module_exactly() -> None:
    """Every key and shape of the state dict matches (strict load), and the weighted distance behaves as above."""
    network = load_efficientnet_lite0(WEIGHTS)  # load_state_dict is strict: a missing or extra key raises
    distance = FeatureDistance(network)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    near, far = distance(x, x + 0.05 * torch.randn_like(x)), distance(x, x + 0.5 * torch.randn_like(x))
    assert (near < far).all()


def test_the_lite0_convolutions_pad_as_tensorflow_s_same() -> None:
    """TF's SAME on an 8 x 8 input, stride 2, 3 x 3: 4 x 4 out, nothing padded before, one row and column after.
    All-ones input and kernel: the first output sums a full 3 x 3 window (9), the last a 2 x 2 one (4); PyTorch's
    symmetric padding would give 4 and 9."""
    conv = SameConv2d(1, 1, 3, 2, bias=False)
    torch.nn.init.ones_(conv.weight)
    out = conv(torch.ones(1, 1, 8, 8))
    assert out.shape == (1, 1, 4, 4) and out[0, 0, 0, 0] == 9 and out[0, 0, -1, -1] == 4
    assert SameConv2d(1, 1, 5, 1)(torch.ones(1, 1, 7, 9)).shape == (1, 1, 7, 9)  # stride 1: the size is kept
