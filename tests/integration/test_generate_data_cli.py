"""generate_data.py as a program: writes a category, reports bad input in one line."""
import os

from conftest import read_rgb, run_cli


def test_cli_writes_a_category_and_reports_bad_input_in_one_line(tmp_path):
    common = ["--output_path", str(tmp_path), "--category", "tiles", "--texture", "tile", "--image_size", "48x40",
              "--n_train", "2", "--n_test_good", "1", "--n_test_defect", "1", "--defect_types", "stain,color"]
    result = run_cli("generate_data.py", *common)
    assert result.returncode == 0, result.stderr
    assert "tiles" in result.stdout and "test/stain: 1" in result.stdout
    assert sorted(os.listdir(tmp_path / "tiles" / "test")) == ["color", "good", "stain"]
    assert read_rgb(tmp_path / "tiles" / "test" / "stain" / "000.png").shape == (40, 48, 3)

    for extra, needle in ((["--seed", "1"], "already exists"), (["--overwrite", "--texture", "cork"], "cork"),
                          (["--overwrite", "--image_size", "big"], "big")):
        result = run_cli("generate_data.py", *common, *extra)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
