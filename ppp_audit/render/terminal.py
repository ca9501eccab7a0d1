"""A compact PPP-map heatmap for the terminal (rich): the last stage of every scheme on one shared scale.

On a colour terminal each character cell shows two map rows with the upper half block ``▀`` (foreground = upper
row, background = lower row), coloured with viridis like the PNG maps. Without colour (a pipe, a file, ``NO_COLOR``)
the same map is drawn with a ramp of characters, so redirected output stays readable.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..report import format_number

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.text import Text

    from ..report import LayerResult, Report

SHADES = " .:-=+*#%@"
"""Character ramp from low to high for terminals without colour."""


def viridis_rgb(values: "np.ndarray") -> "np.ndarray":
    """Viridis colours (uint8 RGB, shape ``values.shape + (3,)``) of values in [0, 1]."""
    import numpy as np
    from matplotlib import colormaps

    rgba = colormaps["viridis"](np.clip(np.nan_to_num(values), 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def fit_map(values: "np.ndarray", max_cells: int) -> "np.ndarray":
    """Block-average a map down so neither side exceeds ``max_cells`` (maps at most that size pass unchanged)."""
    import numpy as np

    factor = math.ceil(max(values.shape) / max_cells)
    if factor <= 1:
        return values
    h, w = (values.shape[0] + factor - 1) // factor * factor, (values.shape[1] + factor - 1) // factor * factor
    padded = np.full((h, w), np.nan)
    padded[: values.shape[0], : values.shape[1]] = values
    return np.nanmean(padded.reshape(h // factor, factor, w // factor, factor), axis=(1, 3))


class TerminalHeatmap:
    """rich renderable: one stage's channel-RMS PPP map for each scheme, side by side, on a shared scale.

    Args:
        report: The report.
        layer_index: Which tapped layer (default the last stage).
        max_cells: Largest side of a drawn map, in character cells.
    """

    def __init__(self, report: "Report", layer_index: int = -1, max_cells: int = 16) -> None:
        self.report = report
        self.layer_index = layer_index
        self.max_cells = max_cells

    def panels(self) -> list[tuple[int, str, "LayerResult"]]:
        out = []
        for i, result in enumerate(self.report.results):
            if result.layers and result.layers[self.layer_index].stats.ppp_map is not None:
                out.append((i, result.scheme, result.layers[self.layer_index]))
        return out

    def __rich_console__(self, console: "Console", options: "ConsoleOptions") -> "RenderResult":
        import numpy as np
        from rich.table import Table
        from rich.text import Text

        panels = self.panels()
        if not panels:
            return
        maps = [np.asarray(layer.stats.ppp_map, dtype=float) for _, _, layer in panels]
        vmax = max(float(np.nanmax(m)) for m in maps if m.size) or 1.0
        first = panels[0][2]
        colour = console.color_system is not None and not console.no_color
        yield Text.assemble(
            ("PPP map", "bold"),
            f" · stage {first.name} (stride {first.stats.stride_px:g}) · channel-RMS of P on one scale · "
            "map top = image top",
        )
        grid = Table.grid(padding=(0, 3))
        for _ in panels:
            grid.add_column()
        cells = []
        for (index, label, layer), values in zip(panels, maps):
            body = self._colour(values / vmax) if colour else self._shades(values / vmax)
            floor = _max_floor(layer)
            title = Text(self.report.results[index].label, style="bold")
            footer = Text(f"{layer.stats.height}×{layer.stats.width} · max {_number(np.nanmax(values))}"
                          + (f" · floor {_number(floor)}" if floor is not None else ""), style="dim")
            cells.append(Text("\n").join([title, body, footer]))
        grid.add_row(*cells)
        yield grid
        yield Text.assemble("scale ", self._legend(colour), f" 0 … {_number(vmax)} (feature units)")

    def _cell_scale(self, values: "np.ndarray", chars_per_row: int) -> int:
        return max(1, self.max_cells // (chars_per_row * max(values.shape)))

    def _colour(self, values: "np.ndarray") -> Text:
        import numpy as np
        from rich.color import Color
        from rich.style import Style
        from rich.text import Text

        values = fit_map(values, self.max_cells)
        scale = self._cell_scale(values, 1)
        big = np.kron(values, np.ones((scale, scale)))
        if big.shape[0] % 2:
            big = np.vstack([big, np.full((1, big.shape[1]), np.nan)])
        rgb = viridis_rgb(big)
        lines = []
        for row in range(0, big.shape[0], 2):
            line = Text()
            for col in range(big.shape[1]):
                upper = Color.from_rgb(*rgb[row, col])
                lower = None if np.isnan(big[row + 1, col]) else Color.from_rgb(*rgb[row + 1, col])
                line.append("▀", Style(color=upper, bgcolor=lower))
            lines.append(line)
        return Text("\n").join(lines)

    def _shades(self, values: "np.ndarray") -> Text:
        import numpy as np
        from rich.text import Text

        values = fit_map(values, self.max_cells // 2)
        scale = self._cell_scale(values, 2)
        idx = np.clip(np.nan_to_num(values) * (len(SHADES) - 1), 0, len(SHADES) - 1).round().astype(int)
        rows = ["".join(SHADES[i] * (2 * scale) for i in row) for row in idx]
        return Text("\n".join(row for row in rows for _ in range(scale)))

    @staticmethod
    def _legend(colour: bool) -> Text:
        import numpy as np
        from rich.color import Color
        from rich.style import Style
        from rich.text import Text

        if not colour:
            return Text(f"[{SHADES}]")
        text = Text()
        for rgb in viridis_rgb(np.linspace(0.0, 1.0, 16)):
            text.append(" ", Style(bgcolor=Color.from_rgb(*rgb)))
        return text


@contextlib.contextmanager
def full_width(console: "Console", renderables: Iterable[Any]) -> Iterator[None]:
    """On a pipe or file, widen ``console`` for the block so that every renderable prints at its natural width: no
    header cut to "streng…", no cell wrapped at 80 columns. A terminal keeps its width (rich fits tables to it)."""
    from rich.measure import Measurement

    if console.is_terminal:
        yield
        return
    wide = console.options.update_width(100_000)
    natural = max((Measurement.get(console, wide, r).maximum for r in renderables if hasattr(r, "__rich_measure__")),
                  default=0)
    previous = console.width
    if natural > previous:
        console.width = natural
    try:
        yield
    finally:
        console.width = previous


def _max_floor(layer: "LayerResult") -> float | None:
    from .figures import max_noise_floor

    return max_noise_floor(layer.stats.profile)


def _number(value: float) -> str:
    """A map value as the heatmap prints it: three significant digits at every magnitude."""
    return format_number(value, fixed_from=None)
