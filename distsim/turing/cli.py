"""The command line of the Turing test: serve the page, or (``--summary``) summarise DIR."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from distsim.turing.common import PROG, TITLES, TuringError
from distsim.turing.images import DISPLAYS
from distsim.turing.server import is_loopback, make_server
from distsim.turing.session import EXAMPLES, LOG_NAME, TuringSession, read_log
from distsim.turing.stats import summary_markdown, write_summary
from shards.cliutil import non_negative_int, one_line, positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The paper's visual Turing test (Table 1) as a local web page: subjects "
        "label images as real or refined (and, with --synthetic, real or synthetic) with "
        f"{EXAMPLES} labelled examples of each kind in view. Every answer is appended to "
        f"DIR/{LOG_NAME} as it is given; summary.json and summary.md in DIR hold the confusion "
        "matrix, accuracy and a one-sided binomial p-value (the paper's test that accuracy > "
        "50%), over all subjects and per subject. Keys on the page: left arrow or 1 = real, "
        "right arrow or 2 = refined (synthetic).",
    )
    parser.add_argument("--real", type=Path, help="shard set of real images")
    parser.add_argument("--refined", type=Path, help="shard set of refined images")
    parser.add_argument(
        "--synthetic",
        type=Path,
        help="shard set of unrefined synthetic images: adds the paper's reference condition, "
        "real vs synthetic, run after real vs refined (assumed paired with --refined by index)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help=f"directory for {LOG_NAME} and the summaries"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (127.0.0.1; beyond loopback, anyone who can reach it can "
        "take the test, and a warning says so)",
    )
    parser.add_argument(
        "--port", type=non_negative_int, default=0, help="port (0: a free one; the URL is printed)"
    )
    parser.add_argument(
        "--count",
        type=positive_int,
        default=50,
        help="test images of each kind per subject, real vs refined (50: the paper's 50 + 50)",
    )
    parser.add_argument(
        "--synthetic-count",
        type=positive_int,
        default=10,
        help="test images of each kind per subject, real vs synthetic (10: the paper's 200 "
        "answers from 10 subjects)",
    )
    parser.add_argument(
        "--examples",
        type=positive_int,
        default=EXAMPLES,
        help=f"labelled examples of each kind kept in view ({EXAMPLES}, as in the paper)",
    )
    parser.add_argument(
        "--subject",
        default=None,
        help="the page's default subject name (without it the page asks; ?subject=NAME in the "
        "URL picks one)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="chooses examples and test images (0)"
    )
    parser.add_argument(
        "--scale",
        type=positive_int,
        default=None,
        help="test images' enlargement (default: the most that fits 330 x 240 px, 6x for "
        "35x55 eyes); "
        "examples are shown at a third of it, at most 80 px tall",
    )
    parser.add_argument(
        "--display",
        choices=DISPLAYS,
        default="auto",
        help="auto: depth images (marked so, or 1-channel uint16/float32) through a colour "
        "map, others as grey or RGB",
    )
    parser.add_argument(
        "--colormap", default="viridis", help="matplotlib colour map for depth (viridis)"
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="write summary.json and summary.md from DIR's answers, print the markdown, exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.summary:
            if args.out.exists() and not args.out.is_dir():
                raise TuringError(f"{args.out}: --out exists and is not a directory")
            if not (args.out / LOG_NAME).is_file():
                raise TuringError(f"{args.out}: no {LOG_NAME} to summarise")
            summary = write_summary(args.out, read_log(args.out / LOG_NAME))
            print(summary_markdown(summary), end="")
            return 0
        if args.real is None:
            raise TuringError("--real is required (unless --summary)")
        session = TuringSession(
            args.out,
            args.real,
            args.refined,
            args.synthetic,
            count=args.count,
            synthetic_count=args.synthetic_count,
            examples=args.examples,
            seed=args.seed,
            scale=args.scale,
            display=args.display,
            colormap=args.colormap,
            default_subject=args.subject,
        )
        try:
            server = make_server(session, args.host, args.port)
        except OSError as e:
            session.close()
            raise TuringError(
                f"cannot serve on {args.host}:{args.port}: {e.strerror or e}"
            ) from None
    except (ValueError, OSError) as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        print(
            f"{PROG}: warning: --host {args.host} is not loopback: anyone who can reach this "
            "machine can open the page and answer as any subject",
            file=sys.stderr,
            flush=True,
        )
    parts = " then ".join(TITLES[c] for c in session.conditions)
    print(f"{PROG}: {parts}; answers go to {session.log_path}", flush=True)
    # Only here, on the operator's terminal: the summary tells whether each answer was right.
    print(f"{PROG}: open {server.url} (Ctrl-C stops; the summary, for you only, is at "
          f"{server.summary_url})", flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        session.close()
    return 0
