"""VectorQuantizer against brute force and closed forms; VQModel shapes, gradients, round trips and config errors."""

import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file, save_file

from tinyldm.models.vq import PRESETS, VectorQuantizer, VQModel, VQModelConfig


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def quantizer_with_codes(codes: torch.Tensor, **kwargs) -> VectorQuantizer:
    vq = VectorQuantizer(codes.shape[0], codes.shape[1], **kwargs)
    with torch.no_grad():
        vq.embedding.weight.copy_(codes)
        if vq.use_ema:
            vq.ema_embed_sum.copy_(codes)
    return vq


def encodings_of(codes: torch.Tensor, assignment: list[int]) -> torch.Tensor:
    """A (1, D, 1, N) map whose n-th vector is exactly code assignment[n]."""
    return codes[assignment].T[None, :, None, :]


@pytest.mark.parametrize("l2_normalize", [False, True])
def test_nearest_code_matches_brute_force(l2_normalize):
    codes, z = randn(16, 4, seed=0), randn(2, 4, 8, 8, seed=1)
    vq = quantizer_with_codes(codes, l2_normalize=l2_normalize).eval()
    _, indices, _, _ = vq(z)
    assert indices.shape == (2, 8, 8) and indices.dtype == torch.long
    z_flat = z.permute(0, 2, 3, 1).reshape(-1, 4)  # (N, D)
    if l2_normalize:  # nearest in angle = largest cosine similarity
        cos = torch.nn.functional.cosine_similarity(z_flat[:, None], codes[None], dim=-1)  # (N, K)
        chosen = cos.gather(1, indices.reshape(-1, 1)).squeeze(1)
        torch.testing.assert_close(chosen, cos.max(dim=1).values)
    else:
        dist = ((z_flat[:, None] - codes[None]) ** 2).sum(-1)  # (N, K), brute force
        chosen = dist.gather(1, indices.reshape(-1, 1)).squeeze(1)
        torch.testing.assert_close(chosen, dist.min(dim=1).values)


def test_forward_value_is_the_code_and_gradient_passes_straight_through():
    codes = randn(8, 3, seed=0)
    vq = quantizer_with_codes(codes).eval()
    z = randn(2, 3, 4, 4, seed=1).requires_grad_(True)
    z_q, indices, _, _ = vq(z)
    torch.testing.assert_close(z_q, codes[indices].permute(0, 3, 1, 2))
    upstream = randn(2, 3, 4, 4, seed=2)
    (z_q * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)  # ∂z_q/∂z = I under the straight-through estimator


def test_quantizer_loss_and_its_gradients():
    codes, beta = randn(8, 3, seed=0), 0.25
    vq = quantizer_with_codes(codes, beta=beta).eval()
    z = randn(2, 3, 4, 4, seed=1).requires_grad_(True)
    z_q, _, loss, _ = vq(z)
    e = z_q.detach()
    assert loss.item() == pytest.approx((1 + beta) * (z - e).pow(2).mean().item(), rel=1e-6)
    loss.backward()
    torch.testing.assert_close(z.grad, 2 * beta * (z - e).detach() / z.numel())
    assert vq.embedding.weight.grad is not None  # the codebook term trains the codes


def test_ema_update_moves_codes_to_their_cluster_means():
    codes = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    z = encodings_of(codes, [0, 0, 0, 0]) + randn(1, 2, 1, 4, seed=1) * 0.5  # all assigned to code 0
    cluster_mean = z.mean(dim=(0, 2, 3))
    for gamma in (0.0, 0.5):
        vq = quantizer_with_codes(codes, use_ema=True, ema_decay=gamma, restart_dead_codes=False).train()
        _, _, loss, _ = vq(z)
        e0 = vq.embedding.weight[0]
        if gamma == 0.0:  # no memory: the code is its cluster mean, up to the ε of the Laplace smoothing
            torch.testing.assert_close(e0, cluster_mean, atol=1e-4, rtol=1e-4)
        assert (e0 - cluster_mean).norm() < (codes[0] - cluster_mean).norm()
        assert not vq.embedding.weight.requires_grad
        assert loss.item() == pytest.approx(0.25 * (z - codes[0][None, :, None, None]).pow(2).mean().item())
    vq = quantizer_with_codes(codes, use_ema=True, ema_decay=0.5).eval()
    vq(z)
    assert torch.equal(vq.embedding.weight, codes)  # no updates in eval mode


def test_dead_codes_are_restarted_from_batch_encodings():
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])  # code 3 is never nearest
    z = encodings_of(codes, [0, 1, 2, 0, 1, 2]) + randn(1, 2, 1, 6, seed=1) * 0.1
    z_flat = z[0, :, 0, :].T  # (6, 2)
    vq = quantizer_with_codes(codes, dead_code_threshold=2).train()
    vq(z, generator=torch.Generator().manual_seed(0))
    assert torch.equal(vq.embedding.weight[3], codes[3])  # unused for 1 step < threshold: kept
    vq(z, generator=torch.Generator().manual_seed(0))
    revived = vq.embedding.weight[3].detach()
    assert (revived - z_flat).norm(dim=1).min() == 0  # now one of the batch's encodings
    assert torch.equal(vq.embedding.weight[:3], codes[:3]) and vq.steps_unused[3] == 0
    _, indices, _, _ = vq(torch.cat([z, revived[None, :, None, None]], dim=3))
    assert (indices == 3).any()  # and usable

    # Deterministic given the generator; no restarts in eval mode or when switched off.
    twin = quantizer_with_codes(codes, dead_code_threshold=2).train()
    for _ in range(2):
        twin(z, generator=torch.Generator().manual_seed(0))
    assert torch.equal(twin.embedding.weight, vq.embedding.weight)
    for vq in (quantizer_with_codes(codes, dead_code_threshold=1).eval(),
               quantizer_with_codes(codes, restart_dead_codes=False).train()):
        vq(z)
        assert torch.equal(vq.embedding.weight, codes)


def test_perplexity_and_usage_of_uniform_code_use():
    codes = randn(8, 3, seed=0) * 10
    vq = quantizer_with_codes(codes).eval()
    _, _, _, stats = vq(encodings_of(codes, [0, 1, 2, 3, 4] * 3))  # 5 of 8 codes, equally often
    assert stats["perplexity"].item() == pytest.approx(5.0, rel=1e-5)
    assert stats["usage"].item() == pytest.approx(5 / 8)
    _, _, _, stats = vq(encodings_of(codes, [6] * 4))
    assert stats["perplexity"].item() == pytest.approx(1.0) and stats["usage"].item() == pytest.approx(1 / 8)


def test_bf16_input_keeps_its_dtype_and_its_codes():
    codes, z = randn(16, 4, seed=0), randn(1, 4, 4, 4, seed=1).bfloat16()
    vq = quantizer_with_codes(codes).eval()
    z_q, indices, _, _ = vq(z)
    assert z_q.dtype == torch.bfloat16
    assert torch.equal(indices, vq(z.float())[1])


def test_tiny_vqmodel_shapes():
    model = VQModel.from_preset("tiny").eval()
    x = randn(2, 3, 64, 64)
    z_q, indices, loss = model.encode(x)
    assert z_q.shape == (2, 3, 16, 16) and indices.shape == (2, 16, 16) and indices.dtype == torch.long
    assert loss.dim() == 0
    x_hat, _, stats = model(x)
    assert x_hat.shape == x.shape and set(stats) == {"perplexity", "usage"}
    torch.testing.assert_close(z_q, model.quantize.lookup(indices))  # z + (z_q − z) rounds: equal up to ulps
    torch.testing.assert_close(model.decode_indices(indices), model.decode(model.quantize.lookup(indices)))
    assert model.decode(z_q + 1e-4, quantize=True).shape == x.shape


def test_decode_with_quantize_snaps_to_codes_without_updating_them():
    model = VQModel.from_preset("tiny", dead_code_threshold=1).train()  # a restart would fire on any forward
    codebook = model.quantize.embedding.weight.detach().clone()
    z = randn(1, 3, 4, 4)
    x_hat = model.decode(z, quantize=True)
    torch.testing.assert_close(x_hat, model.decode(model.quantize.lookup(model.quantize.nearest_code(z))))
    assert torch.equal(model.quantize.embedding.weight, codebook)


def test_seed_vqmodel_shapes_and_parameter_count_on_meta():
    with torch.device("meta"):
        model = VQModel.from_preset("seed")
        z = model.quant_conv(model.encoder(torch.empty(1, 3, 256, 256)))
    c = model.config
    assert z.shape == (1, c.vq_embed_dim, 32, 32)  # f = 8
    assert model.quantize.embedding.weight.shape == (c.num_vq_embeddings, c.vq_embed_dim)
    assert model.decoder.conv_in.weight.shape == (512, c.latent_channels, 3, 3)
    # The SD VAE (83,653,863) with single-width encoder output and quant_conv (c = 4 instead of 2c = 8) plus the
    # K × D codebook.
    sd_vae, K, D = 83_653_863, c.num_vq_embeddings, c.vq_embed_dim
    halved = (512 * 8 * 9 + 8) - (512 * 4 * 9 + 4) + (8 * 8 + 8) - (4 * 4 + 4)
    assert sum(p.numel() for p in model.parameters()) == sd_vae - halved + K * D


@pytest.mark.parametrize("use_ema", [False, True])
def test_every_trainable_parameter_receives_a_gradient(use_ema):
    model = VQModel.from_preset("tiny", use_ema=use_ema).train()
    x = randn(2, 3, 32, 32)  # fully convolutional: a smaller image exercises the same parameters
    x_hat, loss, _ = model(x, generator=torch.Generator().manual_seed(0))
    ((x_hat - x).abs().mean() + loss).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.quantize.embedding.weight.requires_grad == (not use_ema)


def test_state_dict_round_trip_gives_identical_outputs(tmp_path):
    kwargs = dict(use_ema=True, l2_normalize=True, dead_code_threshold=1)
    model = VQModel.from_preset("tiny", **kwargs).train()
    model(randn(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))  # moves codes and EMA buffers
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    loaded = VQModel.from_preset("tiny", **kwargs)
    loaded.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert torch.equal(loaded.quantize.ema_embed_sum, model.quantize.ema_embed_sum)
    x = randn(2, 3, 32, 32, seed=1)
    with torch.no_grad():
        a, b = model.eval()(x), loaded.eval()(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_keyword_names_verbatim_equal_the_config_and_it_survives_json():
    config = VQModel(**PRESETS["tiny"]).config
    assert config == VQModelConfig(**PRESETS["tiny"])
    assert VQModelConfig(**json.loads(json.dumps(asdict(config)))) == config  # config.json round trip
    assert VQModelConfig(latent_channels=5).vq_embed_dim == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(block_out_channels=[32, 48, 64, 64], norm_num_groups=32), "norm_num_groups=16"),
        (dict(down_block_types=["DownEncoderBlock2D"] * 2), "give one per level"),
        (dict(up_block_types=["AttnUpDecoderBlock2D"] * 4), "only 'UpDecoderBlock2D'"),
        (dict(sample_size=100), "multiple of 8"),
        (dict(act_fn="tanh"), "act_fn"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(num_vq_embeddings=0), "num_vq_embeddings"),
        (dict(beta=-0.1), "beta"),
    ],
)
def test_bad_configs_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VQModelConfig(**kwargs)


def test_bad_construction_calls():
    with pytest.raises(ValueError, match="not both"):
        VQModel(VQModelConfig(), latent_channels=4)
    with pytest.raises(ValueError, match="unknown preset"):
        VQModel.from_preset("huge")
    with pytest.raises(ValueError, match="set vq_embed_dim to 5"):
        VectorQuantizer(8, 3)(torch.zeros(1, 5, 2, 2))


def test_latent_interface_is_the_continuous_encoding_and_a_quantising_decoder():
    torch.manual_seed(0)
    vq = VQModel.from_preset("tiny", sample_size=16).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z, std = vq.latent_moments(x)
    assert torch.equal(z, vq.quant_conv(vq.encoder(x))) and torch.equal(std, torch.zeros_like(z))
    codes = vq.quantize.lookup(vq.quantize.nearest_code(z))  # (B, D, h, w) the nearest codes
    assert torch.equal(vq.decode_latent(z), vq.decode(codes))
    assert torch.equal(vq.decode_latent(z + 1e-4 * torch.randn_like(z)), vq.decode(codes))  # a nearby sample too
    z_q, _, _ = vq.encode(x)  # straight-through z + (z_q − z): the same codes up to float rounding
    torch.testing.assert_close(vq.decode_latent(z), vq.decode(z_q), rtol=0, atol=1e-5)
