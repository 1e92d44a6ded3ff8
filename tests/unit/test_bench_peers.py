"""The peer benchmark's result handling (benchmarks/bench_peers.py): anomalib's side reports on one prefixed JSON
line among its other output, a missing line is an error naming the step, the speed-ups are the right way up, and
the table rows give per-image times and mark an untimed warm-up. The benchmark itself (anomalib in its own venv)
is not run by the tests; the weights it hands to anomalib's side are."""
import numpy as np
import pytest

from benchmarks import bench_peers


def test_the_result_line_is_found_among_other_output():
    stdout = "Total FLOPs: 0\nPEERS {\"fit_s\": 1.5}\nwarning: something\nPEERS {\"fit_s\": 99.4, \"images\": 40}\n"
    assert bench_peers.peers_result(stdout, "run") == {"fit_s": 99.4, "images": 40}   # the last one


def test_no_result_line_is_an_error_naming_the_step():
    with pytest.raises(SystemExit, match="weights: anomalib's side printed no result line"):
        bench_peers.peers_result("Traceback ...\nRuntimeError: boom\n", "weights")


def test_speedups_are_theirs_over_ours_for_time_and_ours_over_theirs_for_throughput():
    ours = dict(fit_s=20.0, predict_s=8.0, images=40, image_auroc=0.9, pixel_auroc=0.95)
    anomalib = dict(fit_s=100.0, predict_s=12.0, images=40, image_auroc=0.91, pixel_auroc=0.94)
    summary = bench_peers.compare(ours, anomalib)
    assert summary["train_speedup_vs_anomalib"] == pytest.approx(5.0)
    assert summary["predict_speedup_vs_anomalib"] == pytest.approx(1.5)
    assert summary["image_auroc"] == {"ours": 0.9, "anomalib": 0.91}
    assert summary["pixel_auroc"] == {"ours": 0.95, "anomalib": 0.94}


def test_table_rows_per_image_time_and_a_dash_where_a_side_did_not_time_its_first_batch():
    common = dict(features_s=1.0, coreset_s=2.0, bank=100, peak_rss_gib=1.0, image_auroc=0.9, pixel_auroc=0.95)
    ours = dict(common, fit_s=30.0, predict_s=5.0, images=10, models=5, first_batch_s=3.97)
    tiled_ensemble = dict(common, fit_s=60.0, predict_s=12.5, images=10, models=4, anomalib="2.7.0")
    rows = bench_peers.table_rows(ours, tiled_ensemble)
    assert [row["side"] for row in rows] == ["ours", "anomalib 2.7.0"]
    assert rows[0]["predict_s_per_img"] == 0.5 and rows[0]["predict_img_per_s"] == 2.0
    assert rows[1]["predict_s_per_img"] == 1.25 and rows[1]["predict_img_per_s"] == 0.8
    assert rows[0]["first_batch_s"] == 3.97 and rows[1]["first_batch_s"] == "-"
    assert [row["models"] for row in rows] == [5, 4]


def test_anomalib_side_gets_the_torch_files_tensors_as_arrays_without_unpickling(tmp_path):
    import torch   # a test dependency (requirements-test.txt)
    from benchmarks import peers_anomalib
    weights = {"features.0.0.weight": torch.randn(4, 3, 3, 3), "features.0.1.running_mean": torch.arange(4.0)}
    torch.save(weights, tmp_path / "w.pth")
    npz = bench_peers.tensors_npz(tmp_path / "w.pth", tmp_path / "w.npz")
    with np.load(npz, allow_pickle=False) as arrays:   # plain arrays: loads with pickle refused
        assert sorted(arrays.files) == sorted(weights)
    loaded = peers_anomalib.state_dict(npz)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in weights.items())
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []   # no temporary left
