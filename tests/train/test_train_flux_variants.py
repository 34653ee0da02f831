"""`ddit-export train` on a FLUX model with conditioning on the latent grid: one line, exit 2, nothing written."""

from __future__ import annotations

from ddit_export.cli import main
from tests.flux_variants import tiny_transformer


def test_training_a_fill_model_is_refused_in_one_line(tmp_path, capsys):
    model = tmp_path / "fill"
    tiny_transformer("fill").save_pretrained(model)
    (tmp_path / "prompts.txt").write_text("a red fox\n")
    code = main(["train", "flux", "--model", str(model), "--height", "64", "--width", "64", "--text-len", "8",
                 "--teacher-steps", "2", "--steps", "1", "--dtype", "fp32", "--prompts", str(tmp_path / "prompts.txt"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert "condition_latent" in err and "not supported yet" in err
    assert not (tmp_path / "out" / "adapters.json").exists()
