"""The evaluation's metrics against closed forms and constructed cases: Fréchet distance, KID, precision/recall."""

import math

import pytest
import torch

from tinyldm.data import DataError
from tinyldm.evaluation.metrics import (
    condition_accuracy,
    frechet_distance,
    frechet_distance_gaussians,
    gaussian_stats,
    kid,
    mmd2_unbiased,
    precision_recall,
    sqrtm_psd,
)


def with_moments(n: int, mu: torch.Tensor, sigma: torch.Tensor, seed: int) -> torch.Tensor:
    """n samples (n, D) whose sample mean is exactly mu and unbiased sample covariance exactly sigma."""
    z = torch.randn(n, len(mu), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / (n - 1))
    white = z @ torch.linalg.inv(chol).T  # sample covariance I
    return white @ torch.linalg.cholesky(sigma).T + mu


def test_frechet_distance_of_a_set_with_itself_is_zero():
    f = torch.randn(300, 16, generator=torch.Generator().manual_seed(0)) * 3 + 1
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)
    # Also when N < D and the covariance is singular.
    g = torch.randn(10, 32, generator=torch.Generator().manual_seed(1))
    assert frechet_distance(g, g) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    # Commuting covariances: d² = ‖μ1 − μ2‖² + Σ_i (s1_i − s2_i)² with s the standard deviations.
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0, 0.0],
                                                                                          dtype=torch.float64)
    s1, s2 = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64), torch.tensor([2.0, 1.0, 0.5, 1.0],
                                                                                    dtype=torch.float64)
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance_gaussians(mu1, torch.diag(s1**2), mu2, torch.diag(s2**2)) == pytest.approx(expected.item())
    a, b = with_moments(500, mu1, torch.diag(s1**2), 0), with_moments(400, mu2, torch.diag(s2**2), 1)
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-9)


def test_frechet_distance_matches_the_closed_form_for_non_commuting_2d_gaussians():
    # In 2-D, tr √M = √(tr M + 2 √det M) for M = Σ1 Σ2 (its eigenvalues λ1, λ2 > 0: (√λ1 + √λ2)²).
    sigma1 = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    sigma2 = torch.tensor([[1.0, -0.5], [-0.5, 3.0]], dtype=torch.float64)
    mu1, mu2 = torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([1.0, -2.0], dtype=torch.float64)
    m = sigma1 @ sigma2
    tr_sqrt = math.sqrt(m.trace().item() + 2 * math.sqrt(torch.linalg.det(m).item()))
    expected = 5.0 + sigma1.trace().item() + sigma2.trace().item() - 2 * tr_sqrt
    assert frechet_distance_gaussians(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10)
    a, b = with_moments(200, mu1, sigma1, 2), with_moments(300, mu2, sigma2, 3)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)  # symmetric


def test_gaussian_stats_and_psd_square_root():
    f = with_moments(50, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.eye(3, dtype=torch.float64) * 4, 4)
    mu, sigma = gaussian_stats(f)
    assert torch.allclose(mu, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert torch.allclose(sigma, torch.eye(3, dtype=torch.float64) * 4)
    a = torch.randn(6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    s = a @ a.T
    root = sqrtm_psd(s)
    assert torch.allclose(root @ root, s, atol=1e-10) and torch.allclose(root, root.T)


def test_mmd2_unbiased_equals_its_definition_written_as_loops():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64) + 1
    k = lambda a, b: (float(a @ b) / 3 + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    # Over many independent pairs of samples from one Gaussian the unbiased estimate averages to 0 (within 3
    # standard errors), while the biased V-statistic (diagonal terms kept) stays clearly positive.
    g = torch.Generator().manual_seed(0)
    unbiased, biased = [], []
    for _ in range(200):
        x, y = torch.randn(30, 8, generator=g), torch.randn(30, 8, generator=g)
        unbiased.append(mmd2_unbiased(x, y))
        kxx, kyy = (x.double() @ x.double().T / 8 + 1) ** 3, (y.double() @ y.double().T / 8 + 1) ** 3
        kxy = (x.double() @ y.double().T / 8 + 1) ** 3
        biased.append((kxx.mean() + kyy.mean() - 2 * kxy.mean()).item())
    u = torch.tensor(unbiased)
    assert abs(u.mean().item()) < 3 * u.std().item() / math.sqrt(len(u))
    b = torch.tensor(biased)
    assert b.mean().item() > 10 * u.std().item() / math.sqrt(len(u))
    # And KID separates two different distributions.
    x, y = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g) + 0.5
    same, _ = kid(x, torch.randn(200, 8, generator=g))
    differ, _ = kid(x, y)
    assert differ > 20 * abs(same)


def test_kid_subsets_are_seeded():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(120, 4, generator=g), torch.randn(90, 4, generator=g)
    r1 = kid(a, b, subset_size=50, subsets=10, generator=torch.Generator().manual_seed(3))
    r2 = kid(a, b, subset_size=50, subsets=10, generator=torch.Generator().manual_seed(3))
    assert r1 == r2 and r1[1] > 0


def test_precision_recall_on_constructed_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 6, generator=g)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)  # identical sets
    assert precision_recall(real, real + 1000.0) == (0.0, 0.0)  # disjoint, far apart
    # Half the generated images are copies of real ones, half far away: precision 1/2.
    fake = torch.cat([real[:20], torch.randn(20, 6, generator=g) + 1000.0])
    precision, _ = precision_recall(real, fake)
    assert precision == 0.5
    # Mode collapse: every generated image is a copy of one real image. Precision 1, recall = share of real
    # images within the (zero) radius of the copies = exactly that one image.
    precision, recall = precision_recall(real, real[:1].repeat(10, 1))
    assert precision == 1.0 and recall == pytest.approx(1 / 40)


def test_condition_accuracy_on_constructed_logits():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.zeros(6, 3)
    logits[torch.arange(6), torch.tensor([0, 1, 1, 1, 0, 0])] = 1.0  # user 0: 1/2, user 1: 2/2, user 2: 0/2
    acc = condition_accuracy(logits, labels, 3)
    assert acc["top1"] == pytest.approx(3 / 6)
    assert acc["per_user"] == pytest.approx([0.5, 1.0, 0.0])
    assert acc["top5"] == 1.0  # 3 users: top-5 covers all
    assert acc["confusion"] == [[1, 1, 0], [0, 2, 0], [2, 0, 0]]


@pytest.mark.parametrize("metric, n_needed", [(frechet_distance, 2), (kid, 2), (precision_recall, 4)])
def test_too_few_images_say_how_many_are_needed(metric, n_needed):
    real = torch.randn(20, 4)
    with pytest.raises(DataError, match=f"at least {n_needed} generated images, got {n_needed - 1}"):
        metric(real, torch.randn(n_needed - 1, 4))
