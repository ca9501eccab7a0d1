"""Rich tables of a :class:`~ppp_audit.report.Report`: per-layer PPP, fine-tuning, formation curves, baselines.

``ppp-audit`` prints them (:func:`ppp_audit.render.print_report`) and the HTML page shows them as HTML tables. Every
number goes through :func:`~ppp_audit.report.format_number`, every scheme name through ``SchemeResult.label``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..report import (
    NATIVE, SKIPPED_LISTED, ChannelShares, FinetuneResult, LayerResult, LayerStats, Report, SchemeResult, format_number,
    scheme_label,
)

if TYPE_CHECKING:
    from rich.table import Table

    from ..leaderboard import Leaderboard


NON_FINITE = "non-finite"
"""What a table shows in place of the numbers of a layer whose features held NaN/inf."""


def _strength_cell(stats: LayerStats) -> str:
    """``strength ± half-width of its 95 % CI`` (``non-finite`` for a layer that produced NaN/inf)."""
    if stats.non_finite:
        return NON_FINITE
    half = stats.strength_ci[1] - stats.strength if stats.strength_ci else None
    return f"{format_number(stats.strength)} ± {format_number(half, 2)}"


def percent(share: float | None) -> str:
    """A share as tables print it: ``62 %``, ``4.2 %``, ``0.31 %``; "–" when missing."""
    if share is None or math.isnan(share):
        return "–"
    value = 100 * share
    return f"{value:.0f} %" if value >= 9.5 else f"{value:.2g} %"


def _has_channels(report: Report) -> bool:
    """Whether any layer holds channel shares (reports before schema 1.10 have none)."""
    return any(layer.stats.channel_shares is not None for result in report.results for layer in result.layers)


def _top_share_cell(stats: LayerStats) -> str:
    """The compact column: the share of the pattern energy in the strongest 1 % of channels."""
    shares = stats.channel_shares
    if stats.non_finite:
        return NON_FINITE
    return percent(shares.energy_share.get("top_1pct")) if shares is not None else "–"


def _strongest(shares: ChannelShares, listed: int = 3) -> str:
    """The first ``listed`` of a layer's strongest channels: ``#7 62 % ring, #12 8.1 % top``."""
    return ", ".join(f"#{channel} {percent(share)} {side}" for channel, share, side in shares.top[:listed]) or "–"


def render_channels_table(report: Report) -> "Table | None":
    """A rich table of which channels carry each layer's pattern (``channel_shares``): the energy share of the top 1 %
    and 10 % of channels, the effective number of channels and the strongest channels, per scheme (and after
    fine-tuning); ``None`` for a report without channel shares (before schema 1.10)."""
    from rich.table import Table

    if not _has_channels(report):
        return None
    columns = [(result.label, result.layers) for result in report.results]
    columns += [(f"{result.scheme} +{result.finetune.steps} {'repair' if result.finetune.repaired else 'steps'}",
                 result.finetune.layers) for result in report.results if result.finetune is not None]
    table = Table(title=f"Which channels carry the pattern · {report.model['name']}", title_justify="left")
    table.add_column("layer")
    table.add_column("stride", justify="right")
    table.add_column("channels", justify="right")
    for label, _ in columns:
        table.add_column(f"{label}\ntop 1 % / 10 %", justify="right")
        table.add_column("effective\nchannels", justify="right")
        table.add_column("strongest\n(#channel share side)")
    for i, first in enumerate(report.results[0].layers):
        row = [first.name + (" *" if first.reference_partial else ""), f"{first.stats.stride_px:g}",
               str(first.stats.channels)]
        for _, layers in columns:
            stats = layers[i].stats
            shares = stats.channel_shares
            if stats.non_finite or shares is None:
                row += [NON_FINITE if stats.non_finite else "–", "", ""]
                continue
            share = shares.energy_share
            row += [f"{percent(share.get('top_1pct'))} / {percent(share.get('top_10pct'))}",
                    format_number(shares.effective_channels, 3), _strongest(shares)]
        table.add_row(*row)
    table.caption = ("share of the debiased pattern energy Σ P² in the strongest 1 % and 10 % of a layer's channels "
                     "(at least one; cross-fitted); effective channels = (Σ e_c)² / Σ e_c²; strongest: each channel's "
                     "own share and the side its pattern lies along (ring: not one side); –: no pattern significantly "
                     "above the noise (docs/metrics.md)")
    table.caption_justify = "left"
    return table


def render_table(report: Report) -> "Table":
    """A rich table: one row per layer, strength [95 % CI] and extent per scheme, side by side."""
    from rich.table import Table

    weights = report.model["weights"]
    if weights.startswith("file:"):
        weights = "file:" + Path(weights[5:]).name
    context = f"canvas {report.canvas['side']} px" if report.canvas else f"m={report.margin}"
    title = (f"PPP audit · {report.model['name']} ({weights}) · N={report.data['num_images']} "
             f"{report.data['kind']} · S={report.input_size} {context}")
    table = Table(title=title, title_justify="left")
    table.add_column("layer")
    table.add_column("stride", justify="right")
    channels = _has_channels(report)  # reports before schema 1.10 keep their table
    for result in report.results:
        table.add_column(f"{result.label}\nstrength ± 95% CI", justify="right")
        table.add_column("extent\npx", justify="right")
        if channels:
            table.add_column("top 1 %\nchannels", justify="right")
    partial_seen = False
    for i, first in enumerate(report.results[0].layers):
        row = [first.name + (" *" if first.reference_partial else ""), f"{first.stats.stride_px:g}"]
        partial_seen |= first.reference_partial
        for result in report.results:
            stats = result.layers[i].stats
            row += [_strength_cell(stats), format_number(stats.extent_px, 4)]
            if channels:
                row.append(_top_share_cell(stats))
        table.add_row(*row)
    table.add_section()
    for label, attr in (("model: last stage", "last_strength"), ("model: max", "max_strength")):
        row = [label, ""]
        for result in report.results:
            row += [format_number(getattr(result, attr)), "", *([""] if channels else [])]
        table.add_row(*row, style="bold")
    if report.estimator == "mean-feature":
        notes = ["strength = RMS(P') / RMS(σ) of the mean crop features minus their spatial mean (mean-feature "
                 "estimator: this model runs at one input size, so no padding-free window exists; biased by the "
                 "images' own position statistics); extent = distance from the border, input px"]
    else:
        notes = ["strength = RMS(P) / RMS(σ) (Δ estimator, debiased); extent = distance from the border, input px"]
    if channels:
        notes.append("top 1 % channels = share of the debiased pattern energy Σ P² in the layer's strongest 1 % of "
                     "channels (at least one; –: no pattern above the noise; docs/metrics.md)")
    notes += [f"geometry: {change}" for change in report.geometry.get("changes", [])]
    if report.interrupted:
        notes.append(f"interrupted: {report.interrupted}")
    if report.skipped_images:
        notes.append(f"{report.skipped_images.summary()}; the statistics cover the "
                     f"{report.data['num_images']} measured")
    small = small_images_note(report)
    if small:
        notes.append(small)
    non_finite = [f"{', '.join(map(repr, result.non_finite_layers))} with {result.label}"
                  for result in report.results if result.non_finite_layers]
    if non_finite:
        notes.append(f"{NON_FINITE}: NaN/inf features from {'; '.join(non_finite)}; their statistics are left out "
                     "(check the weights, or use --precision fp32)")
    margin = margin_note(report)
    if margin:
        notes.append(margin)
    unmatched = sorted({name for result in report.results for layer in result.layers
                        for name in layer.context_unmatched})
    if unmatched:
        notes.append(f"global context not matched: {', '.join(unmatched)} pool over the whole map, so the reference "
                     "of the layers after them sees the window's larger content (docs/metrics.md)")
    if partial_seen:
        notes.append(partial_note(report))
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table


def small_images_note(report: Report, listed: int = 3) -> str | None:
    """The images left out for being smaller than the window, in one line (``None``: none was), so that a lower N
    than the folder holds is explained where the table is read:
    ``2 of 66 images smaller than the 480x480 window: not measured ('a.png' 1x1, 'b.png' 10x7)``."""
    sample = report.data.get("sample") or {}
    count = sample.get("skipped_small", 0)
    if not count:
        return None
    named = sample.get("small", [])
    names = ", ".join(f"'{image['name']}' {image['width']}x{image['height']}" for image in named[:listed])
    rest = count - min(listed, len(named))
    if names and rest > 0:
        names += f", and {rest} more (report.json names up to {SKIPPED_LISTED})"
    # Of the images looked at: a sample stops reading headers once it has N (an interrupted audit measured fewer).
    unreadable = report.skipped_images.count if report.skipped_images else 0
    tiles = report.tiles
    measured = tiles["photos"] if tiles else report.data["num_images"]  # tiled: photos, not their crops
    of = "" if report.interrupted else f" of {measured + count + unreadable}"
    what = (f"too small for a {report.input_size} px crop with {report.margin} px around it" if tiles else
            f"smaller than the {report.window}x{report.window} window")
    return f"{count}{of} images {what}: not measured" + (f" ({names})" if names else "")


def margin_note(report: Report) -> str | None:
    """How the margin was set and what it costs, in one line (``None`` for the mean-feature estimator)."""
    margin = report.geometry.get("margin") or {}
    if report.estimator == "mean-feature" or not margin:
        return None
    canvas = report.canvas
    if canvas:
        return (f"reference from periodic canvases of {canvas['side']} px ({canvas['canvases']} canvases, up to "
                f"{max(canvas['crops_per_canvas'])} crops each): every position sees {canvas['context_px']} px "
                f"every way, at most {100 * canvas['tolerance']:g} % of each layer's influence beyond it; "
                f"{canvas['pixels_per_image']:.1f}x the crop's pixels per image")
    how = margin["chosen_by"]
    if how.startswith("receptive fields"):  # "receptive fields, within the 160 px the photos hold around a crop"
        how = (f"chosen from the receptive fields: at most {100 * margin['tolerance']:g} % of each layer's influence "
               f"beyond it, for the layers that fit under m <= {margin['cap']}" + how[len("receptive fields"):])
    second = f", a second reference at m={margin['second_margin']}" if margin.get("second_margin") else ""
    tiles = report.tiles
    if tiles:
        return (f"border m={report.margin} {how}; {tiles['crops']} crops tiled inside {tiles['photos']} photos (up to "
                f"{tiles['most_crops_per_photo']} each, at scale {tiles['scale']:g}), one pass per photo's tile"
                f"{second}: {tiles['pixels_per_image']:.1f}x the crop's pixels per image")
    cost = f"{margin['pixels_per_image']:.1f}x the crop's pixels per image"
    return f"margin m={report.margin} {how}; window {report.window} px{second}: {cost}"


def partial_note(report: Report) -> str | None:
    """The footnote of the layers marked partial: what it means and how far each moved between the two margins
    measured; ``None`` when no layer is partial."""
    layers = report.results[0].layers if report.results else []
    partial = [i for i, layer in enumerate(layers) if layer.reference_partial]
    if not partial:
        return None
    tolerance = report.geometry.get("margin", {}).get("tolerance")
    share = f"more than {100 * tolerance:g} % of" if tolerance is not None else "part of"
    note = (f"* {share} the receptive field's influence lies beyond the margin m={report.margin}: the padding-free "
            "reference is partial")
    moved = []
    for i in partial:
        changes = [f"{100 * change:+.0f} % ({result.label})"
                   for result in report.results if (change := result.layers[i].margin_change) is not None]
        if changes:
            moved.append(f"{report.results[0].layers[i].name} {', '.join(changes)}")
    second = next((layer.strength_at_smaller_margin[0] for result in report.results for layer in result.layers
                   if layer.strength_at_smaller_margin), None)
    if moved and second is not None:
        note += f"; strength from m={second} to m={report.margin}: {'; '.join(moved)}"
    return note


def render_reference_table(report: Report) -> "Table | None":
    """A rich table of what each layer's padding-free reference could see: receptive reach, share of influence beyond
    the margin, global modules matched and not, and how far the strength moved from the smaller margin.
    ``None`` for the mean-feature estimator (no reference)."""
    from rich.table import Table

    if report.estimator == "mean-feature" or not report.results:
        return None
    canvas = report.canvas is not None
    tiles = report.tiles
    title = (f"Padding-free reference · canvas {report.window} px, {report.canvas['context_px']} px every way"
             if canvas else f"Padding-free reference · border m={report.margin} · tiles of {tiles['photos']} photos"
             if tiles else f"Padding-free reference · margin m={report.margin} · window {report.window} px")
    table = Table(title=title, title_justify="left")
    for header in ("layer", "stride", "reach px", "influence\nbeyond L/2" if canvas else "influence\nbeyond m",
                   "global context\nmatched",
                   "global context\nnot matched"):
        table.add_column(header, justify="left" if header == "layer" else "right")
    for result in report.results if not canvas else ():  # a canvas leaves no layer partial: no second margin
        table.add_column(f"{result.label}\nmoved from m2", justify="right")
    for i, layer in enumerate(report.results[0].layers):
        beyond = layer.influence_beyond_margin
        row = [layer.name + (" *" if layer.reference_partial else ""), f"{layer.stats.stride_px:g}",
               format_number(layer.receptive_radius_px, 4), "–" if beyond is None else f"{100 * beyond:.2g} %",
               str(len(layer.context_matched)), ", ".join(layer.context_unmatched) or "0"]
        for result in report.results if not canvas else ():
            change = result.layers[i].margin_change
            row.append("–" if change is None else f"{100 * change:+.0f} %")
        table.add_row(*row)
    table.caption = "\n".join(note for note in (margin_note(report), partial_note(report)) if note)
    table.caption_justify = "left"
    return table

def _finetune_columns(result: SchemeResult) -> list[tuple[str, list[LayerResult], Any, dict[str, float],
                                                          list[float | None] | None]]:
    """The columns of one tuned scheme: ``(header, layers, headline scores, held-out metrics, tiling)``: right after
    the swap (left out for a repair of the native padding: that is the first column), then the plain fine-tune of a
    repair's comparison, then the fine-tuned (or repaired) model."""
    tune = result.finetune
    columns = []
    if result.scheme != NATIVE:
        columns.append((f"{result.scheme}\nafter swap", result.layers, result, tune.before, tune.tiling_before))
    if tune.plain is not None:
        plain = tune.plain
        columns.append((f"{result.scheme}\n+{plain.steps} plain", plain.layers, plain, plain.after, plain.tiling_after))
    label = "repair" if tune.repaired else "steps"
    columns.append((f"{result.scheme}\n+{tune.steps} {label}", tune.layers, tune, tune.after, tune.tiling_after))
    return columns


def render_finetune_table(report: Report) -> "Table | None":
    """A rich table of the fine-tuned schemes: PPP strength per layer native / after the swap / after fine-tuning
    (with a repair: after the plain fine-tune of ``--repair-compare`` and after the repair), then held-out top-1
    agreement with the original model, distillation loss and, for repairs, tiling consistency. ``None`` without
    fine-tuning."""
    from rich.table import Table

    tuned = [r for r in report.results if r.finetune is not None]
    if not tuned:
        return None
    native = report.results[0]
    settings = tuned[0].finetune.settings
    repaired = any(r.finetune.repaired for r in tuned)
    kind = f"repair λ={settings.get('repair_weight', '')} + " if repaired else ""
    title = (f"Fine-tune {'(PPP repair)' if repaired else 'after the padding swap'} · {report.model['name']} · "
             f"{tuned[0].finetune.steps} steps {kind}{settings.get('objective', '')} {settings.get('optimizer', '')} "
             f"lr={settings.get('lr', '')} batch={settings.get('batch_size', '')} BN {settings.get('bn', '')} · "
             f"held-out N={report.data['num_images']}")
    table = Table(title=title, title_justify="left")
    table.add_column("layer")
    table.add_column("stride", justify="right")
    table.add_column(f"{native.scheme}\nbefore swap", justify="right")
    columns = [column for result in tuned for column in _finetune_columns(result)]
    for header, *_ in columns:
        table.add_column(header, justify="right")

    for i, layer in enumerate(native.layers):
        row = [layer.name + (" *" if layer.reference_partial else ""), f"{layer.stats.stride_px:g}",
               _strength_cell(layer.stats)]
        row += [_strength_cell(layers[i].stats) for _, layers, *_ in columns]
        table.add_row(*row)
    table.add_section()
    for label, attr in (("model: last stage", "last_strength"), ("model: max", "max_strength")):
        row = [label, "", format_number(getattr(native, attr))]
        row += [format_number(getattr(scores, attr)) for _, _, scores, *_ in columns]
        table.add_row(*row, style="bold")
    table.add_section()
    metrics = [("top-1 agreement", "agreement_top1", 1.0), ("distill loss", "distill_loss", 0.0)]
    if "label_accuracy" in tuned[0].finetune.after:
        metrics.append(("label accuracy", "label_accuracy", tuned[0].finetune.original.get("label_accuracy")))
    for label, key, original in metrics:
        row = [f"held-out {label}", "", format_number(original)]
        row += [format_number(values.get(key)) for _, _, _, values, _ in columns]
        table.add_row(*row)
    if repaired:
        row = ["tiling consistency (last)", "", format_number(FinetuneResult.last_tiling(
            next((r.finetune.tiling_before for r in tuned if r.scheme == NATIVE), None)))]
        row += [format_number(FinetuneResult.last_tiling(tiling)) for *_, tiling in columns]
        table.add_row(*row)
    # What a step cost: a repair's also runs the original model on the whole window (docs/repair.md).
    row = ["seconds per training step", "", ""]
    row += [f"{scores.seconds / scores.steps:.2f}" if isinstance(scores, FinetuneResult) and scores.steps else ""
            for _, _, scores, *_ in columns]
    table.add_row(*row)
    table.caption = ("strength = RMS(P) / RMS(σ) ± 95% CI on held-out images; agreement and loss are against the "
                     "original (unpatched) model's logits"
                     + ("; tiling consistency = RMS(f(image) - f(2×2 tiles stitched)) / RMS(σ), σ the features' spread "
                        "over the images, last layer that tiles (docs/repair.md)" if repaired else ""))
    table.caption_justify = "left"
    return table


def render_curve_table(report: Report) -> "Table | None":
    """The formation curves: model-level PPP strength (last stage, max) and agreement every N steps, per scheme."""
    from rich.table import Table

    tuned = [r for r in report.results if r.finetune is not None and r.finetune.curve]
    if not tuned:
        return None
    table = Table(title="PPP formation during fine-tuning (held-out images)", title_justify="left")
    table.add_column("step", justify="right")
    for result in tuned:
        for column in ("last stage", "max", "agreement"):
            table.add_column(f"{result.scheme}\n{column}", justify="right")
    steps = sorted({point.step for result in tuned for point in result.finetune.curve})
    for step in steps:
        row = [str(step)]
        for result in tuned:
            point = next((p for p in result.finetune.curve if p.step == step), None)
            if point is None:
                row += ["", "", ""]
                continue
            values = [v for v in point.strengths if v is not None]
            row += [format_number(point.strengths[-1]), format_number(max(values) if values else None),
                    format_number(point.agreement_top1)]
        table.add_row(*row)
    return table


_SHORT_TARGETS = {"horizontal": "horiz.", "vertical": "vert.", "gaussian": "gauss.", "horizontal_stripes": "h-stripes",
                  "vertical_stripes": "v-stripes"}


def render_baselines(report: Report) -> list["Table"]:
    """Rich tables for ``report.baselines`` (docs/baselines.md): a summary beside PPP strength, then one table per
    baseline."""
    from rich.table import Table

    base = report.baselines
    if not base:
        return []
    tables = []
    posenet, fconv, uneven = base.get("posenet", {}), base.get("fconv", {}), base.get("uneven")

    def mean_spc(result: dict[str, Any], which: str) -> float:
        scores = result["scores"][which]
        return sum(v["spc"] for v in scores.values()) / len(scores)

    summary = Table(title="Baselines beside PPP strength (same images)", title_justify="left")
    summary.add_column("padding")
    summary.add_column("PPP strength\nlast / max", justify="right")
    if posenet:
        summary.add_column("PosENet SPC\nheld-out", justify="right")
        summary.add_column("PosENet SPC\nblack / white", justify="right")
    if fconv:
        summary.add_column("F-Conv largest\ndecodable border", justify="right")
    if uneven:
        summary.add_column("uneven layers\n(any padding)", justify="right")
    for result in report.results:
        row = [result.scheme, f"{format_number(result.last_strength)} / {format_number(result.max_strength)}"]
        if posenet:
            p = posenet.get(result.scheme)
            row += [format_number(mean_spc(p, "held_out")) if p else "–",
                    f"{format_number(mean_spc(p, 'black'))} / {format_number(mean_spc(p, 'white'))}" if p else "–"]
        if fconv:
            f = fconv.get(result.scheme)
            if f is None:
                row.append("–")
            else:
                largest = f["largest_decodable_border"]
                text = "none" if largest is None else f"{largest} px"
                row.append(f"≥ {text}" if f["decodable_at_all_borders"] else text)
        if uneven:
            row.append(f"{uneven['num_uneven']} / {uneven['num_checked']}")
        summary.add_row(*row)
    summary.caption = ("PosENet SPC: mean over targets of the Spearman correlation (1 = position fully decodable); "
                       "F-Conv: largest border with accuracy above chance (binomial, Bonferroni); uneven: at "
                       f"{report.input_size} px, padding-independent")
    summary.caption_justify = "left"
    tables.append(summary)

    if posenet:
        first = next(iter(posenet.values()))
        title = (f"PosENet probe · grid {first['grid']} · {first['num_train']} train / {first['num_test']} held-out "
                 f"images · {first['steps']} steps")
        table = Table(title=title, title_justify="left")
        table.add_column("padding")
        table.add_column("input")
        targets = first["targets"]
        for target in targets:
            table.add_column(f"{_SHORT_TARGETS.get(target, target)}\nSPC / MAE", justify="right")
        for label, result in posenet.items():
            for which, scores in result["scores"].items():
                table.add_row(label, which.replace("_", "-"),
                              *[f"{scores[t]['spc']:.2f} / {scores[t]['mae']:.2f}" for t in targets])
            table.add_section()
        tables.append(table)

    if fconv:
        first = next(iter(fconv.values()))
        table = Table(title=f"F-Conv location test · content {first['content']} px · {first['num_train']} train / "
                      f"{first['num_test']} test images", title_justify="left")
        table.add_column("padding")
        for border in first["borders"]:
            table.add_column(f"border\n{border} px", justify="right")
        for label, result in fconv.items():
            cells = [f"{acc:.0%}" + (" *" if ok else "") for acc, ok in zip(result["accuracy"], result["decodable"])]
            table.add_row(label, *cells)
        threshold = first["threshold_accuracy"]
        rule = (f"accuracy ≥ {threshold:.0%}" if threshold is not None
                else "unreachable with this few test images (raise fconv.num_test)")
        table.caption = (f"accuracy top-left vs bottom-right (chance 50 %); * decodable: {rule} (one-sided binomial, "
                         f"alpha {first['alpha']:g} / borders)")
        table.caption_justify = "left"
        tables.append(table)

    if uneven:
        table = Table(title=f"Uneven padding at {uneven['input_size'][0]}x{uneven['input_size'][1]}: "
                      f"{uneven['num_uneven']} of {uneven['num_checked']} conv/pool layers", title_justify="left")
        for column in ("layer", "type", "in → out", "k / s / d", "top / bottom", "left / right"):
            table.add_column(column, justify="left" if column in ("layer", "type") else "right")
        for g in uneven["layers"]:
            left, right, top, bottom = g["used"]
            table.add_row(g["name"], g["module_type"], f"{g['input_hw'][0]} → {g['output_hw'][0]}",
                          f"{g['kernel'][0]} / {g['stride'][0]} / {g['dilation'][0]}", f"{top} / {bottom}",
                          f"{left} / {right}")
        table.caption = "padding rows/cols actually read per side; negative: real rows/cols never read"
        table.caption_justify = "left"
        tables.append(table)
    return tables


LEADERBOARD_LOST_LISTED = 3
"""How many failed (or unreadable) runs the leaderboard table's caption names; the files list them all."""


def render_leaderboard_table(board: "Leaderboard", top: int = 20) -> "Table":
    """The top of a sweep's leaderboard (:mod:`ppp_audit.leaderboard`): its ``top`` rows by PPP strength at the last
    stage, highest first, with the runs that gave no rows counted (and the first named) in the caption."""
    from rich.table import Table

    rows = board.top(top)
    where = f" · {board.root.name}" if board.root is not None else ""
    table = Table(title=f"PPP leaderboard{where} · top {len(rows)} of {len(board.rows)} rows by last-stage strength",
                  title_justify="left")
    for header in ("#", "model", "weights", "padding", "last stage\nstrength [95% CI]", "max\n(stage)",
                   "vs native", "params", "N", "S / m"):
        table.add_column(header, justify="left" if header in ("model", "weights", "padding") else "right")
    for rank, row in enumerate(rows, 1):
        ci = (f" [{format_number(row['last_strength_low'])}, {format_number(row['last_strength_high'])}]"
              if row["last_strength_low"] is not None else "")
        top_stage = format_number(row["max_strength"]) + (f" ({row['max_layer']})" if row["max_layer"] else "")
        change = "–" if row["change_vs_native"] is None else f"{100 * row['change_vs_native']:+.0f} %"
        params = "–" if not row["params"] else f"{row['params'] / 1e6:.3g}M"
        table.add_row(str(rank), row["model"], row["weights"] or "–", scheme_label(row["scheme"], row["padding"]),
                      format_number(row["last_strength"]) + ci, top_stage, change, params,
                      str(row["num_images"]), f"{row['input_size']} / {row['margin']}")
    notes = [board.describe()]
    for what, runs in (("failed", board.failed), ("unreadable", board.unreadable), ("superseded", board.superseded)):
        if runs:
            named = "; ".join(f"{run.model}: {run.reason}" for run in runs[:LEADERBOARD_LOST_LISTED])
            more = f"; and {len(runs) - LEADERBOARD_LOST_LISTED} more" if len(runs) > LEADERBOARD_LOST_LISTED else ""
            notes.append(f"{len(runs)} {what}: {named}{more}")
    if board.join is not None:
        missing = f"; no row for {', '.join(board.join.unmatched)}" if board.join.unmatched else ""
        notes.append(f"joined {', '.join(board.join.columns)} from {board.join.file} ({board.join.matched} models "
                     f"matched{missing})")
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table


__all__ = ["percent", "render_baselines", "render_channels_table", "render_curve_table", "render_finetune_table",
           "render_leaderboard_table", "render_table"]
