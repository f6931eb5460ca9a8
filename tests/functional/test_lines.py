"""LiNeS formulas: block scales, the in-place scaling and the merging alpha, by hand."""

import pytest
import torch

from lightning_plugins.functional import lines_scale, merging_alpha, scale_update_


@pytest.mark.parametrize("num_blocks", [1, 2, 5, 12])
@pytest.mark.parametrize(("alpha", "beta"), [(0.3, 0.7), (0.0, 1.0), (1.0, 0.0), (0.5, 2.0)])
def test_lines_scale_is_the_formula(num_blocks, alpha, beta):
    scales = lines_scale(num_blocks, alpha, beta)
    assert scales.dtype == torch.float64 and scales.shape == (num_blocks,)
    for block in range(1, num_blocks + 1):  # 1-based l, as in the paper
        expected = alpha if num_blocks == 1 else alpha + beta * (block - 1) / (num_blocks - 1)
        assert scales[block - 1].item() == pytest.approx(expected, abs=1e-15)


def test_single_task_sweep_keeps_the_last_block_whole():
    for alpha in (0.0, 0.2, 0.6):
        scales = lines_scale(7, alpha, 1 - alpha)
        assert scales[0].item() == alpha and scales[-1].item() == pytest.approx(1.0)


def test_negative_scales_name_alpha_beta_and_the_block():
    with pytest.raises(ValueError, match=r"`alpha`=0.5 and `beta`=-0.75 give block 4 of 4"):
        lines_scale(4, 0.5, -0.75)
    with pytest.raises(ValueError, match=r"`alpha`=-0.1 .* give block 1 of 3"):
        lines_scale(3, -0.1, 1.0)
    assert lines_scale(4, 0.75, -0.75)[-1].item() == 0.0  # zero is allowed
    with pytest.raises(ValueError, match="`num_blocks` must be a positive integer"):
        lines_scale(0, 0.5, 0.5)
    with pytest.raises(TypeError, match="`alpha` must be a number"):
        lines_scale(2, "0.5", 0.5)


def test_scale_update_is_theta_0_plus_lambda_tau():
    gen = torch.Generator().manual_seed(0)
    theta = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    theta_0 = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    expected = [t0 + lam * (t - t0) for t, t0, lam in zip(theta, theta_0, (0.25, 1.5), strict=True)]
    scale_update_(theta, theta_0, [0.25, 1.5])
    for got, want in zip(theta, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_scale_update_low_precision_and_other_reference_dtype():
    theta = [torch.tensor([1.0, 3.0, -2.0], dtype=torch.bfloat16)]
    theta_0 = [torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)]
    scale_update_(theta, theta_0, [0.5])
    assert theta[0].dtype == torch.bfloat16
    assert theta[0].tolist() == [0.5, 2.0, 0.0]
    exact = [torch.tensor([0.1, 0.7]), torch.tensor([0.3])]
    scale_update_(exact, [torch.tensor([0.2, 0.5]), torch.tensor([0.9])], [1.0, 0.0])
    assert exact[0].tolist() == torch.tensor([0.1, 0.7]).tolist()  # scale 1: bitwise kept
    assert exact[1].tolist() == torch.tensor([0.9]).tolist()  # scale 0: the reference
    unchanged = [torch.tensor([4.0])]
    scale_update_(unchanged, [torch.tensor([4.0])], [0.3])  # tau = 0 stays exact
    assert unchanged[0].item() == 4.0


def test_scale_update_bad_input():
    with pytest.raises(ValueError, match="one entry per tensor"):
        scale_update_([torch.zeros(2)], [torch.zeros(2)], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"`references`\[0\] has shape \(3,\)"):
        scale_update_([torch.zeros(2)], [torch.zeros(3)], [0.5])


def test_merging_alpha_by_hand():
    gen = torch.Generator().manual_seed(1)
    taus = [[torch.randn(4, 3, generator=gen), torch.randn(2, generator=gen)] for _ in range(3)]
    merged = [0.4 * sum(t[i] for t in taus) for i in range(2)]  # task arithmetic, 0.4
    numerator = sum(
        sum(float(x.abs()) for x in (taus[0][i] + taus[1][i] + taus[2][i]).flatten())
        for i in range(2)
    )
    denominator = sum(float(x.abs()) for m in merged for x in m.flatten())
    expected = numerator / denominator / 3
    assert merging_alpha(taus, merged) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1 / (0.4 * 3))  # task arithmetic: 1 / (coefficient T)
    summed = [[taus[0][i] + taus[1][i] + taus[2][i] for i in range(2)]]
    assert merging_alpha(summed, merged, num_tasks=3) == pytest.approx(expected, rel=1e-6)


def test_merging_alpha_bad_input():
    tau = [torch.ones(2)]
    with pytest.raises(ValueError, match="at least one task vector"):
        merging_alpha([], tau)
    with pytest.raises(ValueError, match=r"`task_vectors`\[1\] must hold tensors of the shapes"):
        merging_alpha([tau, [torch.ones(3)]], tau)
    with pytest.raises(ValueError, match="zero L1 norm"):
        merging_alpha([tau], [torch.zeros(2)])
    with pytest.raises(ValueError, match="`num_tasks` must be a positive integer"):
        merging_alpha([tau], tau, num_tasks=0)
