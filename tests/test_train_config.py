"""Training configs are checked setting by setting against the defaults, and each mistake is one
line naming the file (or override) and the setting, before Ray starts."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from spatiotemporal.train.config import ConfigError, check_data_root, load_config


def write(tmp_path, text: str, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_number_with_an_exponent_loads_as_a_number_from_a_file_as_from_an_override(tmp_path):
    # PyYAML reads 3e-4 (no dot) and 1.0e3 (unsigned exponent) as strings (YAML 1.1).
    path = write(tmp_path, "model: {name: timesformer_tiny, kwargs: {drop_path_rate: 1e-1}}\n"
                           "optim: {lr: 3e-4, weight_decay: 1.0e-2}\nschedule: {min_lr: 1e-6}\n")  # fmt: skip
    config = load_config(path)
    assert config["optim"]["lr"] == 3e-4 and config["optim"]["weight_decay"] == 1e-2
    assert config["schedule"]["min_lr"] == 1e-6
    assert config["model"]["kwargs"] == {"drop_path_rate": 0.1}
    assert load_config(path, ["optim.lr=5e-4"])["optim"]["lr"] == 5e-4


@pytest.mark.parametrize(("text", "message"), [
    ("data: {batch_size: eight}", "data.batch_size must be an integer, not 'eight'"),
    ("data: {batch_size: 8.5}", "data.batch_size must be an integer, not 8.5"),
    ("train: {bf16: maybe}", "train.bf16 must be true or false, not 'maybe'"),
    ("optim: {lr: fast}", "optim.lr must be a number, not 'fast'"),
    ("optim: {betas: 0.9}", "optim.betas must be a list of 2 numbers, not 0.9"),
    ("schedule: 10", "section schedule must be a mapping of settings (key: value), not 10"),
    ("ray: {resources_per_worker: 2}", "ray.resources_per_worker must be a mapping, not 2"),
    ("schedule: {epochs: null}", "schedule.epochs cannot be null (default 10)"),
])  # fmt: skip
def test_a_value_of_the_wrong_type_names_the_file_and_the_setting(tmp_path, text, message):
    path = write(tmp_path, "model: {name: timesformer_tiny}\n" + text + "\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: {message}"


def test_settings_that_may_be_unset_take_null_and_an_empty_section_keeps_its_defaults(tmp_path):
    path = write(tmp_path, "model: {name: timesformer_tiny}\ntrain: {clip_grad: null, ema_decay: 0.99}\noptim:\n")
    config = load_config(path)
    assert config["train"]["clip_grad"] is None and config["train"]["ema_decay"] == 0.99
    assert config["optim"]["lr"] == 1e-3


def test_every_setting_that_may_be_unset_has_a_declared_type():
    from spatiotemporal.train.config import DEFAULTS, FREE_FORM, NULLABLE

    def unset(node, where=""):
        for key, value in node.items():
            if isinstance(value, dict) and f"{where}{key}" not in FREE_FORM:
                yield from unset(value, f"{where}{key}.")
            elif value is None:
                yield f"{where}{key}"

    assert sorted(unset(DEFAULTS)) == sorted(NULLABLE)


def test_an_unknown_key_is_named_with_its_file_and_the_known_ones(tmp_path):
    path = write(tmp_path, "model: {name: timesformer_tiny}\noptim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (
        f"{path}: unknown config key optim.lrr; known in optim: betas, layer_decay, lr, lr_scales, momentum, name, weight_decay"
    )


def test_a_file_that_is_not_yaml_is_named_with_where_parsing_stopped(tmp_path):
    path = write(tmp_path, "model: {name: timesformer_tiny\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not valid YAML: .* at line 2, column 1$"):
        load_config(path)


def test_a_top_level_list_is_refused(tmp_path):
    path = write(tmp_path, "- model\n- data\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: a config must be a mapping of settings (key: value), not a list"


def test_an_unregistered_model_and_a_model_of_the_other_task_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"run.yaml: model.name: unknown model 'no_such_model'; known: mvitv2_b"):
        load_config(write(tmp_path, "model: {name: no_such_model}\n"))
    with pytest.raises(ConfigError, match=r"run.yaml: model point_transformer_tiny is a points model but task is 'video'"):
        load_config(write(tmp_path, "model: {name: point_transformer_tiny}\n"))


def test_training_clips_are_drawn_randomly_or_as_the_models_protocol(tmp_path):
    with pytest.raises(ConfigError, match=r"run.yaml: data.train_sampling must be one of random, protocol, not 'tsn'"):
        load_config(write(tmp_path, "model: {name: timesformer_tiny}\ndata: {train_sampling: tsn}\n"))


def test_the_paper_configs_draw_training_clips_as_their_papers_code_does(tmp_path):
    from pathlib import Path

    from spatiotemporal.train.tasks import VideoTask

    configs = Path(__file__).resolve().parents[1] / "configs"
    for name, anchor in (("timesformer_base_kinetics400", "slowfast"), ("mvitv2_s_kinetics400", "slowfast_offset"),
                         ("vivit_b_fe_kinetics400", "dmvr"), ("swin3d_t_kinetics400", "mmaction2_0x")):
        config = load_config(configs / f"{name}.yaml", [f"data.root={tmp_path}"])
        (tmp_path / "train.txt").write_text("clip.mp4 0\n")
        clip = VideoTask(config).dataset_at(tmp_path / "train.txt", "train").clip
        assert (clip.train_as_anchor, clip.anchor) == (True, anchor), name


def test_the_data_root_must_be_set_and_exist_and_hold_the_point_splits(tmp_path):
    config = load_config(data={"model": {"name": "point_transformer_tiny"}, "task": "points"})
    with pytest.raises(ConfigError, match=r"^c.yaml: data.root is not set"):
        check_data_root(config, "c.yaml")
    config["data"]["root"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"data.root .*nowhere: no such file or directory"):
        check_data_root(config)
    (tmp_path / "scannet" / "train").mkdir(parents=True)
    config["data"]["root"] = str(tmp_path / "scannet")
    with pytest.raises(ConfigError, match=r"data.root .*scannet: no val/ folder of preprocessed scenes \(data.val_split\)"):
        check_data_root(config)
    (tmp_path / "scannet" / "val").mkdir()
    assert check_data_root(config) == (tmp_path / "scannet").resolve()


@pytest.mark.parametrize(("text", "message"), [
    ("model: {name: timesformer_tiny}\ndata: {batch_size: eight}\n", "data.batch_size must be an integer, not 'eight'"),
    ("model: {name: timesformer_tiny}\n", "data.root is not set: give the dataset (data.root=PATH)"),
])  # fmt: skip
def test_the_train_command_answers_a_bad_config_in_one_line_before_starting_ray(tmp_path, text, message):
    path = write(tmp_path, text)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "spatiotemporal.cli", "train", str(path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == f"error: {path}: {message}\n"
    assert "Ray" not in done.stderr and time.perf_counter() - started < 60


def test_the_settings_merge_without_torch_so_the_cluster_is_asked_before_it_loads(tmp_path):
    # `train` reads ray.address with merged_config before anything imports torch (seconds).
    path = write(tmp_path, "model: {name: no_such_model}\nray: {address: 'head:6379'}\n")
    probe = ("import sys; from spatiotemporal.train.config import merged_config; "
             "config = merged_config(sys.argv[1], ['ray.num_workers=3']); "
             "print(config['ray']['address'], config['ray']['num_workers'], 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "head:6379 3 False\n"  # the model is checked by load_config, not here
