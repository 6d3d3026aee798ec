"""Building blocks: attention equals its written-out formula, time conditioning matters, gradients reach everything."""

import math

import pytest
import torch

from tinyldm.layers import (
    Attention,
    Downsample,
    FeedForward,
    ResnetBlock,
    SpatialTransformer,
    TimestepEmbedding,
    Upsample,
    timestep_embedding,
)


def naive_attention(attn: Attention, x, context=None, mask=None):
    """softmax(QKᵀ/√d)V per head with explicit loops: an independent reference, not the module's own code."""
    context = x if context is None else context
    q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
    B, T, _ = q.shape
    S, d = k.shape[1], attn.dim_head
    out = torch.zeros(B, T, attn.heads * d, dtype=x.dtype)
    for b in range(B):
        for h in range(attn.heads):
            sl = slice(h * d, (h + 1) * d)
            for t in range(T):
                scores = torch.stack([q[b, t, sl] @ k[b, s, sl] / math.sqrt(d) for s in range(S)])
                if mask is not None:
                    scores = torch.where(mask[b], scores, torch.tensor(float("-inf"), dtype=x.dtype))
                w = torch.exp(scores - scores.max())
                w = w / w.sum()
                out[b, t, sl] = (w[:, None] * v[b, :, sl]).sum(0)
    return attn.to_out(out)


@pytest.mark.parametrize("case", ["self", "cross", "masked"])
@pytest.mark.parametrize("reference", [False, True])
def test_attention_matches_explicit_formula(case, reference):
    torch.manual_seed(0)
    ctx_dim = 6 if case != "self" else None
    attn = Attention(8, context_dim=ctx_dim, heads=2, dim_head=4, reference=reference).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    context = torch.randn(2, 7, 6, dtype=torch.float64) if case != "self" else None
    mask = None
    if case == "masked":
        mask = torch.rand(2, 7) > 0.4
        mask[:, 0] = True  # at least one key per row
    got = attn(x, context=context, mask=mask)
    want = naive_attention(attn, x, context, mask)
    assert (got - want).abs().max().item() < 1e-6


def test_masked_keys_have_no_influence():
    torch.manual_seed(0)
    attn = Attention(8, context_dim=8, heads=2, dim_head=4)
    x, ctx = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    mask = torch.tensor([[True, True, False, False, True]])
    ctx2 = ctx.clone()
    ctx2[:, 2:4] = 100 * torch.randn(1, 2, 8)  # change only the masked keys
    assert torch.allclose(attn(x, ctx, mask), attn(x, ctx2, mask), atol=1e-6)


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 3.0, 17.5])
    emb = timestep_embedding(t, 8, max_period=10000.0)
    omega = torch.tensor([10000.0 ** (-i / 4) for i in range(4)])
    want = torch.cat([torch.cos(t[:, None] * omega), torch.sin(t[:, None] * omega)], dim=1)
    assert torch.allclose(emb, want, atol=1e-6)
    assert timestep_embedding(t, 7).shape == (3, 7)


@pytest.mark.parametrize("norm", ["default", "scale_shift"])
def test_resnet_time_conditioning_changes_output(norm):
    torch.manual_seed(0)
    block = ResnetBlock(16, 32, temb_channels=12, groups=8, time_embedding_norm=norm)
    x = torch.randn(2, 16, 8, 8)
    temb = TimestepEmbedding(12, 12)
    y1 = block(x, temb(torch.tensor([1.0, 1.0])))
    y2 = block(x, temb(torch.tensor([500.0, 500.0])))
    assert y1.shape == (2, 32, 8, 8)
    assert (y1 - y2).abs().max() > 1e-3


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    temb = TimestepEmbedding(16, 32)
    res = ResnetBlock(16, 32, temb_channels=32, groups=8, time_embedding_norm="scale_shift")
    st = SpatialTransformer(32, heads=2, dim_head=8, context_dim=12, groups=8, use_linear_projection=True)
    down, up, ff = Downsample(32, padding=0), Upsample(32), FeedForward(32, glu=False)
    x, ctx = torch.randn(2, 16, 8, 8), torch.randn(2, 3, 12)
    h = st(res(x, temb(torch.tensor([3.0, 9.0]))), context=ctx)
    h = up(down(h))
    out = ff(h.flatten(2).transpose(1, 2))
    out.square().mean().backward()
    for module in (temb, res, st, down, up, ff):
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{type(module).__name__}.{name} got no gradient"


def test_shapes_and_resampling():
    x = torch.randn(2, 8, 16, 16)
    assert Downsample(8, padding=0)(x).shape == (2, 8, 8, 8)
    assert Downsample(8, padding=1)(x).shape == (2, 8, 8, 8)
    assert Upsample(8)(x).shape == (2, 8, 32, 32)
    st = SpatialTransformer(8, heads=2, dim_head=4, groups=4)  # conv projections, self-attention only
    assert st(x).shape == x.shape


def test_bad_group_count_is_explained():
    with pytest.raises(ValueError, match="not divisible by norm_num_groups"):
        ResnetBlock(48, 48, groups=32)
