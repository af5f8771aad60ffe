"""`PredictionView`: a model server's answers on MNIST test digits, live in the notebook.

A grid of digits, each with the predicted digit and its confidence, framed green
when right and red when wrong; the running accuracy, the model version and the
last request's latency; "Next batch" and "Only mistakes". With ``refresh=3.0`` it
checks every 3 s for a new model version (a training job exporting) and predicts
the same digits again, so they turn green as the model learns; it stops when
the job ends or the view is closed. A server that stops answering is said in
words, and the view recovers when it answers again.

A pure view over `kfnb.serving.feed.PredictionFeed`: all state is the feed's.
Requests run in a background thread, never on the kernel's.
"""

from __future__ import annotations

import base64
import html
import io
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import numpy as np

from kfnb.serving.client import Predictor, to_pixels
from kfnb.serving.feed import FeedState, PredictionFeed, Tile

__all__ = ["PredictionView"]

RIGHT, WRONG, MUTED = "#2e7d32", "#c62828", "#666"
_COLUMNS = 8


def png_data_uri(pixels: np.ndarray) -> str:
    """A 28x28 [0, 1] image as a PNG data URI (drawn scaled up, pixelated, by the browser)."""
    from PIL import Image

    buffer = io.BytesIO()
    grey = np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(grey, mode="L").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class PredictionView(widgets.VBox):  # type: ignore[misc]
    """Live predictions of the model at ``server`` (a URL or a `Predictor`) on test digits.

    ``job``: a `Job` (anything with ``status().finished``) whose exported versions
    are served; with ``refresh`` (seconds) the view follows new versions until
    that job ends. ``serve_command`` is the command the view tells the user to
    restart a server with (default ``%serve JOB --name MODEL``).
    """

    def __init__(
        self,
        server: str | Predictor,
        *,
        model: str = "mnist",
        batch_size: int = 16,
        images: Any = None,
        labels: Any = None,
        job: Any = None,
        refresh: float | None = None,
        serve_command: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if isinstance(server, Predictor):
            predictor = server
        else:
            predictor = Predictor(server, model, timeout=timeout)
        self.feed = PredictionFeed(predictor, images, labels, batch_size)
        self.job = job
        self.refresh_seconds = refresh
        job_name = getattr(job, "name", None) or "JOB_OR_PATH"
        self.serve_command = serve_command or f"%serve {job_name} --name {predictor.model}"
        self._png: dict[int, str] = {}
        self._lock = threading.Lock()  # one request at a time; renders in order
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

        self.header = widgets.HTML()
        self.notice = widgets.HTML()
        self.grid = widgets.HTML()
        fit = widgets.Layout(width="auto")  # the default width cuts "Only mistakes" short
        self.next_button = widgets.Button(
            description="Next batch",
            icon="forward",
            tooltip="Predict the next test digits",
            layout=fit,
        )
        self.mistakes_toggle = widgets.ToggleButton(
            value=False, description="Only mistakes", icon="times",
            tooltip="Show only digits the model gets wrong", layout=fit,
        )  # fmt: skip
        self.next_button.on_click(lambda _: self._in_background(self.feed.next_batch))
        self.mistakes_toggle.observe(self._on_toggle, names="value")
        super().__init__(
            children=[
                self.header,
                widgets.HBox([self.next_button, self.mistakes_toggle]),
                self.notice,
                self.grid,
            ]
        )
        self.add_class("kfnb-predictionview")
        self.render(self.feed.load())
        if refresh:
            self._thread = threading.Thread(
                target=self._follow, name=f"kfnb-predictions-{predictor.model}", daemon=True
            )
            self._thread.start()

    # -- rendering (state -> traits)

    def render(self, state: FeedState) -> None:
        self.header.value = self._header(state)
        self.notice.value = self._notice(state)
        self.grid.value = self._grid(state)
        self.next_button.disabled = False

    def _header(self, state: FeedState) -> str:
        predictor = self.feed.predictor
        version = "" if state.version is None else f" version {state.version}"
        parts = [
            f'<b class="kfnb-model">{html.escape(predictor.model)}{version}</b> '
            f'<span style="color:{MUTED}">at {html.escape(predictor.url)}</span>'
        ]
        if state.accuracy is not None:
            parts.append(
                f'accuracy <b class="kfnb-accuracy">{state.accuracy:.1%}</b> '
                f"({state.correct} of {state.seen} digits)"
            )
        if state.latency is not None:
            parts.append(
                f'last request <b class="kfnb-latency">{state.latency * 1000:.1f} ms</b> '
                f"({state.request_images} images)"
            )
        return '<div class="kfnb-header" style="margin-right:12px">' + " · ".join(parts) + "</div>"

    def _notice(self, state: FeedState) -> str:
        err = state.error
        if err is not None and err.server_down:
            text = (
                f"model server at {html.escape(self.feed.predictor.url)} is not answering: "
                "restart it with "
                f"<code>{html.escape(self.serve_command)}</code>"
            )
            if self._thread is not None:
                text += f" (checking again every {self.refresh_seconds:g} s)"
        elif err is not None:
            text = html.escape(str(err))
        elif state.only_mistakes and len(state.tiles) < self.feed.batch_size:
            text = (
                f"only {len(state.tiles)} mistakes in all {len(self.feed)} test digits"
                if state.tiles
                else f"no mistakes in all {len(self.feed)} test digits"
            )
            return f'<div class="kfnb-info" style="color:{MUTED}">{text}</div>'
        else:
            return ""
        return f'<div class="kfnb-error" style="color:{WRONG};font-weight:bold">{text}</div>'

    def _grid(self, state: FeedState) -> str:
        stale = "opacity:0.45;" if state.error is not None else ""
        tiles = "".join(self._tile(tile) for tile in state.tiles)
        return (
            f'<div class="kfnb-grid" style="display:grid;{stale}'
            f'grid-template-columns:repeat({_COLUMNS}, 84px);gap:8px;padding:4px 0">{tiles}</div>'
        )

    def _tile(self, tile: Tile) -> str:
        colour = RIGHT if tile.correct else WRONG
        truth = "" if tile.correct else f'<span style="color:{MUTED}"> (is {tile.label})</span>'
        return (
            f'<div class="kfnb-tile {"kfnb-right" if tile.correct else "kfnb-wrong"}" '
            f'data-index="{tile.index}" data-label="{tile.label}" '
            f'data-predicted="{tile.predicted}" style="border:3px solid {colour};'
            'border-radius:6px;padding:4px;text-align:center;background:white">'
            f'<img src="{self._image(tile.index)}" width="56" height="56" alt="test digit '
            f'{tile.index}" style="image-rendering:pixelated;display:block;margin:0 auto">'
            f'<div class="kfnb-answer" style="color:{colour};font-weight:bold;font-size:15px">'
            f"{tile.predicted}{truth}</div>"
            f'<div style="color:{MUTED};font-size:12px">{tile.confidence:.0%}</div></div>'
        )

    def _image(self, index: int) -> str:
        uri = self._png.get(index)
        if uri is None:  # digits never change: each is encoded once
            uri = self._png[index] = png_data_uri(to_pixels(self.feed.images[index])[0])
        return uri

    # -- actions and the refresh thread

    def _on_toggle(self, change: dict[str, Any]) -> None:
        on = bool(change["new"])
        self._in_background(lambda: self.feed.set_only_mistakes(on))

    def _in_background(self, action: Callable[[], FeedState]) -> None:
        """Requests take up to ``timeout``: not on the kernel's thread."""
        self.next_button.disabled = True

        def run() -> None:
            with self._lock:
                self.render(action())

        threading.Thread(target=run, name="kfnb-predictions-action", daemon=True).start()

    def check(self) -> bool:
        """One refresh: predict again if the served version changed or the server is back.

        Returns True when the view has nothing more to follow (its job has ended).
        """
        with self._lock:
            state = self.feed.state
            try:
                changed = self.feed.served_version() != state.version
            except Exception:  # down: the predict below words it, and we retry later
                changed = True
            if changed or state.error is not None:
                state = self.feed.load()
                self.render(state)
        return self._job_ended() and state.error is None

    def _job_ended(self) -> bool:
        if self.job is None:
            return False
        try:
            return bool(self.job.status().finished)
        except Exception:  # the job's record is gone: nothing more will be exported
            return True

    def _follow(self) -> None:
        assert self.refresh_seconds is not None
        ended_checks = 0
        while not self._closed.wait(self.refresh_seconds):
            # After the job ends, one more look: the server loads its last export a moment later.
            if self.check():
                ended_checks += 1
                if ended_checks > 1:
                    break

    @property
    def following(self) -> bool:
        """True while the refresh thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def __repr__(self) -> str:
        state = self.feed.state
        accuracy = "" if state.accuracy is None else f", accuracy {state.accuracy:.1%}"
        return f"PredictionView({self.feed.predictor!r}{accuracy})"

    def close(self) -> None:
        """Stop following new versions; then close the widgets."""
        self._closed.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=15)
        self.feed.predictor.close()
        super().close()
