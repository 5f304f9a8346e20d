"""Audio strips and video frame grids: a value planted at a known audio time / video frame
cell lands at the right place, in the PNG's pixels, in the HTML cells and (browser) on the
rendered page. Expected places come from the input ids and the feature arithmetic, not from
the layout."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from browser import CHROMIUM, Chromium, find_chromium
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg

from hooks_mm import HookedMLLM, zoo
from hooks_mm.media import moving_square, tone
from hooks_mm.vis import audio_strip, audio_strip_html, audio_tracks, page, video_frames, video_frames_html, video_maps

HOT = np.array(colormaps["viridis"](1.0)[:3]) * 255
COLD = np.array(colormaps["viridis"](0.0)[:3]) * 255
HOT_CSS = "rgba({},{},{},1)".format(*(round(x) for x in HOT))
_MODELS: dict[str, tuple] = {}


def model_and_layout(family: str):
    if family not in _MODELS:
        tiny = zoo.build(family)
        _MODELS[family] = (tiny, HookedMLLM(tiny.model, tiny.processor).layout(tiny.inputs))
    return _MODELS[family]


def audio_case(t_plant: float = 0.4):
    """Omni row 0: the audio step holding ``t_plant`` s of the 1.0 s clip (40 ms steps)."""
    tiny, layout = model_and_layout("qwen2_5_omni")
    ids = tiny.inputs["input_ids"][0]
    first = int((ids == tiny.model.config.audio_token_id).nonzero()[0])
    step = int(t_plant / 0.04)
    return tiny, layout, first + step, step * 0.04, 0.04, 1.0


def video_case(frame: int = 1, r: int = 1, c: int = 2):
    """Qwen2.5-VL video row 0: 2 LM frames of 2x3 cells, row-major, frame after frame."""
    tiny, layout = model_and_layout("qwen2_5_vl_video")
    pos = (tiny.inputs["input_ids"][0] == tiny.model.config.video_token_id).nonzero().flatten()
    return tiny, layout, int(pos[frame * 6 + r * 3 + c]), (frame, r, c)


def render(fig) -> tuple[np.ndarray, dict]:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(float), {ax.get_label(): ax for ax in fig.axes}


def pixel(buf: np.ndarray, ax, x: float, y: float) -> np.ndarray:
    px, py = ax.transData.transform((x, y))
    return buf[round(buf.shape[0] - py), round(px)]


def test_audio_value_lands_at_its_time_in_the_png() -> None:
    _, layout, pos, t0, step, _ = audio_case()
    values = torch.zeros(layout.shape)
    values[0, pos] = 1.0
    buf, axes = render(audio_strip(values, layout, 0, audio=[tone(1.0)]))
    ax = axes["audio0/strip"]
    for k in range(25):
        want = HOT if abs(k * step - t0) < 1e-9 else COLD
        got = pixel(buf, ax, k * step + step / 2, 0.5)
        assert np.abs(got - want).max() < 8, f"step {k} at {k * step:.2f}s is {got}"
    assert "audio0/signal" in axes  # the waveform above the strip


class Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self.panel = [], {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "hmm-frame" in a.get("class", "").split():
            self.panel = a
        if "hmm-cell" in a.get("class", "").split():
            self.cells.append({**{k: v for k, v in self.panel.items() if k.startswith("data-")}, **a})


def test_audio_value_lands_at_its_time_in_the_html() -> None:
    _, layout, pos, t0, step, dur = audio_case()
    values = torch.zeros(layout.shape)
    values[0, pos] = 1.0
    parser = Cells()
    parser.feed(audio_strip_html(values, layout, 0, width=500).html)
    hot = [c for c in parser.cells if HOT_CSS in c["style"]]
    assert len(hot) == 1 and int(hot[0]["data-pos"]) == pos
    assert float(hot[0]["data-t0"]) == pytest.approx(t0) and float(hot[0]["data-t1"]) == pytest.approx(t0 + step)
    assert f"left:{t0 / dur * 500:.3f}px" in hot[0]["style"]


def test_video_value_lands_in_its_frame_cell() -> None:
    _, layout, pos, (f, r, c) = video_case()
    values = torch.zeros(layout.shape)
    values[0, pos] = 1.0
    maps = video_maps(values, layout, 0)
    assert maps[0].values.shape == (2, 2, 3) and maps[0].values[f, r, c] == 1 and np.nansum(maps[0].values) == 1
    buf, axes = render(video_frames(values, layout, 0))
    for ff in range(2):
        for rr in range(2):
            for cc in range(3):
                want = HOT if (ff, rr, cc) == (f, r, c) else COLD
                got = pixel(buf, axes[f"video0/frame{ff}"], cc + 0.5, rr + 0.5)
                assert np.abs(got - want).max() < 8, f"frame {ff} cell {(rr, cc)} is {got}"
    parser = Cells()
    parser.feed(video_frames_html(values, layout, 0).html)
    hot = [(int(x["data-frame"]), int(x["data-r"]), int(x["data-c"])) for x in parser.cells if HOT_CSS in x["style"]]
    assert hot == [(f, r, c)]


def test_every_media_position_is_drawn_once() -> None:
    for family in (
        "qwen2_5_omni",
        "qwen2_audio",
        "voxtral",
        "anygpt_audio",
        "qwen2_vl_video",
        "llava_onevision_video",
        "video_llava",
        "llava_next_video",
    ):
        _, layout = model_and_layout(family)
        seq = torch.arange(layout.shape[1]).float()
        for row in range(layout.shape[0]):
            mod = layout.modality[row]
            if (mod == 5).any():
                drawn = [p for t in audio_tracks(seq, layout, row) for p in t.positions.tolist()]
                assert sorted(drawn) == (mod == 5).nonzero().flatten().tolist(), family
            if (mod == 4).any():
                maps = video_maps(seq, layout, row)
                drawn = [p for m in maps for p in m.positions[m.positions >= 0].tolist()] + [
                    p for m in maps for p in m.extra
                ]
                assert sorted(drawn) == (mod == 4).nonzero().flatten().tolist(), family


def test_bad_input_is_named() -> None:
    _, layout = model_and_layout("qwen2_5_omni")
    with pytest.raises(ValueError, match="do not match the layout"):
        audio_tracks(torch.zeros(3), layout, 0)
    with pytest.raises(ValueError, match="holds no video positions"):
        video_maps(torch.zeros(layout.shape), layout, 1)
    with pytest.raises(ValueError, match="audio clip 2 is not in this row"):
        audio_strip_html(torch.zeros(layout.shape), layout, 0, clip=2)


# --- in real headless Chromium ----------------------------------------------------------

browser_only = pytest.mark.skipif(find_chromium() is None, reason=f"Chromium is not installed ({CHROMIUM} missing)")


@pytest.fixture(scope="module")
def browser():
    with Chromium() as b:
        yield b


def _rect(browser, selector: str, index: int = 0) -> dict:
    return browser.evaluate(
        f"(() => {{ const r = document.querySelectorAll({selector!r})[{index}].getBoundingClientRect();"
        " return {x: r.x, y: r.y, w: r.width, h: r.height}; })()"
    )


@browser_only
def test_planted_audio_time_and_video_cell_land_in_place_in_the_browser(browser, tmp_path) -> None:
    _, a_layout, a_pos, t0, step, dur = audio_case(0.6)
    _, v_layout, v_pos, (f, r, c) = video_case(1, 1, 2)
    a_vals, v_vals = torch.zeros(a_layout.shape), torch.zeros(v_layout.shape)
    a_vals[0, a_pos], v_vals[0, v_pos] = 1.0, 1.0
    width = 500
    path = tmp_path / "media.html"
    path.write_text(
        page(
            [
                audio_strip_html(a_vals, a_layout, 0, audio=[tone(1.0)], width=width, title="audio"),
                video_frames_html(v_vals, v_layout, 0, size=120, title="video"),
            ]
        )
    )
    loaded = browser.open(path)
    assert not loaded.external and not loaded.errors
    # audio: the hot cell starts at t0 / duration of the strip's width, and is one step wide
    strip = _rect(browser, ".hmm-strip")
    hot_rgb = HOT_CSS.replace("rgba", "rgb").replace(",1)", ")")
    hot = browser.evaluate(
        "[...document.querySelectorAll('.hmm-step')]"
        f".findIndex(e => e.style.background.replace(/ /g, '') === {hot_rgb!r})"
    )
    assert hot == round(t0 / step)
    cell = _rect(browser, ".hmm-step", hot)
    assert abs(cell["x"] - strip["x"] - t0 / dur * width) <= 1 and abs(cell["w"] - step / dur * width) <= 1
    shot = np.asarray(browser.screenshot(".hmm-strip")).astype(float)
    y = shot.shape[0] // 2
    for k in range(round(dur / step)):
        x = int((k + 0.5) * step / dur * shot.shape[1])
        want = HOT if k == round(t0 / step) else COLD
        assert np.abs(shot[y, x] - want).max() < 10, f"audio step {k} at x={x}: {shot[y, x]}"
    # video: in the frame-1 panel, the cell at (row 1, col 2) is the hot one; frame 0 all cold
    for frame in range(2):
        grid = np.asarray(browser.screenshot(".hmm-frame .hmm-grid", frame)).astype(float)
        h, w = grid.shape[:2]
        for rr in range(2):
            for cc in range(3):
                got = grid[int((rr + 0.5) * h / 2), int((cc + 0.5) * w / 3)]
                want = HOT if (frame, rr, cc) == (f, r, c) else COLD
                assert np.abs(got - want).max() < 10, f"frame {frame} cell {(rr, cc)}: {got}"
    assert browser.evaluate("document.querySelectorAll('.hmm-frame')[1].dataset.frame") == str(f)


@browser_only
def test_media_views_over_signals_render_offline(browser, tmp_path) -> None:
    _, layout = model_and_layout("qwen2_5_omni")
    values = torch.rand(layout.shape)
    path = tmp_path / "signals.html"
    path.write_text(
        page(
            [
                audio_strip_html(values, layout, 0, audio=[tone(1.0)]),
                audio_strip_html(values, layout, 0, audio=[tone(1.0)], spectrogram=True),
                video_frames_html(values, layout, 0, videos=[moving_square(4, 56, 84)]),
            ]
        )
    )
    loaded = browser.open(path, ready="[...document.images].every(i => i.complete)")
    assert not loaded.external and not loaded.errors
    assert browser.evaluate("document.querySelectorAll('svg.hmm-wave path').length") == 1
    assert browser.evaluate("[...document.querySelectorAll('img.hmm-spec')].every(i => i.naturalWidth > 100)")
    assert browser.evaluate("document.querySelectorAll('.hmm-frame img').length") == 2
