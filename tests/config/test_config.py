import json
from pathlib import Path

import pytest

from distsim.config import PRESETS, Config, load_config, make_config, resolve


def test_presets_resolve_and_validate():
    for name in PRESETS:
        cfg = make_config(name)
        assert cfg.preset == name
    assert make_config("eyes").refiner.width == 64 and make_config("eyes").refiner.blocks == 4
    hands = make_config("hands")
    assert (hands.refiner.kernel, hands.refiner.blocks, hands.discriminator.arch) == (
        7,
        10,
        "hands",
    )


def test_flags_override_preset():
    cfg = resolve(
        [
            "--preset",
            "smoke",
            "--batch-size",
            "12",
            "--disc-widths",
            "4,4,4,4",
            "--no-history",
            "--lambda-reg",
            "0.25",
        ]
    )
    assert cfg.schedule.batch_size == 12 and cfg.discriminator.widths == (4, 4, 4, 4)
    assert cfg.history.enabled is False and cfg.optim.lambda_reg == 0.25
    assert cfg.refiner.width == PRESETS["smoke"]["refiner_width"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--psi", "hsv"], "--psi must be one of"),
        (["--synthetic", "/x"], "both --synthetic and --real"),
        (["--history-size", "4", "--batch-size", "8"], "--history-size 4"),
        (["--refiner-kernel", "4"], "odd"),
        (["--refiner-window", "4"], "--refiner-window must be odd"),
        (["--refiner-slack", "-0.1"], "--refiner-slack must be in"),
        (["--refiner-dropout"], "--refiner-dropout needs --refiner-output local_range"),
        (
            ["--refiner-dropout", "--refiner-output", "local_range", "--refiner-noise", "0"],
            "--refiner-dropout needs",
        ),
        (["--preset", "hands-cpu", "--refiner-dropout", "--psi", "smooth"], "--psi identity"),
        (["--refiner-output", "sigmoid"], "--refiner-output must be one of"),
        (["--refiner-output", "residual"], "--refiner-output must be one of"),
        (["--batch-size", "7"], "even"),
    ],
)
def test_bad_values_name_the_flag(flags, message):
    with pytest.raises(ValueError, match=message):
        resolve(["--preset", "smoke", *flags])


def test_config_json_round_trip(tmp_path):
    cfg = make_config("smoke", seed=3)
    (tmp_path / "config.json").write_text(cfg.to_json())
    assert load_config(tmp_path / "config.json") == cfg
    assert json.loads(cfg.to_json())["discriminator"]["widths"] == list(cfg.discriminator.widths)
    assert isinstance(Config(), Config)


def test_help_shows_the_chosen_presets_values(capsys):
    for preset, batch in (("cpu", 32), ("eyes", 64), ("smoke", 8)):
        with pytest.raises(SystemExit):
            resolve(["--preset", preset, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"buffer) ({preset}: {batch})" in text, text[:300]


# config.json as distsim 0.1.0 wrote it (one flat object), for the pinned smoke run.
OLD = Path(__file__).parent / "config-0.1.0-smoke.json"


def test_a_config_json_from_before_the_groups_loads_as_the_same_config():
    old = load_config(OLD)
    # Every setting as the run had it, the slack of its time (0.05, unused by tanh) too.
    want = make_config("smoke", synthetic="S/syn", real="S/real", run_dir="S/eyes",
                       mixed_precision="no", refiner_slack=0.05)  # fmt: skip
    assert old == want
    hands = load_config(OLD.with_name("config-0.1.0-hands-cpu.json"))
    assert hands.refiner.dropout and hands.refiner.output == "local_range"
    assert hands.schedule.steps == 3 and hands.history.size == 64


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("refiner_highpass", 2.0, "--refiner-highpass 2.0, which distsim no longer has"),
        ("disc_blur", 1.0, "--disc-blur 1.0, which distsim no longer has"),
        ("refiner_output", "residual", "--refiner-output residual, which distsim no longer has"),
    ],
)
def test_a_run_made_with_a_removed_setting_is_refused_in_one_line(tmp_path, setting, value, words):
    saved = json.loads(OLD.read_text())
    assert saved["refiner_highpass"] == 0.0 and saved["disc_blur"] == 0.0  # off: it loads
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved | {setting: value}))
    with pytest.raises(ValueError, match=words) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
