"""UNet2DConditionModel and DiT: shapes, published parameter counts, adaLN-Zero, conditioning, overfitting;
the run presets of every backbone."""

from dataclasses import asdict

import pytest
import torch

from tinyldm.loading import BACKBONES, backbone_config, build_backbone
from tinyldm.models.conditioning import ConditionEncoder
from tinyldm.models.dit import DiT, DiTConfig
from tinyldm.models.mmdit import MMDiT
from tinyldm.models.unet import UNet2DConditionModel, UNetConfig

SD1_UNET = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=[320, 640, 1280, 1280],
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                cross_attention_dim=768, attention_head_dim=8)


def tiny(kind, **kw):
    """The tiny presets' layout on 16×16×4 latents (the presets themselves are sized for 32×32×4): fast tests."""
    torch.manual_seed(0)
    if kind == "unet":
        return UNet2DConditionModel.from_preset("tiny", num_classes=5, sample_size=16, **kw)
    if kind == "mmdit":
        return MMDiT.from_preset("tiny", num_classes=5, input_size=16, patch_size=2, **kw)
    return DiT.from_preset("tiny", num_classes=5, input_size=16, patch_size=2, **kw)


def no_sdpa(*args, **kwargs):
    raise AssertionError("a model built with reference_attention=True called F.scaled_dot_product_attention")


def perturb(model, scale=0.05):
    """Move every weight off its init (DiT starts at exactly zero output), reproducibly."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def test_parameter_counts_match_the_published_models():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD1_UNET)
        dit = DiT(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                  mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True)
    n_unet = sum(p.numel() for name, p in unet.named_parameters() if not name.startswith("cond_"))
    assert n_unet == 859_520_964  # Stable Diffusion 1.x UNet
    n_dit = sum(p.numel() for p in dit.parameters())
    assert n_dit == 674_834_720  # DiT-XL/2, trainable
    assert n_dit + dit.pos_embed.numel() == 675_129_632  # counting the fixed positional embedding
    # The seed's config: num_attention_heads wins, head width = channels / heads.
    cfg = UNetConfig(**{**SD1_UNET, "num_attention_heads": [5, 10, 20, 20], "use_linear_projection": True})
    assert cfg.heads() == [(5, 64), (10, 64), (20, 64), (20, 64)]
    assert UNetConfig(**SD1_UNET).heads() == [(8, 40), (8, 80), (8, 160), (8, 160)]


@pytest.mark.parametrize("kind", ["unet", "dit", "mmdit"])
@pytest.mark.parametrize("cond_type", ["embedding", "onehot_mlp", "tokens"])
def test_shapes_and_every_parameter_gets_a_gradient(kind, cond_type):
    model = perturb(tiny(kind, cond_type=cond_type))
    x, t, y = torch.randn(3, 4, 16, 16), torch.tensor([1.0, 500.0, 999.0]), torch.tensor([0, 4, 5])
    out = model(x, t, y)
    assert out.shape == x.shape
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_dit_learn_sigma_doubles_channels_and_output_is_zero_at_init():
    model = DiT.from_preset("tiny", learn_sigma=True, num_classes=5, input_size=16, patch_size=2)
    out = model(torch.randn(2, 4, 16, 16), torch.tensor([3.0, 700.0]), torch.tensor([1, 5]))
    assert out.shape == (2, 8, 16, 16)
    assert torch.count_nonzero(out) == 0  # adaLN-Zero + zero final layer


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_condition_changes_output_and_null_id_is_the_unconditional_path(kind):
    model = perturb(tiny(kind)).eval()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([250.0, 250.0])
    with torch.no_grad():
        a = model(x, t, torch.tensor([0, 0]))
        b = model(x, t, torch.tensor([3, 3]))
        null = model(x, t, torch.tensor([5, 5]))
        assert (a - b).abs().max() > 1e-4
        # Training with every condition dropped must be the null-id path the sampler uses for CFG.
        model.train()
        encoder = model.cond_encoder if kind == "unet" else model.y_embedder
        encoder.dropout_prob = 1.0
        dropped = model(x, t, torch.tensor([0, 3]))
    assert torch.allclose(dropped, null, atol=1e-6)


def test_condition_dropout_rate():
    enc = ConditionEncoder(num_classes=31, dim=8, dropout_prob=0.1)
    y = torch.randint(0, 31, (20000,), generator=torch.Generator().manual_seed(0))
    from tinyldm.models.conditioning import drop_ids

    dropped = drop_ids(y, 31, 0.1, torch.Generator().manual_seed(1))
    rate = (dropped == 31).float().mean().item()
    assert abs(rate - 0.1) < 4 * (0.1 * 0.9 / 20000) ** 0.5  # within 4 binomial standard deviations
    enc.eval()
    v_eval, _ = enc(y[:100])
    assert torch.equal(v_eval, enc.embedding_table(y[:100]))  # eval mode never drops


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_sdpa_and_reference_attention_agree(kind, monkeypatch):
    model = perturb(tiny(kind)).eval().double()
    reference = tiny(kind, reference_attention=True).eval().double()
    reference.load_state_dict(model.state_dict())
    x, t, y = torch.randn(2, 4, 16, 16, dtype=torch.float64), torch.tensor([10.0, 900.0]), torch.tensor([1, 2])
    with torch.no_grad():
        fast = model(x, t, y)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", no_sdpa)
        slow = reference(x, t, y)
    assert (fast - slow).abs().max() < 1e-9


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_gradient_checkpointing_changes_nothing(kind):
    x, t, y = torch.randn(1, 4, 16, 16, dtype=torch.float64), torch.tensor([900.0]), torch.tensor([2])
    grads = []
    for ckpt in (False, True):
        model = perturb(tiny(kind, gradient_checkpointing=ckpt, class_dropout_prob=0.0)).train().double()
        model(x, t, y).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-10)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_run_preset_builds_and_old_configs_still_load(backbone):
    with torch.device("meta"):
        for preset in ("tiny", "small", "seed"):  # train_ldm.py --preset
            config = backbone_config(backbone, preset, latent_channels=4, latent_size=32, num_classes=31)
            model = build_backbone(backbone, config)
            old = {k: v for k, v in config.items() if k != "reference_attention"}  # a config.json from before the field
            assert asdict(type(model.config)(**old)) == config
        if backbone == "mmdit":  # the seed MMDiT is matched to the seed DiT (DiT-XL/2) in parameter count
            dit = build_backbone("dit", backbone_config("dit", "seed", 4, 32, 31))
            n_mmdit, n_dit = (sum(p.numel() for p in m.parameters()) for m in (model, dit))
            assert abs(n_mmdit / n_dit - 1) < 0.01


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_tiny_backbone_overfits_eight_latents(kind):
    """ε-loss on 8 fixed (x0, ε, t) triples falls below 10% of its start within 300 Adam steps."""
    model = tiny(kind)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 4, 16, 16, generator=g)
    eps = torch.randn(8, 4, 16, 16, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g).float()
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)[t.long()][:, None, None, None]
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps  # q(x_t | x0), DDPM Eq. 4
    y = torch.arange(8) % 5
    model.train()
    for m in model.modules():
        if isinstance(m, ConditionEncoder):
            m.dropout_prob = 0.0
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(300):
        loss = (model(x_t, t, y) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if loss.item() < 0.1 * losses[0]:
            break
    assert min(losses) < 0.1 * losses[0], f"{kind}: {losses[0]:.3f} → {min(losses):.3f} after {len(losses)} steps"


@pytest.mark.parametrize("make, message", [
    (lambda: DiTConfig(hidden_size=100, num_heads=16), "not divisible by num_heads 16"),
    (lambda: DiTConfig(input_size=30, patch_size=4), "not divisible by patch_size 4"),
    (lambda: UNetConfig(block_out_channels=[320, 650, 1280, 1280]), "650 is not divisible by norm_num_groups"),
    (lambda: UNetConfig(down_block_types=["DownBlock2D"] * 3), "give one per level"),
    (lambda: UNetConfig(cond_type="clip"), "cond_type 'clip' is not supported"),
])
def test_bad_configs_are_explained(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_user_id_out_of_range_is_explained(kind):
    model = tiny(kind).eval()
    with pytest.raises(ValueError, match=r"user id 6 is outside \[0, 5\]"):
        model(torch.randn(1, 4, 16, 16), torch.tensor([1.0]), torch.tensor([6]))
    with pytest.raises(ValueError, match=r"user id -1"):
        model(torch.randn(1, 4, 16, 16), torch.tensor([1.0]), torch.tensor([-1]))
