"""Per-position values over audio (a strip along time, under the waveform or spectrogram) and
over video (frames x rows x cols), as matplotlib figures and self-contained HTML.

The same conventions as the patch heatmaps: one colour scale per call (symmetric ``RdBu_r``
for signed values, ``viridis`` otherwise), ``values`` are ``[seq]`` or ``[batch, seq]``, and
the layout says where each position goes: audio step ``k`` of a clip covers
``[time[k], time[k] + step)`` seconds (steps along the x axis where times are unknown), video
position ``(frame, row, col)`` is cell ``(row, col)`` of frame panel ``frame``.

Example::

    from hooks_mm.vis import audio_strip, audio_strip_html, video_frames, video_frames_html
    attn = cache["blocks.1.attn.hook_pattern"][0, :, -1].mean(0)       # [seq] from the last token
    audio_strip(attn, layout, row=0, audio=[waveform]).savefig("audio.png")
    video_frames_html(attn, layout, row=0)                               # displays in Jupyter
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from hooks_mm.layout import Modality, ModalityLayout
from hooks_mm.vis.common import (
    color_limits,
    css_colors,
    draw_panel,
    finish_figure,
    panel_html,
    pick,
    png_data_uri,
    scale_html,
    thumbnail_uri,
    to_numpy,
)
from hooks_mm.vis.heatmap import PatchHeatmapHTML
from hooks_mm.vis.patches import row_values


@dataclass
class AudioTrack:
    """The values of one audio clip of one row, one per step, in time order."""

    row: int
    audio_index: int
    audio_id: int
    values: Float[np.ndarray, " steps"]
    positions: Int[np.ndarray, " steps"]
    start: Float[np.ndarray, " steps"]  # seconds (or step index where times are unknown)
    step: float  # width of one step in the same unit
    seconds: bool  # whether start / step are seconds

    @property
    def duration(self) -> float:
        return float(self.start[-1] + self.step - self.start[0]) if len(self.start) else 0.0


@dataclass
class VideoMap:
    """The values of one video of one row: ``[frames, rows, cols]`` (NaN: no position)."""

    row: int
    video_index: int
    video_id: int
    values: Float[np.ndarray, "frames rows cols"]
    positions: Int[np.ndarray, "frames rows cols"]
    times: Float[np.ndarray, " frames"]  # seconds of each frame (NaN unknown)
    extra: dict[int, tuple[float, int]]  # position -> (value, frame) of per-frame / separator tokens


def audio_tracks(values: Any, layout: ModalityLayout, row: int = 0) -> list[AudioTrack]:
    """One :class:`AudioTrack` per audio clip of batch row ``row``."""
    vals = row_values(values, layout, row)
    mod, aid = to_numpy(layout.modality[row]), to_numpy(layout.audio_id[row])
    index, frame, time = to_numpy(layout.audio_index[row]), to_numpy(layout.frame[row]), to_numpy(layout.time[row])
    out = []
    for k in sorted(set(aid[(aid >= 0) & (mod == Modality.AUDIO)].tolist())):
        pos = np.flatnonzero((aid == k) & (mod == Modality.AUDIO))
        pos = pos[np.argsort(frame[pos], kind="stable")]
        t = time[pos].astype(float)
        seconds = bool(np.isfinite(t).all())
        start = t if seconds else frame[pos].astype(float)
        step = float(np.median(np.diff(start))) if len(start) > 1 else 1.0
        out.append(AudioTrack(row, int(index[pos[0]]), int(k), vals[pos], pos, start, step, seconds))
    if not out:
        raise ValueError(f"row {row} holds no audio positions ({layout.describe(row)}).")
    return out


def video_maps(values: Any, layout: ModalityLayout, row: int = 0) -> list[VideoMap]:
    """One :class:`VideoMap` per video of batch row ``row``."""
    vals = row_values(values, layout, row)
    mod, vid = to_numpy(layout.modality[row]), to_numpy(layout.video_id[row])
    index, frame = to_numpy(layout.video_index[row]), to_numpy(layout.frame[row])
    r_, c_, time = to_numpy(layout.grid_row[row]), to_numpy(layout.grid_col[row]), to_numpy(layout.time[row])
    out = []
    for k in sorted(set(vid[(vid >= 0) & (mod == Modality.VIDEO)].tolist())):
        frames, rows, cols = layout.video_grids[k]
        v, p = np.full((frames, rows, cols), np.nan), np.full((frames, rows, cols), -1)
        times = np.full(frames, np.nan)
        extra = {}
        pos_all = np.flatnonzero((vid == k) & (mod == Modality.VIDEO))
        for pos in pos_all:
            f = frame[pos]
            times[f] = time[pos] if np.isnan(times[f]) else times[f]
            if c_[pos] >= 0 and r_[pos] >= 0:
                v[f, r_[pos], c_[pos]], p[f, r_[pos], c_[pos]] = vals[pos], pos
            else:
                extra[int(pos)] = (float(vals[pos]), int(f))
        out.append(VideoMap(row, int(index[pos_all[0]]), int(k), v, p, times, extra))
    if not out:
        raise ValueError(f"row {row} holds no video positions ({layout.describe(row)}).")
    return out


def _draw_spectrogram(ax: Any, wave: np.ndarray, sampling_rate: int, top: float, n_fft: int = 256) -> None:
    """Log power spectrogram of ``wave`` (hop n_fft / 4, Hann window, numpy only) on ``ax``, from 0 to ``top``."""
    hop = n_fft // 4
    padded = np.pad(np.asarray(wave, dtype=float), (0, max(0, n_fft - len(wave))))
    n = 1 + (len(padded) - n_fft) // hop
    frames = np.stack([padded[i * hop : i * hop + n_fft] * np.hanning(n_fft) for i in range(n)])
    spec = np.log1p(np.abs(np.fft.rfft(frames, axis=-1)) ** 2).T
    ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", extent=(0, len(wave) / sampling_rate, 0, top))


# ---------------------------------------------------------------------------------------
# audio


def audio_strip(
    values: Any,
    layout: ModalityLayout,
    row: int = 0,
    *,
    clip: int | None = None,
    audio: Sequence[Any] | None = None,
    sampling_rate: int = 16000,
    spectrogram: bool = False,
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    width: float = 7.0,
):
    """A matplotlib Figure: per clip of ``row``, the waveform (or spectrogram, ``audio[i]``
    being clip ``i``'s samples) above a strip of one coloured cell per step along time.

    Axes are labelled ``"audio{i}/signal"`` and ``"audio{i}/strip"``; the strip's x axis is
    seconds (steps where the layout has no times), one cell = ``[t, t + step)``.
    """
    from matplotlib.figure import Figure

    tracks = pick(audio_tracks(values, layout, row), clip, "audio_index", "audio clip")
    lo, hi, cm = color_limits(*(t.values for t in tracks), vmin=vmin, vmax=vmax, cmap=cmap)
    show_signal = audio is not None
    heights = [1.2, 0.45] * len(tracks) if show_signal else [0.45] * len(tracks)
    fig = Figure(figsize=(width, sum(heights) + 0.9 * len(tracks)), layout="constrained")
    axes = fig.subplots(len(heights), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    mappable = None
    for i, t in enumerate(tracks):
        x0, x1 = float(t.start[0]), float(t.start[0]) + t.duration
        strip = axes[2 * i + 1] if show_signal else axes[i]
        if show_signal and t.audio_index < len(audio):
            ax = axes[2 * i]
            wave = np.asarray(audio[t.audio_index], dtype=float)
            if spectrogram:
                _draw_spectrogram(ax, wave, sampling_rate, sampling_rate / 2)
                ax.set_ylabel("Hz", fontsize=7)
            else:
                ax.plot(np.arange(len(wave)) / sampling_rate, wave, color="#555", lw=0.6)
                ax.set_yticks([])
            ax.set_xlim(x0, x1)
            ax.set_xticks([])
            ax.set_label(f"audio{t.audio_index}/signal")
            ax.set_title(f"audio {t.audio_index} \u00b7 {len(t.values)} steps", fontsize=8)
        edges = np.append(t.start, t.start[-1] + t.step)
        mappable = strip.pcolormesh(edges, [0, 1], np.ma.masked_invalid(t.values[None, :]), cmap=cm, vmin=lo, vmax=hi)
        strip.set_xlim(x0, x1)
        strip.set_ylim(0, 1)
        strip.set_yticks([])
        strip.set_xlabel("seconds" if t.seconds else "step", fontsize=7)
        strip.tick_params(labelsize=7)
        strip.set_label(f"audio{t.audio_index}/strip")
        if not show_signal:
            strip.set_title(f"audio {t.audio_index} \u00b7 {len(t.values)} steps", fontsize=8)
    return finish_figure(fig, mappable, axes, title)


def _wave_svg(wave: np.ndarray, width: int, height: int, seconds: float, sampling_rate: int) -> str:
    """An SVG envelope (min/max per pixel column) of the first ``seconds`` of ``wave``."""
    n = max(1, min(len(wave), int(round(seconds * sampling_rate))))
    cols = np.array_split(np.asarray(wave[:n], dtype=float), width)
    peak = max(1e-9, float(np.abs(wave[:n]).max()))
    pts = []
    for x, c in enumerate(cols):
        if len(c):
            top, bot = height / 2 * (1 - c.max() / peak), height / 2 * (1 - c.min() / peak)
            pts.append(f"M{x + 0.5:.1f},{top:.1f}V{bot:.1f}")
    return (
        f'<svg class="hmm-wave" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'style="display:block"><path d="{"".join(pts)}" stroke="#555" stroke-width="1" fill="none"/></svg>'
    )


def audio_strip_html(
    values: Any,
    layout: ModalityLayout,
    row: int = 0,
    *,
    clip: int | None = None,
    audio: Sequence[Any] | None = None,
    sampling_rate: int = 16000,
    spectrogram: bool = False,
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    width: int = 600,
    strip_height: int = 18,
) -> PatchHeatmapHTML:
    """The strip of :func:`audio_strip` as HTML (no JavaScript): per clip, the waveform (SVG)
    or spectrogram (PNG) over a row of cells placed along time (``data-t0`` / ``data-t1`` in
    seconds, ``data-pos`` the sequence position; hover shows the value)."""
    tracks = pick(audio_tracks(values, layout, row), clip, "audio_index", "audio clip")
    scale = color_limits(*(t.values for t in tracks), vmin=vmin, vmax=vmax, cmap=cmap)
    blocks = []
    for t in tracks:
        x0, dur = float(t.start[0]), t.duration
        unit = "s" if t.seconds else " steps"
        signal = ""
        if audio is not None and t.audio_index < len(audio):
            wave = np.asarray(audio[t.audio_index], dtype=float)
            if spectrogram and t.seconds:
                from matplotlib.figure import Figure

                fig = Figure(figsize=(width / 100, 0.8), dpi=100)
                ax = fig.add_axes((0, 0, 1, 1))
                _draw_spectrogram(ax, wave, sampling_rate, 1)
                ax.set_xlim(x0, x0 + dur)
                ax.axis("off")
                uri = png_data_uri(fig, dpi=100)
                signal = f'<img class="hmm-spec" src="{uri}" style="display:block;width:{width}px;height:80px" alt="">'
            elif t.seconds:
                signal = _wave_svg(wave, width, 60, x0 + dur, sampling_rate)
        cells = []
        colors = css_colors(t.values, *scale)
        for k, (v, p, s, c) in enumerate(zip(t.values, t.positions, t.start, colors)):
            left, w = (s - x0) / dur * width, t.step / dur * width
            tip = f"pos {p} \u00b7 step {k} \u00b7 {s:.3g}{unit} \u00b7 {v:.4g}"
            cells.append(
                f'<div class="hmm-cell hmm-step" data-pos="{p}" data-step="{k}" data-t0="{s:.6g}" '
                f'data-t1="{s + t.step:.6g}" data-v="{v:.6g}" title="{html.escape(tip)}" '
                f'style="position:absolute;left:{left:.3f}px;width:{w:.3f}px;top:0;bottom:0;background:{c}"></div>'
            )
        strip = (
            f'<div class="hmm-strip" style="position:relative;width:{width}px;height:{strip_height}px;'
            f'background:#eee">{"".join(cells)}</div>'
        )
        axis = (
            f'<div class="hmm-note" style="display:flex;justify-content:space-between;width:{width}px">'
            f"<span>{x0:.3g}{unit}</span><span>{x0 + dur:.3g}{unit}</span></div>"
        )
        blocks.append(
            f'<div class="hmm-panel hmm-audio" data-audio="{t.audio_index}" data-start="{x0:.6g}" '
            f'data-duration="{dur:.6g}" data-seconds="{int(t.seconds)}">'
            f'<div class="hmm-panel-title">audio {t.audio_index} \u00b7 {len(t.values)} steps '
            f"\u00b7 {dur:.3g}{unit}</div>"
            f"{signal}{strip}{axis}</div>"
        )
    return PatchHeatmapHTML(
        f'<div class="hmm-heatmap hmm-audio-strips">{scale_html(scale, title)}<div class="hmm-grids" '
        f'style="flex-direction:column">{"".join(blocks)}</div></div>'
    )


# ---------------------------------------------------------------------------------------
# video


def _frame_images(videos: Sequence[Any] | None, video_index: int, n_frames: int) -> list[Any | None]:
    """One PIL frame per LM frame (the first decoded frame of each temporal patch)."""
    if videos is None or video_index >= len(videos):
        return [None] * n_frames
    frames = list(videos[video_index])
    per = max(1, math.ceil(len(frames) / n_frames))
    return [frames[min(f * per, len(frames) - 1)] for f in range(n_frames)]


def video_frames(
    values: Any,
    layout: ModalityLayout,
    row: int = 0,
    *,
    video: int | None = None,
    videos: Sequence[Any] | None = None,
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.65,
    title: str | None = None,
    panel_size: float = 1.6,
):
    """A matplotlib Figure: one row of frame panels per video of ``row``, each the
    ``rows x cols`` cell grid of that frame (over the frame when ``videos`` gives the PIL
    frames). Axes are labelled ``"video{i}/frame{t}"``."""
    from matplotlib.figure import Figure

    maps = pick(video_maps(values, layout, row), video, "video_index", "video")
    scale = color_limits(*(m.values for m in maps), vmin=vmin, vmax=vmax, cmap=cmap)
    n_cols = max(m.values.shape[0] for m in maps)
    aspect = max(m.values.shape[2] / max(1, m.values.shape[1]) for m in maps)
    fig = Figure(figsize=(panel_size * aspect * n_cols + 1.2, (panel_size + 0.5) * len(maps)), layout="constrained")
    axes = fig.subplots(len(maps), n_cols, squeeze=False)
    mappable = None
    for i, m in enumerate(maps):
        images = _frame_images(videos, m.video_index, m.values.shape[0])
        for f in range(n_cols):
            if f >= len(images):
                axes[i, f].axis("off")
                continue
            when = f" \u00b7 {m.times[f]:.2g}s" if np.isfinite(m.times[f]) else ""
            mappable = draw_panel(
                axes[i, f],
                m.values[f],
                scale,
                image=images[f],
                alpha=alpha if images[f] is not None else 1.0,
                title=f"video {m.video_index} \u00b7 frame {f}{when}",
                label=f"video{m.video_index}/frame{f}",
                fontsize=7,
            )
    return finish_figure(fig, mappable, axes.ravel(), title)


def video_frames_html(
    values: Any,
    layout: ModalityLayout,
    row: int = 0,
    *,
    video: int | None = None,
    videos: Sequence[Any] | None = None,
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.65,
    title: str | None = None,
    size: int = 120,
) -> PatchHeatmapHTML:
    """The panels of :func:`video_frames` as HTML cells: per video a row of frame panels
    (``data-video``, ``data-frame``), each a ``rows x cols`` grid (``data-r``, ``data-c``,
    ``data-pos``). Per-frame tokens (CLS) and separators are listed under the frames."""
    maps = pick(video_maps(values, layout, row), video, "video_index", "video")
    scale = color_limits(*(m.values for m in maps), vmin=vmin, vmax=vmax, cmap=cmap)
    blocks = []
    for m in maps:
        frames, rows, cols = m.values.shape
        cell = max(4, size // max(rows, cols))
        images = _frame_images(videos, m.video_index, frames)
        panels = []
        for f in range(frames):
            grid = panel_html(m.values[f], m.positions[f], scale, cell, thumbnail_uri(images[f], size), alpha)
            when = f" \u00b7 {m.times[f]:.3g}s" if np.isfinite(m.times[f]) else ""
            panels.append(
                f'<div class="hmm-panel hmm-frame" data-video="{m.video_index}" data-frame="{f}">'
                f'<div class="hmm-panel-title">frame {f}{when}</div>{grid}</div>'
            )
        extra = ""
        if m.extra:
            items = [f"pos {p} (frame {f}): {v:.4g}" for p, (v, f) in sorted(m.extra.items())]
            extra = f'<div class="hmm-note">other video tokens: {html.escape("; ".join(items))}</div>'
        blocks.append(
            f'<div class="hmm-video" data-video="{m.video_index}"><div class="hmm-panel-title">'
            f"video {m.video_index} \u00b7 {frames} frames x {rows}x{cols}</div>"
            f'<div class="hmm-grids">{"".join(panels)}</div>{extra}</div>'
        )
    return PatchHeatmapHTML(
        f'<div class="hmm-heatmap hmm-video-frames">{scale_html(scale, title)}{"".join(blocks)}</div>'
    )
