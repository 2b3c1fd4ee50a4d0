"""The local trust store: who may run a bundle's native code (TensorRT engines, AOTInductor packages)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deramos_rt import trust
from deramos_rt.bundle import MANIFEST, load_bundle
from deramos_rt.cli import main
from deramos_rt.errors import DeramosError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DERAMOS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "trusted-bundles.json"


def test_trust_records_the_manifest_hash_atomically(tiny_bundle, store):
    bundle = load_bundle(tiny_bundle)
    assert trust.store_path() == store and not trust.is_trusted(bundle)
    entry = trust.trust(bundle)
    assert trust.is_trusted(bundle)
    data = json.loads(store.read_text())
    assert data["format"] == "deramos-trusted-bundles" and data["bundles"][bundle.sha256] == entry
    assert entry["path"] == str(bundle.root) and entry["how"] == "trusted with deramos-rt trust" and entry["when"]
    assert sorted(p.name for p in store.parent.iterdir()) == [".trusted-bundles.json.lock", "trusted-bundles.json"]
    assert trust.untrust(bundle.sha256) and not trust.is_trusted(bundle) and not trust.untrust(bundle.sha256)


def test_default_store_is_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("DERAMOS_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert trust.store_path() == tmp_path / ".cache" / "deramos_rt" / "trusted-bundles.json"


def test_only_a_verified_unchanged_bundle_is_trusted(tiny_bundle, tmp_path, store):
    trust.trust(load_bundle(tiny_bundle))
    unverified = load_bundle(tiny_bundle, verify=False)
    assert unverified.sha256 == load_bundle(tiny_bundle).sha256 and not trust.is_trusted(unverified)
    with pytest.raises(DeramosError, match="loaded without checking its files' hashes"):
        trust.trust(unverified)
    copy = tmp_path / "changed"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["created"] = "2000-01-01T00:00:00+00:00"  # any byte of the manifest: another identity
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert not trust.is_trusted(load_bundle(copy))


def test_refusal_is_one_line_saying_how_to_opt_in(tiny_bundle, store):
    bundle = load_bundle(tiny_bundle)
    with pytest.raises(DeramosError) as caught:
        trust.require_native_trust(bundle, "TensorRT engines")
    message = str(caught.value)
    assert "\n" not in message and "TensorRT engines" in message
    for way in ("--trust-bundle", "Scorer(..., trust_bundle=True)", f"deramos-rt trust {bundle.root}"):
        assert way in message
    trust.require_native_trust(bundle, "TensorRT engines", trust_bundle=True)
    trust.trust(bundle)
    trust.require_native_trust(bundle, "TensorRT engines")


def test_bundles_built_here_are_trusted(tiny_bundle):
    """The session's tiny bundle was built by export.build_engine into the tests' private cache."""
    entry = json.loads(trust.store_path().read_text())["bundles"][load_bundle(tiny_bundle).sha256]
    assert entry["how"] == "built here by export.build_engine" and entry["path"] == str(Path(tiny_bundle).resolve())


def test_unwritable_store_warns_and_never_fails_the_build(tmp_path, monkeypatch, caplog, tiny_bundle):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DERAMOS_CACHE", str(tmp_path / "file" / "cache"))  # a folder under a file
    with caplog.at_level("WARNING", logger="deramos_rt.trust"):
        trust.record_built(tiny_bundle)
    assert "built but not recorded as trusted" in caplog.text


def test_a_broken_store_is_one_error(store, tiny_bundle):
    store.parent.mkdir(parents=True)
    store.write_text("{not json")
    with pytest.raises(DeramosError, match="cannot read the trust store .*fix or remove the file"):
        trust.is_trusted(load_bundle(tiny_bundle))
    store.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DeramosError, match="is not a deramos_rt trust store"):
        trust.is_trusted(load_bundle(tiny_bundle))


def test_two_processes_trusting_at_once_keep_every_entry(store):
    script = ("import sys\nfrom pathlib import Path\nfrom deramos_rt import trust\n"
              "for i in range(25):\n"
              "    trust._record(f'{sys.argv[1]}{i:062d}', Path('/b'), 'test')\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, tag], cwd=REPO) for tag in ("aa", "bb")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    bundles = json.loads(store.read_text())["bundles"]
    assert len(bundles) == 50 and {k[:2] for k in bundles} == {"aa", "bb"}


def test_trust_command_prints_the_hash_and_what_it_allows(tiny_bundle, store, capsys):
    bundle = load_bundle(tiny_bundle)
    assert main(["trust", str(tiny_bundle)]) == 0
    printed = capsys.readouterr().out
    assert f"manifest sha256 {bundle.sha256}" in printed and "no native code" in printed
    assert "tensorrt and aoti backends" in printed and trust.is_trusted(bundle)
    assert main(["trust", str(tiny_bundle), "--remove"]) == 0
    assert "removed" in capsys.readouterr().out and not trust.is_trusted(bundle)
    assert main(["trust", str(tiny_bundle.parent / "nothing")]) == 2
