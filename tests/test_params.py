"""params.yaml is parsed once into frozen dataclasses; mistakes are named."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.core.params import ParamsError, load_params
from pipeline.core.settings import airflow_env, get_state_paths

# The fast layer (`make test-fast`): no training, no servers, no Airflow runs.
pytestmark = pytest.mark.fast


def test_project_params_file_parses():
    params = load_params()
    assert params.ingest.adapter == "canonical"
    assert params.validate.volume_band == (0.25, 4.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.generate.seed = 1  # type: ignore[misc]


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("generate:\n  sead: 3\n")
    with pytest.raises(ParamsError, match=rf"{path}: generate.sead: not a known key \(keys: seed, start_date"):
        load_params(path)
    path.write_text("generat:\n  seed: 3\n")
    with pytest.raises(ParamsError, match=r"params.yaml: generat: not a section \(sections: generate, ingest"):
        load_params(path)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("validate:\n  history_days: seven\n")
    with pytest.raises(ParamsError, match=rf"{path}: validate.history_days: must be an integer, got 'seven'"):
        load_params(path)
    path.write_text("validate:\n  volume_band: 0.5\n")
    with pytest.raises(ParamsError, match=r"validate.volume_band: must be a list, got 0.5"):
        load_params(path)
    path.write_text("validate:\n  volume_band: [0.5]\n")
    with pytest.raises(ParamsError, match=r"validate.volume_band: too few values \(item 1 is missing\)"):
        load_params(path)
    path.write_text("train_recommender:\n  blend: 'yes'\n  epochs: 2.5\n")
    with pytest.raises(
        ParamsError,
        match=r"train_recommender.blend: must be true or false, got 'yes'\n"
        r".*train_recommender.epochs: must be an integer, got 2.5",
    ):
        load_params(path)


def test_state_folder_moves_with_one_variable(tmp_path):
    paths = get_state_paths({"SHOPML_HOME": str(tmp_path / "elsewhere")})
    assert paths.home == tmp_path / "elsewhere"
    for location in (
        paths.landing,
        paths.staging,
        paths.canonical,
        paths.quarantine,
        paths.gx_root,
        paths.airflow_home,
        paths.dataset_repo,
    ):
        assert location.is_relative_to(paths.home)
    assert paths.dvc_remote_url == str(tmp_path / "elsewhere" / "dvc-remote")
    assert not (tmp_path / "elsewhere").exists()  # resolving paths creates nothing
    s3 = get_state_paths({"SHOPML_HOME": str(tmp_path), "SHOPML_DVC_REMOTE": "s3://shop/dvc"})
    assert s3.dvc_remote_url == "s3://shop/dvc"


def test_airflow_env_uses_the_callers_state_folder_and_keeps_deployment_settings(tmp_path):
    paths = get_state_paths({"SHOPML_HOME": str(tmp_path / "mine")})
    inherited = {"SHOPML_HOME": "/somewhere/else", "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}
    env = airflow_env(paths, tmp_path / "dags", env=inherited)
    assert env["SHOPML_HOME"] == str(tmp_path / "mine")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'mine' / 'airflow' / 'airflow.db'}"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
