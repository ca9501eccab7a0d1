"""Issue #25: per-model state is passed, never looked up by the model's identity; the caller's model comes back as it
was given; schemes are resolved and shape-checked once per audit; one per-batch step."""

from __future__ import annotations

import copy

import pytest
import torch

from ppp_audit.auditor import Auditor, BatchStep
from ppp_audit.config import AuditConfig
from ppp_audit.engine import audit
from ppp_audit.models import build_model

SE_MODEL = "test_efficientnet"  # squeeze-excitation gates: the window pass must take the crop's statistics
SETTINGS = dict(pretrained=False, num_images=4, batch_size=4, input_size=64, margin=32, device="cpu")


@pytest.fixture(scope="module")
def se_auditor():
    return Auditor(AuditConfig(SE_MODEL, paddings=["reflect"], **SETTINGS))


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy whose squeeze-excitation gates differ (as a fine-tuned student's do)."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in other.named_parameters():
            if ".se." in name:
                parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
    return other


def _strengths(measurement) -> list[list[float]]:
    return [[layer.stats.strength for layer in result.layers] for result in measurement.results]


def test_each_model_is_measured_with_its_own_state_even_when_ids_repeat(se_auditor, monkeypatch):
    """CPython may give a new student the id of a deleted one; forced here for every object. Each model must still
    be matched through its own squeeze-excitation modules, so measuring it through the auditor gives exactly what
    an auditor of its own gives."""
    first, second = _perturbed(se_auditor.model, 1), _perturbed(se_auditor.model, 2)
    monkeypatch.setattr("ppp_audit.auditor.id", lambda obj: 0, raising=False)
    se_auditor.measure(schemes=["native"], model=first)
    state = se_auditor.model_state(second)
    assert state.context.modules and all(any(m is module for m in second.modules())
                                         for module in state.context.modules.values())
    through_auditor = se_auditor.measure(schemes=["native"], state=state)
    monkeypatch.undo()
    own = Auditor(se_auditor.config, model=second, info=se_auditor.info).measure(schemes=["native"])
    assert _strengths(through_auditor) == _strengths(own)
    assert _strengths(through_auditor) != _strengths(se_auditor.measure(schemes=["native"], model=first))


def test_the_caller_s_model_comes_back_as_it_was_given():
    model, info = build_model("resnet10t", pretrained=False, device=torch.device("cpu"), seed=3)
    model.train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    pads = [(m.padding, m.padding_mode) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    audit(AuditConfig("resnet10t", paddings=["reflect", "circular"], **SETTINGS), model=model, info=info)
    assert model.training, "the audit left the caller's model in eval mode"
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert [(m.padding, m.padding_mode) for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == pads
    assert all(p.device.type == "cpu" and p.is_contiguous() for p in model.parameters())


def test_schemes_are_resolved_once_and_batches_run_no_shape_probe(monkeypatch):
    """A scheme that changes map sizes is checked with one traced forward at set-up, not once per batch."""
    import ppp_audit.paddings.patcher as patcher

    config = AuditConfig("resnet10t", paddings=["reflect"], **SETTINGS)
    auditor = Auditor(config)
    scheme = auditor.paddings["reflect"]
    probes = []
    original = patcher._probe
    monkeypatch.setattr(patcher, "_probe", lambda *a, **k: (probes.append(1), original(*a, **k))[1])
    monkeypatch.setattr(type(scheme), "keeps_shape", False, raising=False)
    made = []
    monkeypatch.setattr("ppp_audit.paddings.registry.PADDINGS.entry",
                        lambda name: made.append(name) or pytest.fail("a scheme was resolved again per batch"))
    auditor.measure()
    assert not probes and not made


def test_one_step_gives_the_loop_s_features(se_auditor):
    """The step the loop runs, called on its own (as the benchmarks do): the crop's features and their reference
    blocks, the reference being the window pass's features where the crop lies."""
    windows = se_auditor.normalise(torch.stack([se_auditor.image_source().window(i, se_auditor.window)
                                                for i in range(2)]))
    step = BatchStep(se_auditor, se_auditor.state, se_auditor.partial())
    with torch.inference_mode():
        features = step(windows, "native")
        again = step(windows, "native")
    assert len(features.crop) == len(features.reference) == len(se_auditor.taps.names)
    assert all(a.shape == b.shape for a, b in zip(features.crop, features.reference))
    assert all(not torch.equal(a, b) for a, b in zip(features.crop, features.reference)), "padding changed nothing"
    assert all(torch.equal(a, b) for a, b in zip(features.crop, again.crop))
    assert step.strides == [float(s) for s in se_auditor.taps.strides]


def test_the_plan_is_one_frozen_value_that_prints_what_the_set_up_decided():
    import dataclasses

    import timm

    from ppp_audit.config import AuditConfig
    from ppp_audit.models import ModelInfo

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False).eval()
    info = ModelInfo(name="resnet10t", architecture="resnet10t", weights="random-init", input_size=64,
                     mean=(0.5,) * 3, std=(0.25,) * 3, crop_pct=1.0)
    config = AuditConfig(model="resnet10t", paddings=["reflect"], input_size=64, margin=32, device="cpu")
    auditor = Auditor(config, model=model, info=info)
    plan = auditor.plan
    assert auditor.partial() == list(plan.margin.partial)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.size = 32
    assert plan.schemes == ("native", "reflect") and plan.window == plan.size + 2 * plan.margin.margin == 128
    assert plan.crop_maps is not None and len(plan.crop_maps) == len(plan.layers)
    native, reflect = dict((name, (replaced, left)) for name, replaced, left in plan.patched).values()
    assert native[0] == 0 and reflect[0] > 0  # the null scheme replaces nothing; reflect replaces the sites
    text = str(plan)
    assert "margin 32 px chosen by --margin" in text and "reflect (" in text and plan.layers[-1] in text
    assert Auditor(config, model=model, info=info).plan == plan  # the same set-up decides the same
