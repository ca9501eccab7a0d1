"""PPP repair (docs/repair.md): the consistency term, the comparison with a plain fine-tune, tiling consistency.

Small and fast: resnet10t at 64 px for the plumbing, hand-built models of a few 1x1 convolutions at 32 px for the
known answers.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from ppp_audit.engine import AuditConfig
from ppp_audit.errors import PPPAuditError
from ppp_audit.models import FeatureTaps, ModelInfo

from cli_helpers import fails

TINY = dict(num_images=8, batch_size=8, input_size=64, margin=32, seed=0)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _info(name: str, size: int) -> ModelInfo:
    return ModelInfo(name=name, architecture=name, weights="random-init", input_size=size, mean=MEAN, std=STD,
                     crop_pct=1.0)


@pytest.fixture(scope="module")
def tiny():
    from ppp_audit.models import build_model

    torch.manual_seed(0)
    return build_model("resnet10t", pretrained=False)


@pytest.fixture(scope="module")
def zero_weight(tiny):
    """A repair with λ = 0 beside its plain fine-tune (--repair-compare), reflect padding, 3 steps."""
    from ppp_audit.finetune import FinetuneConfig, finetune_audit

    model, info = tiny
    config = AuditConfig("resnet10t", paddings=["reflect"], pretrained=False, **TINY)
    ft = FinetuneConfig(steps=3, lr=1e-3, batch_size=4, repair=True, repair_weight=0.0, repair_compare=True)
    return finetune_audit(config, ft, model=model, info=info)


def test_zero_weight_repair_is_the_plain_fine_tune_bit_for_bit(zero_weight):
    tune = zero_weight.scheme("reflect").finetune
    plain = tune.plain
    assert tune.repaired and not plain.repaired
    assert tune.train_loss == plain.train_loss  # the same steps on the same crops: every loss bit-identical
    assert all(term > 0 for term in tune.consistency_loss)  # the term was computed (and weighted by 0)
    assert [layer.stats.strength for layer in tune.layers] == [layer.stats.strength for layer in plain.layers]
    assert tune.after == plain.after
    assert tune.tiling_after == plain.tiling_after
    assert tune.train_loss != [0.0] * len(tune.train_loss)


def test_zero_weight_repair_weights_equal_plain_weights(tiny):
    """The training loop itself: window batches with λ = 0 give the plain fine-tune's weights exactly."""
    from ppp_audit.auditor import Auditor
    from ppp_audit.finetune import CropDataset, FinetuneConfig, finetune, make_splits
    from ppp_audit.repair import ConsistencyTerm

    model, info = tiny
    config = AuditConfig("resnet10t", paddings=["zeros"], pretrained=False, **TINY)
    auditor = Auditor(config, model=model, info=info)
    ft = FinetuneConfig(steps=2, lr=1e-2, batch_size=4)
    splits = make_splits(config, ft, info, auditor.window, None, auditor.size)
    order = range(ft.steps * ft.batch_size)
    states = []
    for repair in (False, True):
        student = copy.deepcopy(model)
        loader = auditor.loader(CropDataset(splits.train, order, auditor.window, auditor.size, whole=repair), 4)
        settings = FinetuneConfig(steps=2, lr=1e-2, batch_size=4, repair=repair, repair_weight=0.0)
        term = ConsistencyTerm(auditor.taps, auditor.state.context, None, auditor.margin, auditor.probe) if repair \
            else None
        finetune(student, "reflect", loader, settings, info=info, teacher=model, consistency=term)
        states.append(student.state_dict())
    changed = [k for k in states[0] if not torch.equal(states[0][k], model.state_dict()[k])]
    assert changed  # it trained
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_report_table_page_and_round_trip(zero_weight, tmp_path):
    from rich.console import Console

    from ppp_audit.render import render_finetune_table, write_outputs
    from ppp_audit.render.figures import repair_curves
    from ppp_audit.report import SCHEMA_VERSION, Report

    assert tuple(map(int, SCHEMA_VERSION.split("."))) >= (1, 7)  # the repair's fields came with 1.7
    again = Report.from_json(zero_weight.to_json())
    assert again.to_dict() == zero_weight.to_dict()
    tune = again.scheme("reflect").finetune
    assert tune.plain is not None and tune.settings["repair_layers"] == [l.name for l in tune.layers]
    assert len(tune.tiling_before) == len(tune.layers)
    older = zero_weight.to_dict()  # a 1.6 reader's report: no repair fields; and a newer writer's extra field
    older["results"][1]["finetune"] = {k: v for k, v in older["results"][1]["finetune"].items()
                                       if k not in ("plain", "tiling_before", "tiling_after", "consistency_loss")}
    older["results"][1]["finetune"]["from_the_future"] = 1
    assert Report.from_dict(older).scheme("reflect").finetune.plain is None
    console = Console(record=True, width=200)
    console.print(render_finetune_table(again))
    text = console.export_text()
    assert "+3 plain" in text and "+3 repair" in text and "tiling consistency" in text and "λ=0.0" in text
    assert [label for label, _ in repair_curves(again.scheme("reflect"))] == ["before", "plain +3", "repaired +3"]
    write_outputs(again, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "PPP repair" in page and 'src="figures/repair_reflect.png"' in page


class LearnedBorderBias(nn.Module):
    """A trainable per-channel offset added within ``rings`` positions of the map's border (planted PPP)."""

    def __init__(self, channels: int, rings: int, amplitude: float) -> None:
        super().__init__()
        self.rings = rings
        self.amplitude = nn.Parameter(torch.full((1, channels, 1, 1), amplitude))

    def mask(self, height: int, width: int) -> torch.Tensor:
        m = torch.ones(height, width)
        m[self.rings:height - self.rings, self.rings:width - self.rings] = 0.0
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mask(*x.shape[-2:]).to(x) * self.amplitude


class Planted(nn.Module):
    """1x1 features with a planted border bias; the logits read the centre position (they do not see the border)
    through a padded 3x3 conv, the model's padding site (one that pads nowhere is refused), which the tap precedes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Conv2d(3, 6, 1)
        self.border = LearnedBorderBias(6, rings=2, amplitude=0.5)
        self.mix = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)
        self.feature_info = [{"module": "border", "num_chs": 6, "reduction": 1}]  # stride 1: a small margin fits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.mix(self.border(self.features(x)))
        return self.head(f[:, :, f.shape[-2] // 2, f.shape[-1] // 2])


def test_consistency_term_removes_a_planted_border_bias():
    from ppp_audit.auditor import Auditor
    from ppp_audit.finetune import CropDataset, FinetuneConfig, finetune, make_splits
    from ppp_audit.repair import ConsistencyTerm

    model, info = Planted().eval(), _info("planted", 32)
    config = AuditConfig("planted", num_images=16, batch_size=16, input_size=32, margin=8, layers=["border"],
                         device="cpu")
    auditor = Auditor(config, model=model, info=info)
    ft = FinetuneConfig(steps=40, lr=0.5, optimizer="sgd", batch_size=8, repair=True, repair_weight=1.0)
    splits = make_splits(config, ft, info, auditor.window, None, auditor.size)
    loader = auditor.loader(CropDataset(splits.train, range(ft.steps * ft.batch_size), auditor.window, auditor.size,
                                        whole=True), ft.batch_size)
    term = ConsistencyTerm(auditor.taps, auditor.state.context, None, auditor.margin, auditor.probe)
    student = copy.deepcopy(model)
    log = finetune(student, "native", loader, ft, info=info, teacher=model, consistency=term)

    def strength(net: nn.Module) -> float:
        return auditor.measure(splits.heldout, schemes=["native"], model=net).results[0].layers[0].stats.strength

    before, after = strength(model), strength(student)
    assert before > 0.1
    assert after < before / 5, (before, after)
    assert log.consistency[-1] < log.consistency[0] / 25
    # Interior features (beyond the rings) and the logits stay the original's.
    x = auditor.normalise(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        inner = slice(2, -2)
        original, repaired = model.features(x), student.border(student.features(x))
        scale = original.square().mean().sqrt()
        assert (repaired - original)[..., inner, inner].abs().max() < 0.02 * scale
        assert torch.allclose(student(x), model(x), atol=0.05 * float(model(x).abs().max()))


def _tiling(model: nn.Module, layers: list[str]) -> list[float | None]:
    from ppp_audit.auditor import Normalise
    from ppp_audit.repair import tiling_consistency

    crops = [(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)), torch.zeros(4)) for i in range(2)]
    return tiling_consistency(FeatureTaps(model.eval(), layers), crops, normalise=Normalise(_info("t", 32), "cpu"),
                              device=torch.device("cpu"))


def test_tiling_consistency_is_zero_without_padding_and_positive_with_it():
    torch.manual_seed(0)
    free = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
                         nn.Conv2d(8, 8, 2, stride=2))
    assert _tiling(free, ["1", "4"]) == [0.0, 0.0]
    padded = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))
    values = _tiling(padded, ["1", "2"])
    assert all(v > 0.01 for v in values)
    odd = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=32, padding=1))  # 1 x 1 maps
    assert _tiling(odd, ["0", "1"])[1] is None


def test_repair_of_the_native_padding_saves_and_reloads(tiny, tmp_path):
    from ppp_audit.engine import audit
    from ppp_audit.finetune import FinetuneConfig, finetune_audit, load_finetuned
    from ppp_audit.report import NATIVE

    model, info = tiny
    config = AuditConfig("resnet10t", pretrained=False, **TINY)  # no --padding: the native one is repaired
    report = finetune_audit(config, FinetuneConfig(steps=1, lr=1e-3, batch_size=4, repair=True,
                                                   repair_layers=["layer4"], save_weights=str(tmp_path)),
                            model=model, info=info)
    tune = report.scheme(NATIVE).finetune
    assert tune.repaired and tune.settings["repair_layers"] == ["layer4"] and tune.plain is None
    net, _, summary = load_finetuned(tmp_path / NATIVE)
    assert summary.scheme == NATIVE
    reloaded = audit(config, model=net, info=info).scheme(NATIVE)
    assert [l.stats.strength for l in reloaded.layers] == pytest.approx([l.stats.strength for l in tune.layers],
                                                                        rel=1e-5)


def test_bad_repair_settings_are_refused(tiny):
    from ppp_audit.finetune import FinetuneConfig, finetune_audit

    for kwargs, message in (({"repair_weight": -1.0}, "--repair-weight"), ({"repair_compare": True}, "needs --repair"),
                            ({"repair_layers": ["layer1"]}, "needs --repair"),
                            ({"repair": True, "repair_weight": float("nan")}, "--repair-weight")):
        with pytest.raises(PPPAuditError, match=message):
            FinetuneConfig(**kwargs)
    model, info = tiny
    with pytest.raises(PPPAuditError, match="not an audited layer"):
        finetune_audit(AuditConfig("resnet10t", pretrained=False, **TINY),
                       FinetuneConfig(steps=1, repair=True, repair_layers=["nope"]), model=model, info=info)


def test_repair_cli_errors_are_one_line():
    fails(["resnet10t", "--no-pretrained", "--repair"], "--repair needs fine-tuning")
    fails(["resnet10t", "--no-pretrained", "--finetune-steps", "1", "--repair-compare"], "--repair-compare needs")
    fails(["resnet10t", "--no-pretrained", "--finetune-steps", "1", "--repair", "--repair-weight", "-1"],
          "--repair-weight")
    fails(["resnet10t", "--no-pretrained", "--finetune-steps", "1", "--input-size", "64", "-n", "4", "--repair",
           "--repair-layers", "nope"], "not an audited layer")
