"""Rendering of the pressure-level figures (``bench/levels.py``): a terminal table, and ``python -m bench --report``'s
Markdown page with PNG plots.

``write_report(results, out)`` writes ``out/README.md`` (per backend a table per leg — throughput, latency p50/p99,
order violations, RSS, Trio tasks per level — then the jxt comparison, and the date, machine and broker versions)
and, when matplotlib is installed (the optional extra ``bench``), ``out/throughput.png`` and ``out/latency.png``.
Without matplotlib the Markdown is written and the page and the return value say that the plots need the extra.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PLOTS", "jsonable", "markdown", "text", "write_report"]

Figures = Mapping[str, Any]

#: The PNG files a report writes beside its README.md.
PLOTS = ("throughput.png", "latency.png")
_LEGS = {
    "envelope": "envelope leg (publish_envelope → subscribe_envelope)",
    "raw": "raw leg (publish → subscribe, 256-byte bodies keyed by aggregate)",
}
_X, _DASH = "\u00d7", "\u2013"  # multiplication sign, en dash
_COLOURS = {"memory": "#4c72b0", "nats": "#55a868", "kafka": "#c44e52"}


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------ numbers


def _num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return _DASH
    return f"{value:,.{digits}f}"


def _ms(value: Any) -> str:
    if value is None or not math.isfinite(value):
        return _DASH
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _ratio(value: Any) -> str:
    return _DASH if value is None or not math.isfinite(value) else f"{_X}{value:.2f}"


def _f(value: Any) -> float:
    """A figure as a float: NaN for ``None`` (saved JSON holds non-finite figures as ``null``)."""
    return math.nan if value is None else float(value)


def _levels(figures: Figures) -> list[tuple[int, Figures]]:
    return sorted(((int(k), v) for k, v in figures.get("levels", {}).items()), key=lambda kv: kv[0])


def _jxt_leg(figures: Figures, leg: str) -> dict[str, Any] | None:
    """The jxt rounds of ``leg`` folded into one row: medians, summed counts, peaks."""
    runs = [r[leg] for r in figures.get("jxt", {}).get("rounds", []) if "msgs_per_s" in r.get(leg, {})]
    if not runs:
        return None
    row: dict[str, Any] = {"messages": runs[0]["messages"], "rounds": len(runs)}
    for key in ("msgs_per_s", "p50_ms", "p99_ms", "max_ms"):
        row[key] = statistics.median(_f(r.get(key)) for r in runs)
    for key in ("order_violations", "duplicates", "lost"):
        row[key] = sum(int(r.get(key, 0)) for r in runs)
    for key in ("rss_mib", "tasks"):
        row[key] = max(r.get(key, 0) for r in runs)
    row["rss_start_mib"] = min(_f(r.get("rss_start_mib")) for r in runs)
    return row


def _series(figures: Figures, leg: str) -> list[tuple[int, Figures]]:
    """(messages, figures) per level of ``leg``, the jxt median last."""
    points = [(level, row[leg]) for level, row in _levels(figures) if leg in row]
    jxt = _jxt_leg(figures, leg)
    if jxt is not None:
        points.append((int(jxt["messages"]), jxt))
    return points


# ----------------------------------------------------------------------------------------------- terminal


def _machine_line(m: Mapping[str, Any]) -> str:
    return (
        f"{m.get('date', '?')}, commit {m.get('commit', '?')}: nproc {m.get('nproc', '?')} ({m.get('cpu', '?')}), "
        f"{m.get('python', '?')}, trio {m.get('trio', '?')}, {m.get('broker', '?')}"
    )


def text(figures: Figures) -> str:
    """One backend's figures as aligned terminal tables."""
    bridge = f", bridge {figures['bridge']}" if figures.get("bridge") else ""
    lines = [
        f"pressure levels on {figures['backend']}{bridge}: {figures['aggregates']} aggregates, publish form "
        f"{figures['publish_form']}; subscriber first; msgs/s = first publish → last handler",
        _machine_line(figures.get("machine", {})),
        "",
        f"{'messages':>8}  {'leg':<8}  {'msgs/s':>9}  {'p50 ms':>8}  {'p99 ms':>8}  {'violations':>10}  {'dup':>4}  "
        f"{'lost':>5}  {'RSS MiB':>7}  {'tasks':>5}",
    ]
    for level, row in _levels(figures):
        for leg in (name for name in _LEGS if name in row):
            f = row[leg]
            lines.append(
                f"{level:>8,}  {leg:<8}  {_num(f['msgs_per_s']):>9}  {_ms(f['p50_ms']):>8}  {_ms(f['p99_ms']):>8}  "
                f"{f['order_violations']:>10}  {f['duplicates']:>4}  {f['lost']:>5}  {_num(f['rss_mib'], 1):>7}  "
                f"{f['tasks']:>5}"
            )
    jxt = figures.get("jxt")
    if jxt:
        lines += ["", f"the Go original's workload (jxt): {jxt['workload']}"]
        lines.append(
            f"{'round':>5}  {'envelope/s':>10}  {'raw/s':>9}  {'client/s':>9}  {'env/raw':>7}  {'env/client':>10}  "
            f"{'env/Go':>11}  {'violations':>10}"
        )
        for n, r in enumerate(jxt["rounds"], 1):
            go = r.get("ratio_to_go")
            lines.append(
                f"{n:>5}  {_num(r['envelope']['msgs_per_s']):>10}  {_num(r['raw']['msgs_per_s']):>9}  "
                f"{_num(r['client'].get('msgs_per_s')):>9}  {_ratio(r['ratio_envelope_to_raw']):>7}  "
                f"{_ratio(r['ratio_envelope_to_client']):>10}  "
                f"{(f'{_X}{go[0]:.2f}{_DASH}{go[1]:.2f}' if go else _DASH):>11}  "
                f"{r['envelope']['order_violations']:>10}"
            )
        client = jxt["rounds"][0]["client"] if jxt["rounds"] else {}
        lines.append(f"client = {client.get('client') or client.get('error', '?')}")
        go = jxt.get("go")
        if go:
            ratio = jxt["ratio_to_go"]
            lines += [
                f"Go jxt-core: {_num(go['min'])}{_DASH}{_num(go['max'])} envelopes/s, {go['source']}",
                f"envelope leg: median {_num(jxt['msgs_per_s']['envelope']['median'])}/s = {_ratio(ratio['median'])} "
                f"of Go's midpoint; slowest round vs Go's best {_ratio(ratio['min'])}, fastest vs Go's worst "
                f"{_ratio(ratio['max'])}",
            ]
        else:
            lines.append(f"Go jxt-core: no figure for the {figures['backend']} backend")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- Markdown


def _leg_table(figures: Figures, leg: str) -> list[str]:
    noun = "envelopes" if leg == "envelope" else "messages"
    lines = [
        f"| {noun} | {noun}/s | p50 ms | p99 ms | order violations | duplicates | lost | peak RSS MiB "
        "(growth in the leg) | peak Trio tasks |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level, f in _series(figures, leg):
        label = f"{level:,}"
        if "rounds" in f:
            label += f" (jxt workload, median of {f['rounds']})"
        lines.append(
            f"| {label} | {_num(f['msgs_per_s'])} | {_ms(f['p50_ms'])} | {_ms(f['p99_ms'])} | "
            f"{f['order_violations']} | {f['duplicates']} | {f['lost']} | {_rss(f)} | {f['tasks']} |"
        )
    levels = [(lv, f) for lv, f in _series(figures, leg) if "rounds" not in f]
    if len(levels) >= 2:
        (lo, first), (hi, last) = levels[0], levels[-1]
        lines += [
            "",
            f"Scaling ({hi:,} vs {lo:,}): throughput {_ratio(_f(last['msgs_per_s']) / _f(first['msgs_per_s']))}.",
        ]
    return lines


def _rss(f: Figures) -> str:
    """Peak RSS, and its growth during the leg when known."""
    peak, start = _f(f.get("rss_mib")), _f(f.get("rss_start_mib"))
    return _num(peak, 1) + (f" (+{peak - start:.1f})" if math.isfinite(peak - start) else "")


def _jxt_tables(results: Sequence[Figures]) -> list[str]:
    rows = [f for f in results if f.get("jxt")]
    if not rows:
        return []
    lines = [
        "## The Go original's workload",
        "",
        f"{rows[0]['jxt']['workload']}; each round runs the envelope, raw and plain-client legs one after the other, "
        "so a round's ratios share the machine's state. Messages per second and ratios: min / median / max over the "
        "rounds.",
        "",
        "| backend | envelope leg | raw leg | plain client | envelope ÷ raw | envelope ÷ client | Go jxt-core "
        "(issue 15) | envelope ÷ Go |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def spread(s: Mapping[str, float]) -> str:
        return f"{_num(s['min'])} / {_num(s['median'])} / {_num(s['max'])}"

    def ratios(s: Mapping[str, float]) -> str:
        return f"{_ratio(s['min'])} / {_ratio(s['median'])} / {_ratio(s['max'])}"

    for f in rows:
        j = f["jxt"]
        go = j.get("go")
        lines.append(
            f"| {f['backend']} | {spread(j['msgs_per_s']['envelope'])} | {spread(j['msgs_per_s']['raw'])} | "
            f"{spread(j['msgs_per_s']['client'])} | {ratios(j['ratio_envelope_to_raw'])} | "
            f"{ratios(j['ratio_envelope_to_client'])} | "
            f"{(_num(go['min']) + _DASH + _num(go['max'])) if go else _DASH} | "
            f"{ratios(j['ratio_to_go']) if go else _DASH} |"
        )
    lines += [
        "",
        "Per round:",
        "",
        "| backend | round | envelope leg | raw leg | plain client | envelope ÷ client | envelope ÷ Go "
        "| order violations |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in rows:
        for n, r in enumerate(f["jxt"]["rounds"], 1):
            go = r.get("ratio_to_go")
            legs = " | ".join(_num(r[leg].get("msgs_per_s")) for leg in ("envelope", "raw", "client"))
            lines.append(
                f"| {f['backend']} | {n} | {legs} | {_ratio(r.get('ratio_envelope_to_client'))} | "
                f"{(_ratio(go[0]) + _DASH + _ratio(go[1])) if go else _DASH} | "
                f"{r['envelope'].get('order_violations')} |"
            )
    lines += [
        "",
        "Envelope ÷ Go: the slowest round against Go's best figure, the median against Go's midpoint, the fastest "
        "round against Go's worst figure. The Go figures are those issue 15 states for this machine; they are not "
        "re-measured here because the Go jxt-core library cannot be fetched (the module proxy refuses it). The "
        "plain-client leg of each round, measured in the same invocation, shows how far the machine has drifted "
        "since. Plain clients:",
        "",
    ]
    for f in rows:
        client = f["jxt"]["rounds"][0]["client"]
        lines.append(f"- {f['backend']}: {client.get('client') or 'failed: ' + client.get('error', '?')}")
    return lines


def markdown(results: Sequence[Figures], *, plots: bool) -> str:
    """The report page for ``results`` (one figures dict per backend); ``plots``: whether the PNGs exist."""
    first = results[0].get("machine", {}) if results else {}
    backends = ",".join(f["backend"] for f in results)
    lines = [
        "# Benchmarks: pressure levels and the Go original's workload",
        "",
        f"Generated by `python -m bench --report --backends {backends}` on {first.get('date', '?')} "
        f"(commit {first.get('commit', '?')}); the figures of one run, on a shared machine: read ratios within a "
        "run, not absolute figures across runs.",
        "",
        f"Machine: nproc {first.get('nproc', '?')} ({first.get('cpu', '?')}), {first.get('platform', '?')}, "
        f"{first.get('python', '?')}, trio {first.get('trio', '?')}, trio_eventbus {first.get('trio_eventbus', '?')}.",
        "",
        "| backend | broker | bridge | date | load average (1 min) at the start | publish form |",
        "|---|---|---|---|---:|---|",
    ]
    for f in results:
        m = f.get("machine", {})
        lines.append(
            f"| {f['backend']} | {m.get('broker', '?')} | {f.get('bridge') or _DASH} | {m.get('date', '?')} | "
            f"{_num(m.get('load_1min'), 2)} | {f.get('publish_form', '?')} |"
        )
    lines += [
        "",
        "Each level publishes that many messages over 100 aggregates to a subscriber started first, on a fresh bus "
        "and topic, as fast as the bus takes them; throughput runs from the first publish to the last handler "
        "call. Latency runs from the publish call to the handler call, so in these saturated runs it is mostly the "
        "queue that builds up ahead of the handlers. Order violations count handlings whose sequence is below one "
        "already handled for the same aggregate (the guarantee: 0). RSS is the process's peak resident set during "
        "the leg (each backend runs in a fresh process, its legs one after another: the heap of earlier legs is "
        "part of later figures; the growth within the leg is in brackets); tasks the peak size of Trio's task "
        "tree (a thread bridge's asyncio tasks are not counted). The harness is `bench/levels.py`; "
        "`python -m bench --backend B --levels --json` prints every figure.",
        "",
    ]
    if plots:
        lines += ["![throughput per level](throughput.png)", "", "![latency per level](latency.png)", ""]
    else:
        lines += ["Plots need matplotlib: `pip install -e .[bench]`, then run the report again.", ""]
    for f in results:
        lines += [f"## {f['backend']}", ""]
        for leg, title in _LEGS.items():
            lines += [f"### {title}", "", *_leg_table(f, leg), ""]
    lines += _jxt_tables(results)
    return "\n".join(lines).rstrip() + "\n"


# -------------------------------------------------------------------------------------------------- plots


def _plot(results: Sequence[Figures], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    xs_all = sorted({lv for f in results for leg in _LEGS for lv, _ in _series(f, leg)})

    def axes_style(ax: Axes, title: str, ylabel: str, ticks: FuncFormatter, subs: tuple[float, ...]) -> None:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs_all)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.yaxis.set_major_formatter(ticks)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=7, which="both")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)

    jxt = sorted({f["jxt"]["messages"] for f in results if f.get("jxt")})
    xlabel = "messages per level, over 100 aggregates" + (
        f" ({', '.join(f'{n:,}' for n in jxt)}: the jxt workload, median of its rounds)" if jxt else ""
    )
    per_s = FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}")
    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for f in results:
        colour = _COLOURS.get(f["backend"], "black")
        for leg, style in (("envelope", "-o"), ("raw", "--s")):
            points = _series(f, leg)
            if points:
                ax.plot(
                    [lv for lv, _ in points],
                    [_f(p["msgs_per_s"]) for _, p in points],
                    style,
                    color=colour,
                    label=f"{f['backend']} {leg}",
                    markersize=4,
                )
        go = (f.get("jxt") or {}).get("go")
        if go:
            mid = (go["min"] + go["max"]) / 2
            ax.errorbar(
                [f["jxt"]["messages"] * 1.08],  # beside the jxt point, not on it
                [mid],
                yerr=[[mid - go["min"]], [go["max"] - mid]],
                fmt="*",
                color=colour,
                markersize=10,
                capsize=3,
                label=f"{f['backend']}: Go jxt-core (issue 15)",
            )
    axes_style(ax, "Throughput per level (first publish → last handler)", "handled per second", per_s, (1, 2, 3, 5, 7))
    ax.set_xlabel(xlabel, fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    written = [out / PLOTS[0]]
    fig.savefig(written[0])

    ms = FuncFormatter(lambda v, _: f"{v:g}")
    fig = Figure(figsize=(3.6 * max(1, len(results)), 3.8), dpi=90, layout="constrained")
    for ax, f in zip(fig.subplots(1, max(1, len(results)), squeeze=False)[0], results, strict=False):
        for leg, colour in (("envelope", "#4c72b0"), ("raw", "#dd8452")):
            points = _series(f, leg)
            xs = [lv for lv, _ in points]
            ax.plot(xs, [_f(p["p50_ms"]) for _, p in points], "-o", color=colour, label=f"{leg} p50", markersize=3)
            ax.plot(xs, [_f(p["p99_ms"]) for _, p in points], ":^", color=colour, label=f"{leg} p99", markersize=3)
        axes_style(ax, f"{f['backend']}: latency, publish → handler", "ms", ms, (1, 2, 5))
        ax.set_xlabel("messages per level", fontsize=8)
        ax.legend(fontsize=7)
    written.append(out / PLOTS[1])
    fig.savefig(written[1])
    return written


def write_report(results: Sequence[Figures], out: Path, *, plots: bool = True) -> tuple[list[Path], str | None]:
    """Write ``out/README.md`` and (``plots`` and matplotlib installed) the PNGs; return the files written and a
    note when the plots were left out for want of matplotlib."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    note = None
    if plots:
        try:
            written = _plot(results, out)
        except ImportError:
            note = "plots need matplotlib: install the optional extra `bench` (pip install -e .[bench])"
    page = out / "README.md"
    page.write_text(markdown(results, plots=bool(written)), encoding="utf-8")
    return [page, *written], note
