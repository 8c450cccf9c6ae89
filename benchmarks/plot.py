"""Draw docs/benchmarks.svg from benchmarks/results/*.json (plain SVG, no plotting dependency).

    .venv/bin/python -m benchmarks.plot

Three panels: generation speed relative to the fastest local row (transformers with any kernel,
or the lean local loop; per model and chain), time to first token relative to the lowest local
one, and concurrent-session scaling (aggregate tokens/s relative to
one session). Dashed lines mark the goals.
"""

from __future__ import annotations

import json
import sys
from html import escape

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, ROOT

OUT = ROOT / "docs" / "benchmarks.svg"
COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]


def _load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


class Panel:
    """A bar chart with groups of bars, a y axis from 0 to `ymax` and optional goal lines."""

    def __init__(self, x: float, y: float, w: float, h: float, title: str, ymax: float, ylabel: str):
        self.x, self.y, self.w, self.h = x, y, w, h
        self.title, self.ymax, self.ylabel = title, ymax, ylabel
        self.parts: list[str] = []

    def _py(self, v: float) -> float:
        return self.y + self.h - min(v, self.ymax) / self.ymax * self.h

    def bars(self, groups: list[tuple[str, list[tuple[str, float]]]]) -> None:
        n = len(groups)
        gw = self.w / max(n, 1)
        for gi, (label, bars) in enumerate(groups):
            bw = gw * 0.8 / max(len(bars), 1)
            for bi, (name, v) in enumerate(bars):
                bx = self.x + gi * gw + gw * 0.1 + bi * bw
                by = self._py(v)
                color = COLORS[bi % len(COLORS)]
                self.parts.append(f'<rect x="{bx:.1f}" y="{by:.1f}" width="{bw * 0.9:.1f}" '
                                  f'height="{self.y + self.h - by:.1f}" fill="{color}"><title>{escape(name)}: '
                                  f'{v:.2f}</title></rect>')
                self.parts.append(f'<text x="{bx + bw * 0.45:.1f}" y="{by - 3:.1f}" font-size="10" '
                                  f'text-anchor="middle">{v:.2f}</text>')
            self.parts.append(f'<text x="{self.x + gi * gw + gw / 2:.1f}" y="{self.y + self.h + 14:.1f}" '
                              f'font-size="11" text-anchor="middle">{escape(label)}</text>')

    def legend(self, names: list[str]) -> None:
        per_row = max(1, int(self.w // 150))
        for i, name in enumerate(names):
            lx = self.x + 8 + (i % per_row) * 150
            ly = self.y + self.h + 24 + (i // per_row) * 14
            self.parts.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{COLORS[i % len(COLORS)]}"/>')
            self.parts.append(f'<text x="{lx + 14}" y="{ly + 9}" font-size="11">{escape(name)}</text>')

    def goal(self, v: float, label: str) -> None:
        gy = self._py(v)
        self.parts.append(f'<line x1="{self.x}" y1="{gy:.1f}" x2="{self.x + self.w}" y2="{gy:.1f}" '
                          f'stroke="#C44E52" stroke-dasharray="5,4"/>')
        self.parts.append(f'<text x="{self.x + self.w - 2}" y="{gy - 3:.1f}" font-size="10" fill="#C44E52" '
                          f'text-anchor="end">{escape(label)}</text>')

    def svg(self) -> str:
        axis = [f'<text x="{self.x + self.w / 2}" y="{self.y - 10}" font-size="13" font-weight="bold" '
                f'text-anchor="middle">{escape(self.title)}</text>',
                f'<line x1="{self.x}" y1="{self.y}" x2="{self.x}" y2="{self.y + self.h}" stroke="#333"/>',
                f'<line x1="{self.x}" y1="{self.y + self.h}" x2="{self.x + self.w}" y2="{self.y + self.h}" '
                f'stroke="#333"/>',
                f'<text x="{self.x - 34}" y="{self.y + self.h / 2}" font-size="11" text-anchor="middle" '
                f'transform="rotate(-90 {self.x - 34} {self.y + self.h / 2})">{escape(self.ylabel)}</text>']
        steps = 4
        for i in range(steps + 1):
            v = self.ymax * i / steps
            ty = self._py(v)
            axis.append(f'<text x="{self.x - 4}" y="{ty + 3:.1f}" font-size="10" text-anchor="end">{v:g}</text>')
            axis.append(f'<line x1="{self.x}" y1="{ty:.1f}" x2="{self.x + self.w}" y2="{ty:.1f}" stroke="#ddd"/>')
        return "\n".join(axis + self.parts)


def _is_local(name: str) -> bool:
    return name == "local" or name.startswith("local, ")


def _fastest_local(r: dict) -> tuple[dict[str, float], float]:
    """Per length the fastest local tokens/s, and the lowest local TTFT (as benchmarks.generation reports)."""
    tps = [d for c, d in r["tokens_per_s"].items() if _is_local(c)]
    best = {n: max(d[n] for d in tps) for n in tps[0]}
    return best, min(t for c, t in r["ttft_s"].items() if _is_local(c))


def build() -> str:
    panels: list[Panel] = []
    gen = _load("generation")
    if gen:
        p = Panel(70, 50, 330, 220, "Greedy tokens/s vs the fastest local row", 1.4, "ratio to fastest local")
        groups, names = [], []
        for key, r in gen["models"].items():
            best, best_ttft = _fastest_local(r)
            for n in best:
                bars = [(c, v[n] / best[n]) for c, v in r["tokens_per_s"].items() if not _is_local(c)]
                names = [c for c, _ in bars]
                groups.append((f"({key}) 16->{n}", bars))
        p.bars(groups)
        p.goal(1.0, "fastest local")
        p.goal(0.9, "goal (a) 0.9")
        p.legend(names)
        panels.append(p)
        q = Panel(480, 50, 200, 220, "Time to first token vs fastest local", 2.0, "ratio (lower is better)")
        tgroups = []
        for key, r in gen["models"].items():
            best, best_ttft = _fastest_local(r)
            tgroups.append((f"model {key}", [(c, v / best_ttft) for c, v in r["ttft_s"].items() if not _is_local(c)]))
        q.bars(tgroups)
        q.goal(1.1, "goal 1.1")
        q.legend(names)
        panels.append(q)
    conc = _load("concurrency")
    if conc:
        p = Panel(760, 50, 260, 220, "Concurrent sessions, one hoster", 9.0, "aggregate tok/s vs 1 session")
        modes = [(name, key) for name, key in (("end-to-end", "by_window"), ("hoster only", "hoster_only_by_window"))
                 if conc.get(key)]
        window = "0.002" if "0.002" in conc["by_window"] else next(iter(conc["by_window"]))  # the hoster default
        p.title += f" (window {window} s)"
        counts = list(conc["by_window"][window]["aggregate_tokens_per_s"])
        groups = []
        for n in counts:
            bars = []
            for name, key in modes:
                agg = conc[key][window]["aggregate_tokens_per_s"]
                bars.append((name, agg[n] / agg[counts[0]]))
            groups.append((f"{n} sessions", bars))
        p.bars(groups)
        p.goal(4.0, "goal 4x at 8")
        p.legend([name for name, _ in modes])
        panels.append(p)
    body = "\n".join(pl.svg() for pl in panels) or '<text x="20" y="40">no results yet</text>'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="1100" height="380" font-family="sans-serif">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n')


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(build())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
