"""A screenshot of the visual Turing test page (distsim.turing) with a test image shown.

    python -m experiments.turing_screenshot [--out docs/images/turing_page.png] [--run RUN_DIR]

Renders `--count` built-in eyes of the "real" and of the synthetic domain (35x55, fresh seeds)
into shard sets, serves the test on 127.0.0.1, answers a few trials in headless Chromium and
saves the page. Without --run the page runs the paper's reference condition, real vs
synthetic, alone. With --run it first refines the synthetic eyes with that run's newest
checkpoint (distsim.refine), and the page shows real vs refined (part 1 of 2, the condition the
test is for; real vs synthetic follows).

Needs Debian's chromium (/usr/bin/chromium) and the playwright Python package; never
`playwright install`, which downloads a browser of its own.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
from pathlib import Path

from distsim import refine
from distsim.turing.server import make_server
from distsim.turing.session import TuringSession
from shards.sources.sim_eyes import convert_sim_eyes

BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def screenshot(
    work: Path, out: Path, run: Path | None, count: int, answers: int, size: tuple[int, int]
) -> Path:
    real, synthetic = work / "real", work / "synthetic"
    # Seeds the training shards (0) never used, as in experiments/refine_check.py.
    convert_sim_eyes(real, "real", count, 11, progress=False)
    convert_sim_eyes(synthetic, "synthetic", count, 12, progress=False)
    refined = None
    if run is not None:
        refined = work / "refined"
        code = refine.main(["--run", str(run), "--input", str(synthetic), "--out", str(refined)])
        if code != 0:
            raise SystemExit(f"refining with {run} failed")
    session = TuringSession(
        work / "session",
        real,
        refined,
        synthetic,
        count=50,
        synthetic_count=10,
        default_subject="demo",
    )
    server = make_server(session)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise SystemExit("no chromium on PATH: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.goto(server.url)
            for key in ("ArrowLeft", "ArrowRight", "1", "2", "ArrowRight")[:answers]:
                page.wait_for_selector("body[data-mode=ready]")
                page.keyboard.press(key)
            page.wait_for_selector("body[data-mode=ready]")
            page.wait_for_function(
                "[...document.images].every((i) => i.complete && i.naturalWidth)"
            )
            page.mouse.move(0, 0)  # no hover highlight on a button
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/images/turing_page.png"))
    ap.add_argument("--run", type=Path, default=None, help="refine with this run's refiner")
    ap.add_argument("--count", type=int, default=300, help="eyes per shard set (300)")
    ap.add_argument("--answers", type=int, default=3, help="trials answered before the shot (3)")
    ap.add_argument("--size", type=int, nargs=2, default=(1280, 820), help="viewport (1280 820)")
    ap.add_argument("--work", type=Path, default=None, help="keep the shard sets and log here")
    args = ap.parse_args(argv)
    if args.work is not None:
        shutil.rmtree(args.work / "session", ignore_errors=True)  # a fresh subject each time
        path = screenshot(args.work, args.out, args.run, args.count, args.answers, args.size)
    else:
        with tempfile.TemporaryDirectory() as work:
            path = screenshot(Path(work), args.out, args.run, args.count, args.answers, args.size)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
