"""--conf parsing: the default preset follows the device and the weights that are there."""

import pytest
import torch

from lib.conf import AppConf, default_preset, parse_crf, parse_scales
from lib.settings import PRESETS, model_filename


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_cpu_default_is_lite(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / model_filename("liver_resnet", "paper")).write_bytes(b"")
    assert default_preset(str(tmp_path)) == "lite"
    assert AppConf.from_conf({}, str(tmp_path)).preset == "lite"


def test_gpu_without_paper_weights_runs_the_shipped_lite_weights(gpu, tmp_path):
    (tmp_path / model_filename("liver_resnet", "lite")).write_bytes(b"")
    conf = AppConf.from_conf({}, str(tmp_path))
    assert conf.preset == "lite" and conf.scales == PRESETS["lite"].default_scales
    assert conf.batch_size == 32  # the GPU's batch, whatever the preset


def test_lite512_is_opt_in_on_any_device(tmp_path, monkeypatch):
    for preset in ("lite", "lite512"):
        (tmp_path / model_filename("liver_resnet", preset)).write_bytes(b"")
    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        assert default_preset(str(tmp_path)) == "lite"
        conf = AppConf.from_conf({"preset": "lite512"}, str(tmp_path))
        assert conf.preset == "lite512" and conf.scales == (512,)


def test_gpu_with_paper_weights_runs_the_paper_network(gpu, tmp_path):
    for preset in ("paper", "lite"):
        (tmp_path / model_filename("liver_resnet", preset)).write_bytes(b"")
    conf = AppConf.from_conf({}, str(tmp_path))
    assert conf.preset == "paper" and conf.scales == PRESETS["paper"].default_scales


def test_an_explicit_preset_wins(gpu, tmp_path):
    assert AppConf.from_conf({"preset": "paper"}, str(tmp_path)).preset == "paper"
    assert AppConf.from_conf({"preset": "lite", "scales": "paper"}, str(tmp_path)).scales == PRESETS["lite"].all_scales
    with pytest.raises(ValueError, match="preset must be one of"):
        AppConf.from_conf({"preset": "huge"}, str(tmp_path))


def test_scales_are_checked():
    assert parse_scales("192, 208", "lite") == (192, 208)
    with pytest.raises(ValueError):
        parse_scales("16", "lite")
    for bad in ([None], float("inf"), "1e400", [[192]], "2048", ",".join(["192"] * 9)):  # a ValueError, answered 400, never a TypeError
        with pytest.raises(ValueError, match="scales"):
            parse_scales(bad, "lite")


def test_publish_mode_defaults_to_better(tmp_path):
    assert AppConf.from_conf({}, str(tmp_path)).publish == "better"
    assert AppConf.from_conf({"publish": "best"}, str(tmp_path)).publish == "best"
    with pytest.raises(ValueError, match="publish"):
        AppConf.from_conf({"publish": "newest"}, str(tmp_path))


def test_crf_modes_default_to_liver_and_read_the_old_switches(tmp_path):
    assert AppConf.from_conf({}, str(tmp_path)).crf == "liver"
    assert AppConf.from_conf({"crf": "paper"}, str(tmp_path)).crf == "paper"
    assert AppConf.from_conf({"crf": "false"}, str(tmp_path)).crf == "off"
    assert parse_crf("true") == "paper" and parse_crf("true", "true") == "liver"  # before modes existed
    assert parse_crf(["off", "liver", "paper"]) == "off"  # the config's list sent back: its first
    assert parse_crf(None) == parse_crf("") == "liver"
    assert parse_crf(None, default="off") == parse_crf("", default="off") == "off"  # the server's --conf crf
    assert parse_crf("paper", default="off") == "paper"
    with pytest.raises(ValueError, match="crf must be one of"):
        parse_crf("sometimes")


def test_bad_conf_values_stop_the_server_with_the_settings_name(tmp_path):
    """`--conf adapt_bn ture` started a server with the option silently off; `--conf sample_hold_s abc`
    stopped it with a bare "could not convert string to float"."""
    ok = AppConf.from_conf({"adapt_bn": "yes", "stage2_roi": "off", "sample_hold_s": "30", "batch_size": "8",
                            "max_voxels": "1e6", "min_lesion_ml": "0"}, str(tmp_path))
    assert ok.adapt_bn and not ok.stage2_roi and ok.sample_hold_s == 30.0 and ok.batch_size == 8 and ok.grow_liver
    assert ok.max_voxels == 1_000_000 and isinstance(ok.max_voxels, int) and ok.min_lesion_ml == 0
    for name, bad in (("adapt_bn", "ture"), ("stage2_roi", "maybe"), ("grow_liver", "no way"), ("auto_train_on_save", "2"),
                      ("external_symlinks", ""), ("sample_hold_s", "abc"), ("sample_hold_s", "-5"),
                      ("sample_hold_s", "inf"), ("batch_size", "0"), ("batch_size", "2.5"), ("auto_train_epochs", "x"),
                      ("min_lesion_ml", "nan"), ("max_parallel_infers", "0"), ("max_upload_mb", "-1")):
        with pytest.raises(ValueError, match=f"--conf {name} must be"):
            AppConf.from_conf({name: bad}, str(tmp_path))


def test_tracking_accepts_only_what_monai_label_understands(tmp_path):
    """`--conf tracking mlfow` started a server that then trained silently untracked (MONAI Label's trainer
    only acts on "mlflow")."""
    assert AppConf.from_conf({}, str(tmp_path)).tracking == "none"
    for off in ("none", "None", "", "off", "false", "no", "0"):
        assert AppConf.from_conf({"tracking": off}, str(tmp_path)).tracking == "none"
    for on in ("mlflow", "MLflow", " mlflow "):
        assert AppConf.from_conf({"tracking": on}, str(tmp_path)).tracking == "mlflow"
    for bad in ("mlfow", "wandb", "true", "yes"):
        with pytest.raises(ValueError, match="--conf tracking must be"):
            AppConf.from_conf({"tracking": bad}, str(tmp_path))
