"""Residual quantisation, the RQ-VAE loss and training, and the codebook-size rule."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from align3gr_kit.tokenizer.rqvae import RQVAE, ResidualQuantizer, scaled_codebook_size


def test_quantised_vector_is_sum_of_codes_plus_final_residual():
    torch.manual_seed(0)
    rq = ResidualQuantizer(levels=3, codebook_size=8, dim=4)
    z = torch.randn(16, 4)
    q = rq(z)
    books = rq.codebooks.detach()
    chosen = sum(books[lv][q.codes[:, lv]] for lv in range(3))
    torch.testing.assert_close(chosen + q.residual, z, rtol=0, atol=1e-6)
    torch.testing.assert_close(rq.decode_codes(q.codes), chosen)
    # straight-through: the forward value is the quantised vector, the gradient is the identity
    torch.testing.assert_close(q.z_q, q.quantized.detach())
    zz = z.clone().requires_grad_(True)
    rq(zz).z_q.sum().backward()
    torch.testing.assert_close(zz.grad, torch.ones_like(z))
    # level 0 picks the nearest code by brute force; level 1 the nearest to what level 0 left
    r0 = ((z[:, None] - books[0][None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(q.codes[:, 0], r0)
    r1 = (((z - books[0][r0])[:, None] - books[1][None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(q.codes[:, 1], r1)


def test_rq_losses_match_their_definitions():
    torch.manual_seed(1)
    rq = ResidualQuantizer(levels=2, codebook_size=4, dim=3)
    z = torch.randn(5, 3)
    q = rq(z)
    books = rq.codebooks.detach()
    e0 = books[0][q.codes[:, 0]]
    e1 = books[1][q.codes[:, 1]]
    expected = F.mse_loss(e0, z) + F.mse_loss(e1, z - e0)
    torch.testing.assert_close(q.codebook_loss, expected)
    torch.testing.assert_close(q.commitment_loss, expected)  # same value, gradient goes elsewhere


def test_kmeans_init_puts_codes_on_cluster_centres():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6)) * 5
    z = torch.tensor(np.repeat(centres, 10, axis=0) + rng.normal(size=(40, 6)) * 0.01, dtype=torch.float32)
    rq = ResidualQuantizer(levels=2, codebook_size=4, dim=6)
    rq.kmeans_init(z, seed=0)
    found = rq.codebooks.detach()[0].numpy()
    dist = np.linalg.norm(found[:, None] - centres[None], axis=-1).min(axis=0)
    assert dist.max() < 0.05
    assert len(torch.unique(rq(z).codes[:, 0])) == 4
    # fewer distinct points than codes: still a full, finite codebook
    small = ResidualQuantizer(levels=1, codebook_size=8, dim=6)
    small.kmeans_init(z[:3], seed=0)
    assert torch.isfinite(small.codebooks).all()


def test_rqvae_reconstruction_improves_with_training():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.tensor(np.repeat(rng.normal(size=(8, 16)), 25, axis=0) + rng.normal(size=(200, 16)) * 0.3,
                     dtype=torch.float32)
    model = RQVAE(16, hidden_dim=64, code_dim=8, levels=3, codebook_size=8)
    model.kmeans_init(x, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model(x).recon_loss.item()
    for _ in range(300):
        out = model(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        last = model(x)
    assert last.recon_loss.item() < 0.5 * first
    assert torch.isfinite(last.loss)
    assert last.codes.shape == (200, 3) and int(last.codes.max()) < 8


@pytest.mark.parametrize("n,levels,expected", [(500, 3, 16), (1682, 3, 32), (9922, 3, 64), (100_000, 3, 128),
                                               (10_000_000, 3, 256), (20, 3, 8), (500, 2, 64)])
def test_scaled_codebook_size(n, levels, expected):
    assert scaled_codebook_size(n, levels, 256) == expected
    assert scaled_codebook_size(n, levels, 256) ** levels >= n  # enough leaves for every entity


def test_scaled_codebook_size_respects_cap():
    assert scaled_codebook_size(10**9, 3, 64) == 64
    with pytest.raises(ValueError):
        scaled_codebook_size(0, 3)
