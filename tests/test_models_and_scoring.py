import numpy as np
import pytest
import torch

from anomaly.models import DenseAE, DenseVAE
from anomaly.scoring import (
    gaussian_nll,
    kl_to_standard_normal,
    score_array,
    score_batch,
    scoring_blocks,
    training_loss,
    widest_activation,
)


def test_autoencoder_shapes_and_linear_preset():
    x = torch.randn(8, 5)
    ae = DenseAE(5, hidden=(16, 8), latent=3)
    assert ae(x).shape == (8, 5) and ae.encode(x).shape == (8, 3)
    linear = DenseAE(5, hidden=(), latent=2)
    assert [type(m).__name__ for m in linear.modules() if len(list(m.children())) == 0] == [
        "Linear",
        "Linear",
    ]


def test_reconstruction_parts_add_up_to_score():
    torch.manual_seed(0)
    ae, x = DenseAE(6, (8,), 2).eval(), torch.randn(10, 6)
    score, parts = score_batch(ae, x, "reconstruction")
    assert parts.shape == (10, 6)
    assert torch.allclose(parts.sum(dim=1), score)
    assert torch.allclose(score, ((ae(x) - x) ** 2).mean(dim=1))


def test_vae_scores_are_deterministic_and_iwae_is_tighter():
    torch.manual_seed(0)
    vae, x = DenseVAE(6, (16,), 3, n_samples=8).eval(), torch.randn(20, 6)
    with torch.no_grad():
        elbo, parts = score_batch(vae, x, "elbo")
        again, _ = score_batch(vae, x, "elbo")
        iwae, _ = score_batch(vae, x, "iwae")
    assert torch.equal(elbo, again)
    assert parts.shape == (20, 6)
    # Jensen: log of a mean weight >= mean of log weights, so -IWAE <= -ELBO per row.
    assert (iwae <= elbo + 1e-4).all()


def test_elbo_without_draws_is_taken_at_the_posterior_mean():
    torch.manual_seed(0)
    vae, x = DenseVAE(6, (16,), 3, n_samples=0).eval(), torch.randn(20, 6)
    with torch.no_grad():
        elbo, parts = score_batch(vae, x, "elbo")
        mu, logvar = vae.encode(x)
        nll = gaussian_nll(x, vae.decode(mu), vae.log_scale).sum(dim=1)
        vae.eps = torch.zeros(1, 3)  # one draw, of zeros: it lands on the mean too
        one_draw_at_the_mean, same_parts = score_batch(vae, x, "elbo")
    torch.testing.assert_close(elbo, nll + kl_to_standard_normal(mu, logvar))
    torch.testing.assert_close(elbo, one_draw_at_the_mean)
    torch.testing.assert_close(parts, same_parts)
    with pytest.raises(AssertionError, match="need draws"):
        score_batch(DenseVAE(6, (16,), 3, n_samples=0), x, "iwae")


def test_vae_draws_are_fixed_by_seed():
    draws = DenseVAE(4, (8,), 2, n_samples=4, seed=3).eps
    assert draws.shape == (4, 2)
    assert torch.equal(draws, DenseVAE(4, (8,), 2, n_samples=4, seed=3).eps)


def test_elbo_score_needs_a_vae():
    with pytest.raises(AssertionError, match="need a VAE"):
        score_batch(DenseAE(4, (8,), 2), torch.randn(2, 4), "elbo")


def test_training_loss_is_finite_and_differentiable():
    for model in (DenseAE(4, (8,), 2), DenseVAE(4, (8,), 2)):
        x = torch.randn(16, 4)
        loss = training_loss(model, x + 0.1, x, beta=0.5)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_cpu_blocks_are_sized_by_the_widest_activation_and_keep_scores():
    cpu = torch.device("cpu")
    ae = DenseAE(24, hidden=(64, 32), latent=8).eval()
    vae = DenseVAE(24, hidden=(64, 32), latent=8, n_samples=4).eval()
    assert widest_activation(ae, (24,), "reconstruction", cpu) == 64
    # The VAE decodes its posterior mean and 4 samples for each row: (rows, 5, 64).
    assert widest_activation(vae, (24,), "elbo", cpu) == 5 * 64
    assert widest_activation(DenseVAE(24, (64, 32), 8, n_samples=0), (24,), "elbo", cpu) == 64
    assert not any(m._forward_hooks for m in vae.modules())  # the probe leaves no hooks
    assert scoring_blocks(cpu, 24, 64) == (8192, 16)
    assert scoring_blocks(cpu, 24, 5 * 64) == (1632, 16)
    # Blocks of 1,632 rows, the last one padded: each row scores as it does alone.
    x = np.random.default_rng(0).standard_normal((4000, 24)).astype(np.float32)
    together, _ = score_array(vae, x, "elbo", cpu)
    picked = [0, 1700, 3999]
    alone = np.concatenate([score_array(vae, x[i : i + 1], "elbo", cpu)[0] for i in picked])
    assert np.array_equal(together[picked], alone)
