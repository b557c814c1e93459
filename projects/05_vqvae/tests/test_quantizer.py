"""What VQ-VAE's quantiser must do (van den Oord et al. 2017, Sec. 3 and App. A.1), and parity with
vector-quantize-pytorch on the same codebook and inputs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from genlab.vqvae.compare import parity
from genlab.vqvae.quantizer import VectorQuantizer, perplexity_and_usage


def _quantizer(num_codes: int = 8, code_dim: int = 3, **kwargs) -> VectorQuantizer:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_codes, code_dim, **kwargs)
    with torch.no_grad():  # well-separated codes, so that nearest-code assignments are unambiguous
        quantizer.codebook.copy_(torch.randn(num_codes, code_dim) * 3)
        quantizer.cluster_sum.copy_(quantizer.codebook)
    return quantizer


def test_each_vector_goes_to_its_nearest_code_and_indices_round_trip() -> None:
    quantizer = _quantizer().eval()
    z = torch.randn(4, 3, 5, 6) * 3
    out = quantizer(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    brute_force = torch.cdist(flat, quantizer.codebook).argmin(1).view(4, 5, 6)  # eq. 1, by another route
    assert torch.equal(out.indices, brute_force)
    vectors = quantizer.lookup(out.indices)  # indices -> vectors (B, D, h, w)
    assert torch.allclose(vectors, out.quantized, atol=1e-6)  # z + (e - z).detach() is e up to rounding
    assert torch.equal(quantizer(vectors).indices, out.indices)  # vectors -> the same indices


def test_the_straight_through_gradient_reaches_the_encoder_unchanged() -> None:
    quantizer = _quantizer()
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    upstream = torch.randn(2, 3, 4, 4)  # d loss / d z_q from a decoder
    (quantizer(z).quantized * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)  # d z_q / d z_e = I (Sec. 3.2)
    assert quantizer.codebook.grad is None  # the reconstruction gradient does not reach the codebook


def test_the_codebook_loss_moves_only_the_codebook_and_the_commitment_loss_only_the_encoder() -> None:
    quantizer = _quantizer()
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = quantizer(z)
    codebook_grads = torch.autograd.grad(out.codebook_loss, [z, quantizer.codebook], allow_unused=True)
    assert codebook_grads[0] is None and codebook_grads[1].abs().sum() > 0  # ||sg[z_e] - e||^2
    out = quantizer(z)
    commitment_grads = torch.autograd.grad(out.commitment_loss, [z, quantizer.codebook], allow_unused=True)
    assert commitment_grads[0].abs().sum() > 0 and commitment_grads[1] is None  # ||z_e - sg[e]||^2
    # Their values: the mean squared distance from each vector to its code, both of them.
    expected = (z - quantizer.lookup(out.indices)).pow(2).mean()
    assert torch.allclose(out.commitment_loss, expected) and torch.allclose(out.codebook_loss, expected)


def test_the_ema_update_equals_the_closed_form_running_means() -> None:
    """On a fixed assignment repeated T times, eqs. 6-8 give N_T = g^T N_0 + (1 - g^T) n and
    m_T = g^T m_0 + (1 - g^T) s, and the codebook is m_T over the Laplace-smoothed N_T."""
    decay, epsilon, steps, K = 0.9, 0.1, 5, 8  # a large epsilon, so that the smoothing shows
    quantizer = _quantizer(K, 3, ema=True, decay=decay, epsilon=epsilon).train()
    initial = quantizer.codebook.detach().clone()
    # Vectors near codes 0, 1 and 2 only: three at code 0, one at code 1, two at code 2.
    targets = torch.tensor([0, 0, 0, 1, 2, 2])
    points = initial[targets] + 0.1 * torch.randn(6, 3)
    z = points.t().reshape(1, 3, 1, 6)  # (B, D, h, w)
    assert torch.equal(quantizer(z).indices.flatten(), targets)
    with torch.no_grad():  # the assignment stays fixed: put the codebook back before every step
        for _ in range(steps - 1):
            quantizer.codebook.copy_(initial)
            quantizer(z)
    n = torch.bincount(targets, minlength=K).float()
    s = torch.zeros(K, 3).index_add_(0, targets, points)
    g = decay**steps
    N = g * torch.ones(K) + (1 - g) * n  # N_0 = 1 for every code
    m = g * initial + (1 - g) * s  # m_0 = the initial codes
    smoothed = (N + epsilon) / (N.sum() + K * epsilon) * N.sum()
    assert torch.allclose(quantizer.cluster_size, N, atol=1e-6)
    assert torch.allclose(quantizer.codebook, m / smoothed[:, None], atol=1e-5)
    assert quantizer.codebook.grad is None and not quantizer.codebook.requires_grad  # no gradient with EMA


@pytest.mark.parametrize(
    ("indices", "K", "perplexity", "usage"),
    [
        ([0, 0, 1, 1], 4, 2.0, 0.5),  # two codes equally often: perplexity 2, half the codebook used
        ([3, 3, 3, 3], 4, 1.0, 0.25),  # one code: perplexity 1
        ([0, 1, 2, 3], 4, 4.0, 1.0),  # all codes equally: perplexity K
        ([0, 0, 0, 1], 2, math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), 1.0),
    ],
)
def test_perplexity_and_usage_on_hand_made_assignments(indices, K, perplexity, usage) -> None:
    counts = torch.bincount(torch.tensor(indices), minlength=K).float()
    measured_perplexity, measured_usage = perplexity_and_usage(counts)
    assert measured_perplexity.item() == pytest.approx(perplexity, rel=1e-6)
    assert measured_usage.item() == pytest.approx(usage)


@pytest.mark.parametrize("ema", [False, True])
def test_a_dead_code_is_restarted_on_an_encoder_output(ema: bool) -> None:
    quantizer = _quantizer(8, 3, ema=ema, decay=0.5, dead_code_threshold=0.3).train()
    z = quantizer.codebook.detach()[:2].t().reshape(1, 3, 1, 2).repeat(1, 1, 4, 1)  # only codes 0 and 1 are used
    unused_before = quantizer.codebook.detach()[2:].clone()
    with torch.no_grad():
        quantizer(z)  # counts of the unused codes: 0.5, above the threshold
        assert torch.allclose(quantizer.codebook[2:], unused_before, atol=1e-4)  # not restarted (EMA: moved by eps)
        quantizer(z)  # 0.25 < 0.3: every unused code is restarted
    batch_vectors = z.permute(0, 2, 3, 1).reshape(-1, 3)
    for code in quantizer.codebook[2:]:
        assert (batch_vectors - code).abs().sum(1).min() < 1e-6  # each restarted code is one of the batch vectors
    assert torch.all(quantizer.usage_count[2:] == 1.0)


@pytest.mark.parametrize("ema", [True, False])
def test_codes_vectors_losses_and_ema_update_equal_vector_quantize_pytorch(ema: bool) -> None:
    pytest.importorskip("vector_quantize_pytorch", reason="the peer is in the dev group")
    torch.manual_seed(1)
    ours = VectorQuantizer(32, 4, ema=ema, decay=0.8)
    with torch.no_grad():
        ours.codebook.copy_(torch.randn(32, 4))
        ours.cluster_sum.copy_(ours.codebook)
    report = parity(ours, torch.randn(8, 4, 5, 5), commitment_cost=0.25)
    assert report["codes_differing"] == 0
    assert report["quantized_max_abs_diff"] < 1e-6
    assert report["commitment_loss_abs_diff"] < 1e-6
    if ema:
        assert report["codebook_after_step_max_abs_diff"] < 1e-5


def _ema_steps(quantizer: VectorQuantizer, z: torch.Tensor, steps: int = 3) -> dict[str, torch.Tensor]:
    quantizer.train()
    with torch.no_grad():
        for _ in range(steps):
            quantizer(z)
    return {k: v.detach().clone() for k, v in quantizer.state_dict().items()}


def _distributed_quantizer(threshold: float) -> tuple[VectorQuantizer, torch.Tensor]:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(16, 4, ema=True, decay=0.7, dead_code_threshold=threshold)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.randn(16, 4))
        quantizer.cluster_sum.copy_(quantizer.codebook)
    return quantizer, torch.randn(8, 4, 3, 3)  # the global batch


@pytest.mark.slow
def test_two_processes_keep_the_codebook_one_process_would(tmp_path: Path) -> None:
    """Under torchrun (2 CPU processes, gloo), each with half the batch: the EMA statistics are summed over the
    processes, so the codebook is the one a single process gets from the whole batch; with restarts on, the
    restarted codes are broadcast, so both processes keep the same codebook."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               __file__, str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    quantizer, z = _distributed_quantizer(threshold=0.0)
    expected = _ema_steps(quantizer, z)
    for rank in (0, 1):
        got = load_file(str(tmp_path / f"plain-{rank}.safetensors"))
        for key in ("codebook", "cluster_size", "cluster_sum", "usage_count"):
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)
    restarted = [load_file(str(tmp_path / f"restarts-{rank}.safetensors")) for rank in (0, 1)]
    assert torch.equal(restarted[0]["codebook"], restarted[1]["codebook"])
    assert not torch.allclose(restarted[0]["codebook"], expected["codebook"])  # sanity: restarts did happen


if __name__ == "__main__":  # one process of the torchrun above
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name, threshold in (("plain", 0.0), ("restarts", 0.5)):
        quantizer, z = _distributed_quantizer(threshold)
        torch.manual_seed(rank)  # the processes draw their restarts differently: only the broadcast aligns them
        state = _ema_steps(quantizer, z[4 * rank : 4 * rank + 4])
        save_file(state, str(Path(sys.argv[1]) / f"{name}-{rank}.safetensors"))
    dist.destroy_process_group()
