"""Ray scale-out (deramos_rt.distributed): same scores as one process, per-clip errors, resume, lost workers.

One local Ray session (2 CPUs) serves the module, with authentication off, a temporary HOME and a
temporary session folder, shut down and removed at the end. The Ray tests skip when ray is not installed;
the import-isolation tests run either way.
"""

from __future__ import annotations

import csv
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from deramos_rt.errors import DeramosError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo" / "manifest.csv"
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install 'deramos_rt[ray]')")
CLIPS = 9  # demo clips used (FLAC, OGG and MP3), plus the bad ones below
THREADS = 1


# --------------------------------------------------------------------------------------- without ray


def test_import_deramos_rt_never_imports_ray():
    code = ("import sys, deramos_rt, deramos_rt.distributed, deramos_rt.manifest, deramos_rt.scorer;"
            "print('ray' in sys.modules, 'ray.data' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_missing_ray_is_one_clear_error(monkeypatch, tmp_path):
    from deramos_rt import distributed

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(DeramosError, match=r"pip install 'deramos_rt\[ray\]'"):
        distributed.score_dataset(DEMO, tmp_path / "out", actors=1)


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    from deramos_rt.distributed import score_dataset

    with pytest.raises(DeramosError, match="actors must be at least 1"):
        score_dataset(DEMO, tmp_path, actors=0)
    with pytest.raises(DeramosError, match="unknown output format 'json'"):
        score_dataset(DEMO, tmp_path, file_format="json")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """One local Ray instance for the module; nothing machine-wide is read or left behind."""
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'deramos_rt[ray]')")
    import ray
    import ray.data

    home = tmp_path_factory.mktemp("home")
    marker_dir = tmp_path_factory.mktemp("crash")
    temp_dir = tempfile.mkdtemp(prefix="drray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("HOME", str(home))
        mp.setenv("DERAMOS_RAY_TEST_CRASH_MARKER", str(marker_dir / "crash-once"))  # inherited by workers
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            yield marker_dir / "crash-once"
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from export.build_engine import build_bundle
    from export.testing import write_random_run

    root = tmp_path_factory.mktemp("model")
    run = write_random_run(root / "run", "tiny", seed=3)
    return build_bundle(run, root / "bundle", slim=False, parity_files=1, parity_random=2)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Nine demo clips, a missing file, a corrupt file and an empty prompt (absolute paths)."""
    root = tmp_path_factory.mktemp("clips")
    with DEMO.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:CLIPS]
    for row in rows:
        row["path"] = str(DEMO.parent / row["path"])
    (root / "corrupt.wav").write_bytes(b"RIFF0000WAVEthis is not audio")
    rows += [{"id": "missing", "path": str(root / "missing.flac"), "system": "S999", "prompt": "piano"},
             {"id": "corrupt", "path": str(root / "corrupt.wav"), "system": "S999", "prompt": "piano"},
             {"id": "no-prompt", "path": rows[0]["path"], "system": "S999", "prompt": ""}]
    path = root / "manifest.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "path", "system", "prompt"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def reference(bundle, manifest):
    """The single-process scorer's results, by id (one backend thread, as in every actor below: the thread
    count changes float32 summation order, by about 2e-7 on this model)."""
    from deramos_rt.manifest import iter_manifest
    from deramos_rt.scorer import Scorer

    with Scorer(bundle, decode_workers=0, threads=THREADS) as scorer:
        return {r.id: r for r in scorer.score(list(iter_manifest(manifest)))}


@pytest.fixture(scope="module")
def first_job(ray_session, bundle, manifest, tmp_path_factory):
    from deramos_rt.distributed import score_dataset

    out = tmp_path_factory.mktemp("job")
    return score_dataset(manifest, out, bundle=bundle, actors=2, cpus_per_actor=0.5, batch_size=4,
                        threads=THREADS)


def _number(value):
    return None if value in (None, "") else float(value)


def _by_id(rows):
    ids = [str(r["id"]) for r in rows]
    assert len(ids) == len(set(ids)), "a clip was written twice"
    return {str(r["id"]): r for r in rows}


def _assert_same_as_reference(rows, reference, probs=False):
    rows = _by_id(rows)
    assert set(rows) == set(reference)
    for clip_id, ref in reference.items():
        row = rows[clip_id]
        assert _number(row["mi"]) == ref.mi, clip_id  # identical, not merely close
        assert _number(row["ta"]) == ref.ta, clip_id
        assert (row["error"] or None) == ref.error, clip_id
        if probs:
            assert (None if row["mi_probs"] is None else list(row["mi_probs"])) == ref.mi_probs, clip_id


# ----------------------------------------------------------------------------------------- with ray


@needs_ray
def test_two_actors_give_the_single_process_scores_and_errors(first_job, reference):
    from deramos_rt.distributed import read_results

    assert (first_job.total, first_job.skipped, first_job.exit_code) == (CLIPS + 3, 0, 3)
    assert (first_job.scored, first_job.failed) == (CLIPS, 3)
    rows = read_results(first_job.out)
    _assert_same_as_reference(rows, reference)
    errors = {r["id"]: r["error"] for r in rows if r["error"]}
    assert errors["missing"].startswith("audio file not found")
    assert set(errors) == {"missing", "corrupt", "no-prompt"}
    assert {r["backend"] for r in rows} == {"onnxruntime"}
    assert len(list(first_job.scores.glob("*.csv"))) >= 2


@needs_ray
def test_summary_matches_the_single_process_tally(first_job, reference):
    from deramos_rt.scorer import system_scores

    expected = system_scores(reference.values())
    with first_job.summary.open(newline="", encoding="utf-8") as f:
        rows = {r["system"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(expected)
    for system, values in expected.items():
        assert int(rows[system]["clips"]) == values["clips"]
        assert int(rows[system]["failed"]) == values["failed"]
        assert _number(rows[system]["mi_mean"]) == pytest.approx(values["mi_mean"], abs=1e-12)


@needs_ray
def test_rerun_resumes_a_partial_output_without_duplicates(first_job, reference, bundle, manifest, tmp_path):
    from deramos_rt.distributed import read_results, score_dataset

    out = tmp_path / "job"
    shutil.copytree(first_job.out, out)
    files = sorted((out / "scores").glob("*.csv"))
    lost = {r["id"] for r in csv.DictReader(files[0].open(newline="", encoding="utf-8"))}
    files[0].unlink()  # as if the job had been killed before writing this batch
    with files[1].open("ab") as f:
        f.write(b"torn-id,/half/a/li")  # and killed while writing another
    job = score_dataset(manifest, out, bundle=bundle, actors=2, cpus_per_actor=0.5, batch_size=4,
                        threads=THREADS)
    assert job.skipped == CLIPS + 3 - len(lost)
    assert job.scored + job.failed == len(lost)
    _assert_same_as_reference(read_results(out), reference)

    again = score_dataset(manifest, out, bundle=bundle, actors=1, cpus_per_actor=0.5, threads=THREADS)
    assert (again.skipped, again.scored, again.failed) == (CLIPS + 3, 0, 0)
    assert again.exit_code == 3  # the failures written before still count
    _assert_same_as_reference(read_results(out), reference)


@needs_ray
def test_existing_output_needs_resume_or_overwrite(first_job, bundle, manifest):
    from deramos_rt.distributed import score_dataset

    with pytest.raises(DeramosError, match="already holds scores"):
        score_dataset(manifest, first_job.out, bundle=bundle, resume=False, cpus_per_actor=0.5)
    with pytest.raises(DeramosError, match="columns"):
        score_dataset(manifest, first_job.out, bundle=bundle, probs=True, cpus_per_actor=0.5)
    with pytest.raises(DeramosError, match="holds csv files"):
        score_dataset(manifest, first_job.out, bundle=bundle, file_format="parquet", cpus_per_actor=0.5)


@needs_ray
def test_a_second_job_on_the_same_folder_or_a_file_as_out_is_refused(bundle, manifest, tmp_path):
    from deramos_rt.distributed import score_dataset
    from deramos_rt.jobs import OutputLock

    with OutputLock(tmp_path / "busy"):  # another job holds the folder
        with pytest.raises(DeramosError, match=r"pid \d+"):
            score_dataset(manifest, tmp_path / "busy", bundle=bundle, cpus_per_actor=0.5)
    with pytest.raises(DeramosError, match="is the manifest"):
        score_dataset(manifest, manifest, bundle=bundle, cpus_per_actor=0.5)
    assert not (tmp_path / "busy").exists()


@needs_ray
def test_cluster_too_small_for_the_actors_is_refused(ray_session, bundle, manifest, tmp_path):
    from deramos_rt.distributed import score_dataset

    with pytest.raises(DeramosError, match="has 2 CPUs; 3 actors x 1 CPU"):
        score_dataset(manifest, tmp_path, bundle=bundle, actors=3)


@needs_ray
def test_a_killed_actor_loses_and_duplicates_nothing(ray_session, reference, bundle, manifest, tmp_path):
    from deramos_rt.distributed import read_results, score_dataset

    ray_session.write_text("armed")  # the first actor batch to see it removes it and kills its process
    job = score_dataset(manifest, tmp_path / "job", bundle=bundle, actors=2, cpus_per_actor=0.5, batch_size=4,
                        threads=THREADS, file_format="parquet", probs=True, max_restarts=2)
    assert not ray_session.exists(), "no actor process was killed"
    assert (job.scored, job.failed) == (CLIPS, 3)
    _assert_same_as_reference(read_results(job.out), reference, probs=True)


def test_resume_sets_aside_a_torn_parquet_file_and_refuses_another_model(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow comes with the ray extra")
    from deramos_rt.distributed import prepare_output, results_table
    from deramos_rt.scorer import ClipScore

    provenance = {"backend": "onnxruntime", "precision": "fp32", "bundle": "abc", "deramos_rt": "0.1.0"}
    scores = tmp_path / "scores"
    scores.mkdir()
    for name, ids in (("a.parquet", ["c1", "c2"]), ("b.parquet", ["c3"])):
        clips = [ClipScore(i, f"/x/{i}.wav", "S001", "p", mi=3.0, ta=2.5, mi_probs=[1.0], ta_probs=[1.0]) for i in ids]
        pq.write_table(results_table(clips, provenance, True, "parquet"), scores / name)
    data = (scores / "b.parquet").read_bytes()
    (scores / "b.parquet").write_bytes(data[: len(data) // 2])  # its writer was killed: no footer
    rows = prepare_output(tmp_path, "parquet", True, "abc", resume=True, overwrite=False)
    assert sorted(r["id"] for r in rows) == ["c1", "c2"]
    assert (scores / "b.parquet.torn").exists() and not (scores / "b.parquet").exists()
    assert rows[0]["mi_probs"] == [1.0]
    with pytest.raises(DeramosError, match="scored with model abc, this run uses other"):
        prepare_output(tmp_path, "parquet", True, "other", resume=True, overwrite=False)
    assert prepare_output(tmp_path, "parquet", True, "other", resume=True, overwrite=True) == []
    assert not list(scores.glob("*.parquet"))
