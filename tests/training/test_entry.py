"""Console scripts without the train extra: one line naming the install command, exit 2."""

from training import entry


def test_missing_train_extra_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(entry, "TRAIN_PACKAGES", ("torch", "no_such_package_xyz"))
    monkeypatch.setattr(entry, "missing_packages", lambda names=entry.TRAIN_PACKAGES: ["no_such_package_xyz"])
    assert entry.train_main(["--help"]) == 2
    assert entry.evaluate_main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "pip install 'deramos_rt[train]'" in err[0] and err[0].startswith("deramos-train:")


def test_missing_packages_finds_what_is_absent():
    assert entry.missing_packages(("json", "no_such_package_xyz")) == ["no_such_package_xyz"]
    assert entry.missing_packages() == []  # this environment has the train extra


def test_with_the_extra_the_scripts_run(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        entry.evaluate_main(["--help"])
    assert exit_info.value.code == 0 and "--out" in capsys.readouterr().out
