"""Metrics on the classifier's outputs: condition accuracy, Fréchet distance, KID, precision and recall.

Every function takes features f (N, D) or logits (N, K) as tensors and returns plain numbers, so each one can
be checked against a closed form. Notation: a = real features (N_a, D), b = generated features (N_b, D),
μ, Σ their mean and covariance.
"""

import torch

from tinyldm.data import DataError

KID_DEGREE = 3  # k(x, y) = (xᵀy / D + 1)³, the polynomial kernel of Bińkowski et al. 2018
PR_K = 3  # k-th nearest neighbour radius of Kynkäänniemi et al. 2019 (their default)


def need(n: int, minimum: int, metric: str, what: str = "images", fix: str = "generate or add more images") -> None:
    """One-line error when a metric gets fewer samples than it is defined for."""
    if n < minimum:
        raise DataError(f"{metric} needs at least {minimum} {what}, got {n}; {fix}")


# ---- classification ------------------------------------------------------------------------------------------

def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> torch.Tensor:
    """(N, K) logits, (N,) labels → (N,) bool: is the label among the k largest logits?"""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) predictions and labels → (K, K) counts; row = intended user, column = predicted user."""
    flat = labels.long() * num_classes + pred.long()  # (N,)
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def condition_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Accuracy of the classifier on images made for user `labels`: top-1, top-5, per user, confusion matrix."""
    need(len(labels), 1, "condition accuracy")
    top1, top5 = topk_correct(logits, labels, 1), topk_correct(logits, labels, 5)
    per_user = []
    for k in range(num_classes):
        mask = labels == k
        per_user.append(top1[mask].float().mean().item() if mask.any() else float("nan"))
    return {"top1": top1.float().mean().item(), "top5": top5.float().mean().item(), "per_user": per_user,
            "confusion": confusion_matrix(logits.argmax(1), labels, num_classes).tolist()}


# ---- Fréchet distance ----------------------------------------------------------------------------------------

def gaussian_stats(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) → mean μ (D,) and unbiased covariance Σ (D, D), in float64."""
    f = f.double()
    mu = f.mean(dim=0)
    d = f - mu
    return mu, d.T @ d / (len(f) - 1)


def sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition: V diag(√λ) Vᵀ.

    Round-off can make tiny eigenvalues of a rank-deficient covariance negative; they are clamped to 0.
    """
    lam, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * lam.clamp_min(0).sqrt()) @ v.T


def frechet_distance_gaussians(mu1, sigma1, mu2, sigma2) -> float:
    """d² = ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)  (Dowson & Landau 1982; FID, Heusel et al. 2017).

    tr (Σ1 Σ2)^½ is computed as tr (Σ1^½ Σ2 Σ1^½)^½ = Σ √λ_i: the two matrices are similar, and the second is
    symmetric PSD, so an eigendecomposition in float64 replaces scipy's general sqrtm (no scipy needed).
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    s1_half = sqrtm_psd(sigma1)
    middle = s1_half @ sigma2 @ s1_half  # (D, D) symmetric PSD
    tr_cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    d2 = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * tr_cross
    return max(d2.item(), 0.0)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features a (N_a, D) and b (N_b, D).

    Biased upwards for small N (the covariance estimates are noisy; with N ≤ D they are singular): compare
    figures at the same N only.
    """
    need(len(a), 2, "the Fréchet distance", "real images")
    need(len(b), 2, "the Fréchet distance", "generated images")
    return frechet_distance_gaussians(*gaussian_stats(a), *gaussian_stats(b))


# ---- KID ------------------------------------------------------------------------------------------------------

def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (xᵀy / D + 1)³ for all pairs → (N_x, N_y)."""
    return (x @ y.T / x.shape[1] + 1) ** KID_DEGREE


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² (Gretton et al. 2012, Eq. 3): the diagonal terms k(x_i, x_i) are left out of the means.

    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m−1)) + Σ_{i≠j} k(y_i, y_j) / (n(n−1)) − 2 Σ_{i,j} k(x_i, y_j) / (mn)
    """
    x, y = x.double(), y.double()
    m, n = len(x), len(y)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    term_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    term_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return (term_x + term_y - 2 * k_xy.mean()).item()


def kid(a: torch.Tensor, b: torch.Tensor, subset_size: int = 1000, subsets: int = 50,
        generator: torch.Generator | None = None) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018) in our features → (mean, std) of MMD²_u over subsets.

    Unbiased: its expectation is 0 when a and b come from one distribution (a single estimate can be < 0).
    Subsets of m = min(subset_size, N_a, N_b) are drawn without replacement from each set; when both sets have
    exactly m images there is only one subset and std = 0.
    """
    need(len(a), 2, "KID", "real images")
    need(len(b), 2, "KID", "generated images")
    m = min(subset_size, len(a), len(b))
    if m == len(a) == len(b):
        return mmd2_unbiased(a, b), 0.0
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    values = torch.tensor([mmd2_unbiased(a[torch.randperm(len(a), generator=g)[:m]],
                                         b[torch.randperm(len(b), generator=g)[:m]]) for _ in range(subsets)])
    return values.mean().item(), values.std().item()


# ---- precision and recall -----------------------------------------------------------------------------------

def knn_radii(f: torch.Tensor, k: int = PR_K, chunk: int = 1024) -> torch.Tensor:
    """(N, D) → (N,) distance of each point to its k-th nearest neighbour among the others."""
    f = f.double()
    radii = []
    for start in range(0, len(f), chunk):
        d = torch.cdist(f[start:start + chunk], f)  # (c, N)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the 1st smallest is the point itself (distance 0)
    return torch.cat(radii)


def in_manifold(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(Q, D) queries → (Q,) bool: inside some ball B(ref_j, radii_j), the k-NN estimate of ref's manifold."""
    query, ref = query.double(), ref.double()
    inside = []
    for start in range(0, len(query), chunk):
        d = torch.cdist(query[start:start + chunk], ref)  # (c, N_ref)
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall(a: torch.Tensor, b: torch.Tensor, k: int = PR_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) → (precision, recall).

    precision = share of generated samples inside the real manifold (fidelity),
    recall    = share of real samples inside the generated manifold (coverage / diversity),
    where a manifold is the union of balls around each sample with radius = distance to its k-th neighbour.
    """
    need(len(a), k + 1, f"precision/recall with k = {k}", "real images")
    need(len(b), k + 1, f"precision/recall with k = {k}", "generated images")
    precision = in_manifold(b, a, knn_radii(a, k)).double().mean().item()
    recall = in_manifold(a, b, knn_radii(b, k)).double().mean().item()
    return precision, recall


def all_metrics(real_feats: torch.Tensor, gen_feats: torch.Tensor, gen_logits: torch.Tensor,
                gen_labels: torch.Tensor, num_classes: int, seed: int = 0) -> dict:
    """Everything measured on one set of generated images against the real reference features."""
    kid_mean, kid_std = kid(real_feats, gen_feats, generator=torch.Generator().manual_seed(seed))
    precision, recall = precision_recall(real_feats, gen_feats)
    out = {"n": len(gen_labels), "condition_accuracy": condition_accuracy(gen_logits, gen_labels, num_classes),
           "fd": frechet_distance(real_feats, gen_feats), "kid": kid_mean, "kid_std": kid_std,
           "precision": precision, "recall": recall}
    return out
