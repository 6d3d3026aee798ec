"""MMDiT: shapes, zero init, RoPE relativity, joint attention, the null id, SDPA parity, configs, flow overfitting."""

import json
from dataclasses import asdict

import pytest
import torch
from test_backbones import no_sdpa, perturb

from tinyldm.layers import apply_rope, rope_angles
from tinyldm.models.mmdit import PRESETS, MMDiT, MMDiTConfig


def tiny(**kw):
    torch.manual_seed(0)
    return MMDiT.from_preset("tiny", num_classes=5, **{"input_size": 16, "patch_size": 2, **kw})  # 16×16×4: fast



# Shapes and gradients for every cond_type: tests/test_backbones.py (parametrised over all backbones).


def test_output_is_zero_at_init_and_presets_round_trip_through_json():
    model = tiny()
    out = model(torch.randn(2, 4, 16, 16), torch.tensor([3.0, 700.0]), torch.tensor([1, 5]))
    assert torch.count_nonzero(out) == 0  # adaLN-Zero + zero final layer
    for preset in PRESETS.values():
        cfg = MMDiTConfig(**preset)
        assert MMDiTConfig(**json.loads(json.dumps(asdict(cfg)))) == cfg  # config.json describes the model
    assert "2 double + 2 single" in model.summary()


def test_rope_is_a_rotation_by_the_angles_and_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    axes_dim, T = (8, 8), 12
    q = torch.randn(2, 3, T, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, 3, T, 16, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 20, (T, 2), generator=g)

    def scores(p):
        angles = rope_angles(p, axes_dim, 10000.0)
        return apply_rope(q, angles.cos(), angles.sin()) @ apply_rope(k, angles.cos(), angles.sin()).transpose(-2, -1)

    # The rotation is multiplication of the pairs (x_2i + i·x_2i+1) by e^{i·angle} (independent complex reference).
    angles = rope_angles(pos, axes_dim, 10000.0)
    expected = torch.view_as_real(torch.view_as_complex(q.reshape(2, 3, T, 8, 2).contiguous()) * torch.polar(
        torch.ones_like(angles), angles)).reshape(q.shape)
    assert torch.allclose(apply_rope(q, angles.cos(), angles.sin()), expected, atol=1e-12)
    # Axis 0 (height) owns the first axes_dim[0]/2 angles, axis 1 (width) the rest; ω_0 = θ⁰ = 1.
    assert torch.equal(angles[:, 0], pos[:, 0].double()) and torch.equal(angles[:, 4], pos[:, 1].double())
    # Shifting every query and key by the same (row, column) offset leaves the scores unchanged ...
    assert torch.allclose(scores(pos), scores(pos + torch.tensor([7, -3])), atol=1e-10)
    # ... while moving tokens relative to each other changes them, and position 0 is no rotation at all.
    moved = pos.clone()
    moved[0] += torch.tensor([1, 0])
    assert (scores(pos) - scores(moved)).abs().max() > 1e-3
    zero = rope_angles(torch.zeros(T, 2, dtype=torch.long), axes_dim, 10000.0)
    assert torch.equal(apply_rope(q, zero.cos(), zero.sin()), q)


def test_condition_tokens_are_unrotated_and_image_tokens_sit_on_the_grid():
    model = tiny()
    K, grid = model.config.num_txt_tokens, 8
    assert torch.equal(model.rope_cos[:K], torch.ones_like(model.rope_cos[:K]))
    assert torch.equal(model.rope_sin[:K], torch.zeros_like(model.rope_sin[:K]))
    n = torch.arange(grid * grid)  # row-major image tokens: the first angle of each axis is the position itself
    h0 = model.config.axes_dim[0] // 2
    assert torch.allclose(model.rope_sin[K:, 0], torch.sin((n // grid).float()))
    assert torch.allclose(model.rope_sin[K:, h0], torch.sin((n % grid).float()))


def test_joint_attention_mixes_the_streams():
    model = perturb(tiny()).eval()
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([250.0, 250.0]), torch.tensor([0, 0])
    with torch.no_grad():
        a = model(x, t, y)
        assert (a - model(x, t, torch.tensor([3, 3]))).abs().max() > 1e-4  # another user, another output
        # Change user 0's tokens without changing their mean: the pooled vector (hence every adaLN) is the same,
        # so any change in the image output has come through attention to the condition tokens.
        vec_before, _ = model.y_embedder(y)
        g = torch.Generator().manual_seed(2)
        delta = torch.randn(model.config.num_cond_tokens, model.config.hidden_size, generator=g)  # (K, D)
        model.y_embedder.tokens[0] += 0.5 * (delta - delta.mean(dim=0))
        vec_after, _ = model.y_embedder(y)
        assert torch.allclose(vec_before, vec_after, atol=1e-6)
        assert (a - model(x, t, y)).abs().max() > 1e-4


def test_null_id_is_the_unconditional_path():
    model = perturb(tiny()).eval()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([250.0, 250.0])
    with torch.no_grad():
        null = model(x, t, torch.tensor([5, 5]))
        model.train()
        model.y_embedder.dropout_prob = 1.0  # training with every condition dropped must be the sampler's null path
        dropped = model(x, t, torch.tensor([0, 3]))
    assert torch.allclose(dropped, null, atol=1e-6)


def test_sdpa_and_reference_attention_agree_and_checkpointing_changes_nothing(monkeypatch):
    model = perturb(tiny()).eval().double()
    reference = tiny(reference_attention=True).eval().double()
    reference.load_state_dict(model.state_dict())
    x, t, y = torch.randn(2, 4, 16, 16, dtype=torch.float64), torch.tensor([10.0, 900.0]), torch.tensor([1, 2])
    with torch.no_grad():
        fast = model(x, t, y)
        with monkeypatch.context() as m:
            m.setattr(torch.nn.functional, "scaled_dot_product_attention", no_sdpa)
            slow = reference(x, t, y)
    assert (fast - slow).abs().max() < 1e-9
    model.train()
    model.y_embedder.dropout_prob = 0.0
    grads = []
    for ckpt in (False, True):
        model.config.gradient_checkpointing = ckpt
        model.zero_grad()
        model(x, t, y).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-10)


@pytest.mark.parametrize("make, message", [
    (lambda: MMDiTConfig(hidden_size=100, num_heads=16), "not divisible by num_heads 16"),
    (lambda: MMDiTConfig(hidden_size=128, num_heads=4, axes_dim=(16, 8)), r"= 32; choose e.g. \(16, 16\)"),
    (lambda: MMDiTConfig(input_size=30, patch_size=4), "not divisible by patch_size 4"),
    (lambda: MMDiTConfig(depth_single=0), "depth_single 0"),
    (lambda: MMDiTConfig(hidden_size=96, num_heads=32), "is odd"),
    (lambda: MMDiTConfig(cond_type="clip"), "cond_type 'clip' is not supported"),
])
def test_bad_configs_are_explained_in_one_line(make, message):
    with pytest.raises(ValueError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_user_id_out_of_range_is_explained():
    model = tiny().eval()
    with pytest.raises(ValueError, match=r"user id 6 is outside \[0, 5\]"):
        model(torch.randn(1, 4, 16, 16), torch.tensor([1.0]), torch.tensor([6]))


def test_tiny_mmdit_overfits_eight_latents_with_the_flow_loss():
    """Rectified flow: x_t = (1 − t) x0 + t ε, target u = ε − x0, network time t·1000; on 8 fixed (x0, ε, t)
    triples the loss falls below 10% of its start within 300 Adam steps."""
    model = tiny(class_dropout_prob=0.0).train()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 4, 16, 16, generator=g)
    eps = torch.randn(8, 4, 16, 16, generator=g)
    t = torch.rand(8, generator=g)[:, None, None, None]  # t ∈ [0, 1)
    x_t = (1 - t) * x0 + t * eps  # straight path from data (t = 0) to noise (t = 1)
    u = eps - x0  # dx_t/dt
    y = torch.arange(8) % 5
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(300):
        loss = (model(x_t, t.flatten() * 1000, y) - u).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if loss.item() < 0.1 * losses[0]:
            break
    assert min(losses) < 0.1 * losses[0], f"{losses[0]:.3f} → {min(losses):.3f} after {len(losses)} steps"
