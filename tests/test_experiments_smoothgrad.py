"""smoothgrad (paper A.1): noise 0 is the vanilla profile, the average against a plain loop, keys."""
from __future__ import annotations

import pytest
import torch

from psal_widgets.kernels.filters import FilterIndex
from psal_widgets.kernels.profiles import filter_profiles
from psal_widgets.kernels.smoothgrad import noisy_copies, smoothgrad_profile

from .conftest import VAL800, make_tiny, needs_data
from .experiment_helpers import run_tiny


def test_noise_zero_is_the_vanilla_profile_and_the_average_matches_a_loop():
    net = make_tiny()
    index = FilterIndex(net)
    x = torch.randn(3, 10, 10, generator=torch.Generator().manual_seed(0))
    vanilla = filter_profiles(net, x.unsqueeze(0), [1], index=index, mode="raw").raw[0].double()
    sg, _ = smoothgrad_profile(net, x, 1, index=index, n_samples=4, noise=0.0)
    torch.testing.assert_close(sg, vanilla, rtol=1e-6, atol=1e-12)
    # Noise 0.2: the mean of the profiles of the very same noisy copies, one by one.
    copies = noisy_copies(x, n_samples=5, noise=0.2, generator=torch.Generator().manual_seed(3))
    assert float((copies - x).std()) == pytest.approx(0.2 * float(x.max() - x.min()), rel=0.15)
    sg, logits = smoothgrad_profile(net, x, 1, index=index, n_samples=5, noise=0.2,
                                    generator=torch.Generator().manual_seed(3), batch_size=2)
    loop = torch.stack([filter_profiles(net, c.unsqueeze(0), [1], index=index, mode="raw").raw[0] for c in copies])
    torch.testing.assert_close(sg, loop.double().mean(0), rtol=1e-5, atol=1e-10)
    assert logits.shape == (5, 3)
    assert not torch.allclose(sg, vanilla)


def test_smoothgrad_experiment(tmp_path):
    res, out, _ = run_tiny("smoothgrad", tmp_path / "a", noise=[0.0, 0.3], n_samples=3, top_k=4)
    for key in ("cosine_similarity", "cosine_similarity_raw", "top_k_overlap", "noisy_prediction_agreement",
                "mean_saliency_correct_vanilla", "mean_saliency_incorrect_vanilla",
                "mean_saliency_correct_smoothgrad", "mean_saliency_incorrect_smoothgrad", "n_correct", "n_incorrect"):
        assert key in res
    assert res["n_correct"] + res["n_incorrect"] == 8
    # Noise 0: identical profiles.
    assert res["cosine_similarity"][0]["mean"] == pytest.approx(1.0, abs=1e-9)
    assert res["top_k_overlap"][0]["mean"] == 1.0
    assert res["noisy_prediction_agreement"][0] == 1.0
    assert res["mean_saliency_incorrect_smoothgrad"][0] == pytest.approx(res["mean_saliency_incorrect_vanilla"])
    assert res["cosine_similarity"][1]["mean"] < 1.0
    assert (out / "smoothgrad.png").is_file() and (out / "smoothgrad.html").is_file()


@pytest.mark.slow
@pytest.mark.data
@needs_data(VAL800)
def test_smoothgrad_agrees_with_vanilla_on_real_images(tmp_path, default_explainer):
    """Paper A.1: with little noise SmoothGrad parameter saliency is consistent with the vanilla profile."""
    from psal_widgets.experiments import run_experiment

    res = run_experiment("smoothgrad", data=VAL800 / "labels.csv", explainer=default_explainer, limit=8,
                         out=tmp_path, progress=False, noise=[0.01], n_samples=4)
    assert res["cosine_similarity"][0]["mean"] > 0.8
    assert res["top_k_overlap"][0]["mean"] > 0.5
