"""The config file: strict schema, every error with its key path at once, safe mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import BadConfig, load, parse
from config.schema import KitConfig
from edge.cli import main


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kit.toml"
    path.write_text(text)
    return path


def test_every_error_is_reported_with_its_key_path_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[kit]\nid = 70000\nnmae = "x"\n[edge]\nmax_batch = 0\n[logs]\nlevel = "INFO"\n'
    )
    with pytest.raises(BadConfig) as err:
        parse(path)
    assert [str(i) for i in err.value.issues] == [
        "kit.id: Input should be less than or equal to 65535",
        "kit.name: Field required",
        "kit.nmae: unknown key (typo?)",
        "edge.max_batch: Input should be greater than or equal to 1",
        "logs: unknown key (typo?)",
    ]


def test_syntax_error_and_missing_file_are_precise(tmp_path: Path) -> None:
    with pytest.raises(BadConfig) as err:
        parse(write(tmp_path, "[kit\nid=1"))
    assert str(err.value.issues[0]).startswith("(file): TOML syntax: ")
    with pytest.raises(BadConfig) as err:
        parse(tmp_path / "nope.toml")
    assert [str(i) for i in err.value.issues] == ["(file): file not found"]


def test_relative_folders_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = parse(
        write(tmp_path, '[kit]\nid = 3\nname = "a"\n[paths]\ndata_dir = "d"\nruntime_dir = "r"\n')
    )
    assert config.paths.data_dir == tmp_path / "d"
    assert config.endpoint("edge") == f"ipc://{tmp_path / 'r' / 'edge'}.sock"


def test_runtime_folder_too_long_for_socket_paths_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadConfig) as err:
        parse(write(tmp_path, f'[kit]\nid = 3\nname = "a"\n[paths]\nruntime_dir = "/{"r" * 90}"\n'))
    assert str(err.value.issues[0]) == (
        "paths.runtime_dir: Value error, path longer than 80 bytes: socket paths would not fit"
    )


def test_broken_config_loads_in_safe_mode_keeping_valid_sections(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, '[kit]\nid = 0\n[paths]\ndata_dir = "d"\n[edge]\nmax_btch = 3\n'))
    assert loaded.safe_mode
    assert loaded.config.paths.data_dir == tmp_path / "d"  # the real store is still found
    assert loaded.config.kit.id == 0
    assert loaded.config.edge.max_batch == 512
    assert [i.path for i in loaded.issues] == ["kit.id", "kit.name", "edge.max_btch"]


def test_every_field_has_a_title_and_description() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, info in model.model_fields.items():  # type: ignore[attr-defined]
            if not info.title or not info.description:
                missing.append(name)
            ann = info.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                missing += [f"{name}.{m}" for m in walk(ann)]
        return missing

    assert walk(KitConfig) == []


def test_kit_config_check_lists_errors_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "check", str(write(tmp_path, "[kit]\nid = 1\n"))]) == 1
    out = capsys.readouterr().out
    assert "1 error(s)" in out and "kit.name: Field required" in out
    good = tmp_path / "good.toml"
    assert main(["init-config", str(good)]) == 0
    assert main(["config", "check", str(good)]) == 0
