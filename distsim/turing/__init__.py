"""The paper's visual Turing test (section 4.1, Table 1) as a local web page.

    python -m distsim.turing --real data/eval-real --refined data/eval-refined --out turing/
    python -m distsim.turing --real R --refined F --synthetic S --out turing/ --subject alice
    python -m distsim.turing --out turing/ --summary      # write and print the summary, no server

In the paper, 10 subjects each labelled 100 images (50 real, 50 refined) as real or refined,
with 20 labelled examples of each kind in view: 517 of 1000 answers were right (p = 0.148).
With unrefined synthetic images instead, 162 of 200 were (p <= 1e-8). This package serves that
test on 127.0.0.1 and records every answer in DIR/answers.jsonl.

The page: a subject types a name (or comes with ``?subject=NAME``, or the server's
``--subject``), then sees one test image at a time above the labelled examples of both kinds,
and answers with the buttons or keys (left arrow or 1: real; right arrow or 2: refined, or
synthetic). It gives no feedback, and its results are not for subjects: the summary is at
/summary?token=T (and /summary.json?token=T), where T is printed by the server when it
starts; ``--summary`` prints it from DIR's answers at any time.

Modules: ``session`` (the test without HTTP: plan, answer log, resuming), ``stats`` (the
summary), ``images`` (shard images as PNGs), ``server`` (the page over http.server), ``cli``,
and ``common`` (the names they share).
"""
