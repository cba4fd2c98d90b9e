"""Configuration identity (tracker_sched.identity): each rule, and both sides of the value rule."""

from __future__ import annotations

from typing import Any

from tracker_sched.identity import config_id, configurations


def groups(configs: list[dict[str, Any]], ignore: tuple[str, ...] = ()) -> list[int]:
    """Each run's configuration as a small integer, in order of first appearance."""
    ids = configurations(configs, ignore).ids
    first: dict[str, int] = {}
    return [first.setdefault(i, len(first)) for i in ids]


def test_runs_differing_only_in_seeds_are_one_configuration() -> None:
    configs = [{"lr": lr, "seed": s, "data_seed": s + 7} for lr in (0.1, 0.01) for s in (0, 1)]
    conf = configurations(configs)
    assert groups(configs) == [0, 0, 1, 1]
    assert conf.describe() == "2 configurations x 2 seeds"
    assert conf.hyperparameters == ("lr",)
    assert set(conf.seed_keys) == {"seed", "data_seed"}


def test_wandb_internal_config_never_splits_a_configuration() -> None:
    """W&B offline configs carry _wandb (entity, project, exit code, the run's summary)."""
    configs = [{"lr": 0.1, "seed": s, "_wandb": {"summary": {"loss": 1.0 + s}, "exit_code": s}}
               for s in (0, 1)]
    assert groups(configs) == [0, 0]
    assert configurations(configs).dropped["_wandb.exit_code"] == "tracker-internal"


def test_run_identity_names_are_left_out() -> None:
    """HF Trainer logs output_dir and run_name per run; Lightning default_root_dir."""
    configs = [{"learning_rate": 0.1, "seed": s, "output_dir": f"out/run-{s}",
                "run_name": f"lr0.1-s{s}", "trainer": {"default_root_dir": f"r{s}"}}
               for s in (0, 1)]
    assert groups(configs) == [0, 0]
    assert set(configurations(configs).dropped) == {
        "seed", "output_dir", "run_name", "trainer.default_root_dir"}


def test_per_run_paths_and_timestamps_are_left_out() -> None:
    configs = [{"lr": 0.1, "seed": s, "ckpt": f"/scratch/ckpt/{s}",
                "started": f"2025-05-0{s + 1}T12:00:00", "tb": f"runs/May0{s + 1}_12-00-00_host"}
               for s in (0, 1)]
    assert groups(configs) == [0, 0]
    assert configurations(configs).hyperparameters == ()


def test_a_random_search_lr_that_differs_in_every_run_stays_a_hyperparameter() -> None:
    """The other side of the value rule: numbers are never per-run labels."""
    configs = [{"lr": 10 ** (-1 - i / 7), "seed": 0} for i in range(6)]
    assert groups(configs) == list(range(6))
    assert configurations(configs).hyperparameters == ("lr",)


def test_text_that_differs_in_every_run_but_is_no_label_stays() -> None:
    configs = [{"model": m} for m in ("resnet18", "vit-tiny", "google/bert-mini")]
    assert groups(configs) == [0, 1, 2]


def test_paths_shared_between_seeds_are_hyperparameters() -> None:
    """A data path is path-like, but seeds share it: it tells configurations apart."""
    configs = [{"data": f"/data/{d}", "seed": s} for d in ("a", "b") for s in (0, 1)]
    assert groups(configs) == [0, 0, 1, 1]
    assert configurations(configs).hyperparameters == ("data",)


def test_ignore_flag_with_globs() -> None:
    configs = [{"lr": 0.1, "seed": s, "job": {"tag": f"t{s}"}} for s in (0, 1)]
    assert groups(configs) == [0, 1]
    assert groups(configs, ("job.*",)) == [0, 0]


def test_a_key_missing_in_some_runs_tells_them_apart() -> None:
    configs = [{"lr": 0.1}, {"lr": 0.1, "warmup": 5}]
    assert groups(configs) == [0, 1]
    assert configurations(configs).hyperparameters == ("warmup",)


def test_uneven_seeds_are_described() -> None:
    conf = configurations([{"lr": 1, "seed": 0}, {"lr": 1, "seed": 1}, {"lr": 2, "seed": 0}])
    assert conf.describe() == "2 configurations x 1-2 seeds"
    assert conf.describe([2]) == "1 configuration x 1 seed"


def test_single_config_id_uses_the_name_rules() -> None:
    assert config_id({"lr": 0.1, "seed": 3, "_wandb": {}, "run_name": "x"}) == config_id(
        {"lr": 0.1, "seed": 4, "output_dir": "/tmp/y"})
    assert config_id({"lr": 0.1}) != config_id({"lr": 0.2})
