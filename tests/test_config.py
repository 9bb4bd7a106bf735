import json

import pytest

from distsim.config import PRESETS, Config, load_config, make_config, resolve


def test_presets_resolve_and_validate():
    for name in PRESETS:
        cfg = make_config(name)
        assert cfg.preset == name
    assert make_config("eyes").refiner_width == 64 and make_config("eyes").refiner_blocks == 4
    hands = make_config("hands")
    assert (hands.refiner_kernel, hands.refiner_blocks, hands.disc_arch) == (7, 10, "hands")


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
    assert cfg.batch_size == 12 and cfg.disc_widths == (4, 4, 4, 4)
    assert cfg.history is False and cfg.lambda_reg == 0.25
    assert cfg.refiner_width == PRESETS["smoke"]["refiner_width"]


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
        (["--disc-highpass", "-1"], "--disc-highpass must be"),
        (["--refiner-highpass", "-1"], "--refiner-highpass must be"),
        (["--refiner-highpass", "2"], "--refiner-highpass needs --refiner-output"),
        (["--refiner-dropout"], "--refiner-dropout needs --refiner-output local_range"),
        (
            ["--refiner-dropout", "--refiner-output", "local_range", "--refiner-noise", "0"],
            "--refiner-dropout needs",
        ),
        (["--preset", "hands-cpu", "--refiner-dropout", "--psi", "smooth"], "--psi identity"),
        (["--refiner-edge", "0.05"], "--refiner-edge must be >= 0 and needs --refiner-output"),
        (["--preset", "hands-cpu", "--refiner-edge", "-0.1"], "--refiner-edge must be >= 0"),
        (["--refiner-output", "sigmoid"], "--refiner-output must be one of"),
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
    assert json.loads(cfg.to_json())["disc_widths"] == list(cfg.disc_widths)
    assert isinstance(Config(), Config)


def test_help_shows_the_chosen_presets_values(capsys):
    for preset, batch in (("cpu", 32), ("eyes", 64), ("smoke", 8)):
        with pytest.raises(SystemExit):
            resolve(["--preset", preset, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"buffer) ({preset}: {batch})" in text, text[:300]
