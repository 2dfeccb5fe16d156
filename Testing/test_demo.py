"""``xdiffusion demo`` end to end with a tiny random model (the shipped weights are exercised by make demo)."""

import nibabel as nib
import numpy as np
import pytest

from XDiffusionLib.app.cli import main
from XDiffusionLib.data.samples import sample_path


@pytest.mark.slow  # the whole demo, every method: several seconds on a 2-core CPU
def test_demo_writes_outputs_on_the_input_grid_and_compares_every_method(tiny_model, tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--model", str(tiny_model), "--out", str(out), "--views", "1", "--steps", "1",
                 "--sample", "mni152_nlin6"])
    assert code == 0
    printed = capsys.readouterr().out
    for method in ("xdiffusion", "nearest", "linear", "cubic", "template"):
        assert f"\n{method} " in printed
    source = nib.load(sample_path("mni152_nlin6"))
    reconstruction = nib.load(out / "mni152_nlin6_xdiffusion.nii.gz")
    assert reconstruction.shape == source.shape
    assert np.allclose(reconstruction.affine, source.affine, atol=1e-4)
    assert (out / "mni152_nlin6_uncertainty.nii.gz").is_file()
    assert (out / "mni152_nlin6_difference.nii.gz").is_file()
    assert (out / "mni152_nlin6_demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_refuses_a_training_sample(tiny_model, tmp_path, capsys):
    code = main(["demo", "--model", str(tiny_model), "--out", str(tmp_path / "d"), "--sample", "icbm152_t1"])
    assert code != 0
    assert "used for training" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_refuses_an_output_folder_that_is_a_file(tiny_model, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["demo", "--model", str(tiny_model), "--out", str(target)]) != 0
    assert "existing file" in capsys.readouterr().err
    assert target.read_text() == "x"
